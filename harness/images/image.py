"""The guest image: built offline from Debian packages with mmdebstrap, cached by a hash
of everything that goes into it, rebuilt only when that changes.

An image is a directory holding root.img (ext4, raw), the kernel and initrd for direct
kernel boot, the SSH key that opens the guest, and manifest.json.
"""
import errno
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import agent_image
from .. import progress
from ..errors import ArchiveBroken, UserError, disk_full_means
from ..paths import VM_DIR, cache_dir

# Bump when the build steps below change in a way the hashed files do not show.
RECIPE_VERSION = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Build timeout for mmdebstrap (fetching ~300 packages; a stalled mirror must not hang forever).
BUILD_TIMEOUT = 1800


@dataclass(frozen=True)
class Release:
    """A guest release: the suites its packages come from, for a backports mix the apt
    preferences file (in vm/image/) that says which packages come from where, and packages
    it needs beyond packages.txt."""
    name: str
    suites: tuple[str, ...]
    preferences: str | None = None
    extra_packages: tuple[str, ...] = ()
    # The archive moves under it: an image that cannot be built because of the archive
    # is reported as such (see archive_broken), not counted as the project's failure.
    moving: bool = False


RELEASES = {r.name: r for r in [
    Release("bookworm", ("bookworm",)),                       # kernel 6.1, systemd 252
    # kernel 6.12, systemd 257; the docker command moved out of docker.io into docker-cli,
    # which docker.io only recommends (and mmdebstrap installs no recommends).
    Release("trixie", ("trixie",), extra_packages=("docker-cli",)),
    # bookworm's userland with the backported kernel (6.12) and systemd (254).
    Release("bookworm-backports", ("bookworm", "bookworm-backports"), "bookworm-backports.pref"),
    # trixie's userland (systemd 257, xfsprogs 6.13) with the backported 7.x kernel.
    Release("trixie-backports", ("trixie", "trixie-backports"), "trixie-backports.pref",
            extra_packages=("docker-cli",)),
    # unstable: moves every day (2026-12-01: kernel 7.2.13, systemd 262.1, xfsprogs 7.2.0);
    # each image's manifest records what it got, and a rebuild says what changed.
    # sid's mount (2.42) is no longer Priority: required, so --variant=apt leaves it out and
    # systemd's .mount units fail: "Failed at step EXEC spawning /usr/bin/mount".
    Release("sid", ("sid",), extra_packages=("docker-cli", "mount"), moving=True),
]}
ROOT_SIZE = "3G"
# Everything that goes into an image: the guest-side files and the code that builds it.
RECIPE_INPUTS = [VM_DIR / "image", VM_DIR / "guest", VM_DIR / "agent",
                 Path(__file__), Path(__file__).with_name("agent_image.py")]


@dataclass(frozen=True)
class Image:
    path: Path

    @property
    def root(self) -> Path:
        return self.path / "root.img"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def ssh_key(self) -> Path:
        return self.path / "id_ed25519"

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    @property
    def key(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Extras:
    """What a chain file adds to the image ([guest]): Debian packages, and files copied in
    as (file on the host, path in the guest). Part of the image's key: each chain's image
    is built once and shared by every run of that chain."""
    packages: tuple[str, ...] = ()
    files: tuple[tuple[Path, str], ...] = ()

    @classmethod
    def of(cls, chain) -> "Extras":
        return cls(tuple(chain.packages), tuple(chain.files))


NO_EXTRAS = Extras()


def packages(release: str = "bookworm", extras: Extras = NO_EXTRAS) -> list[str]:
    lines = (VM_DIR / "image" / "packages.txt").read_text().splitlines()
    listed = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return listed + list(RELEASES[release].extra_packages) + [p for p in extras.packages if p not in listed]


def recipe_key(release: str, extras: Extras = NO_EXTRAS) -> str:
    """Changes whenever a file of the recipe, the release, the builder or the chain's
    extras change."""
    digest = hashlib.sha256(f"{RECIPE_VERSION}\n{release}\n{_mmdebstrap_version()}\n".encode())
    if extras != NO_EXTRAS:
        digest.update(json.dumps(sorted(extras.packages)).encode())
        for src, dest in extras.files:
            digest.update(dest.encode() + b"\0" + Path(src).read_bytes())
    for top in RECIPE_INPUTS:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for path in files:
            digest.update(path.name.encode() + b"\0")
            digest.update(oct(path.stat().st_mode & 0o111).encode())
            digest.update(path.read_bytes())
    return f"{release}-{digest.hexdigest()[:16]}"


def _mmdebstrap_version() -> str:
    if not shutil.which("mmdebstrap"):
        return "missing"
    out = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def images_dir() -> Path:
    path = cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_release(release: str) -> Release:
    try:
        return RELEASES[release]
    except KeyError:
        raise UserError(f"unknown release {release!r}", f"use one of: {', '.join(RELEASES)}") from None


def ensure_image(release: str = "bookworm", rebuild: bool = False, extras: Extras = NO_EXTRAS) -> Image:
    """The cached image for RELEASE (with a chain's EXTRAS), built first if the recipe
    changed or it is missing."""
    check_release(release)
    key = recipe_key(release, extras)
    image = Image(images_dir() / key)
    with open(images_dir() / f"{key}.lock", "w") as lock:
        # Two pytest workers asking at once: one builds, the other waits and reuses.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rebuild and image.path.exists():
            shutil.rmtree(image.path)
        if not (image.path / "manifest.json").exists():
            _build(release, image, extras)
    return image


def _require_tools() -> None:
    for tool, package in [("mmdebstrap", "mmdebstrap"), ("mke2fs", "e2fsprogs"),
                          ("ssh-keygen", "openssh-client")]:
        if not shutil.which(tool):
            raise UserError(f"{tool} is not installed", f"apt-get install {package}")
    if os.geteuid() != 0:
        raise UserError("building the guest image needs root (mmdebstrap's root mode)",
                        "run as root or with sudo")


def _build(release: str, image: Image, extras: Extras = NO_EXTRAS) -> None:
    _require_tools()
    staging = Path(tempfile.mkdtemp(prefix=f".{image.key}.", dir=images_dir()))
    try:
        with disk_full_means(f"building the image in {images_dir()}"), \
                progress.step(f"Building guest image {image.key} (Debian {release})"):
            _build_into(release, staging, image.key, extras)
            # Renaming a finished directory is atomic: a half-built image is never visible.
            staging.rename(image.path)
    except subprocess.CalledProcessError as exc:
        command = " ".join(str(part).splitlines()[0] for part in exc.cmd[:4])
        raise UserError(f"building the Debian {release} image failed: {command} ... exited {exc.returncode}",
                        "run 'unitchaos image build --rebuild'; if it fails again, report it with the output") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"building the Debian {release} image took more than {BUILD_TIMEOUT} s",
                        "check that the Debian mirror answers (set UNITCHAOS_MIRROR to use another)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_into(release: str, out: Path, key: str, extras: Extras = NO_EXTRAS) -> None:
    rootfs = out / "rootfs"
    log = out / "build.log"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "unitchaos",
                    "-f", str(out / "id_ed25519")], check=True)
    guest = VM_DIR / "guest"
    customize = VM_DIR / "image" / "customize.sh"
    cmd = [
        "mmdebstrap", "--variant=apt", "--include=" + ",".join(packages(release, extras)),
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        f'--customize-hook=cp -a {guest}/. "$1"/ && rm -f "$1"/README.md',
        f'--customize-hook=mkdir -p "$1"/root/.ssh && cp {out}/id_ed25519.pub "$1"/root/.ssh/authorized_keys',
        f'--customize-hook=cp {customize} "$1"/tmp/customize.sh && chroot "$1" sh /tmp/customize.sh'
        ' && rm "$1"/tmp/customize.sh',
    ]
    for src, dest in extras.files:
        cmd.append(f'--customize-hook=mkdir -p "$1"{shlex.quote(str(Path(dest).parent))} && '
                   f'cp {shlex.quote(str(src))} "$1"{shlex.quote(dest)}')
    spec = RELEASES[release]
    # What each suite's Release file says it is as of: a mirror's sid can be weeks old.
    cmd.append(f'--customize-hook=cd "$1"/var/lib/apt/lists && grep -H "^Date:" *InRelease > {out}/archive-dates.txt || true')
    if spec.moving:
        # The mirror here serves a sid whose Release file expired (Date 2026-10-30, Valid-Until
        # 2026-11-06; apt: "Release file ... is expired (invalid since 25d 0h 56min)"). A stale
        # sid is still sid as of its date: install it, and record that date with every outcome.
        cmd.append('--aptopt=Acquire::Check-Valid-Until "false"')
    if spec.preferences:
        # In place before the first `apt-get install`, so the pinned packages come from
        # backports from the start (backports is NotAutomatic: never chosen otherwise).
        prefs = VM_DIR / "image" / spec.preferences
        cmd.append(f'--setup-hook=mkdir -p "$1"/etc/apt/preferences.d && cp {prefs} "$1"/etc/apt/preferences.d/')
    mirror = os.environ.get("UNITCHAOS_MIRROR") or DEFAULT_MIRROR
    cmd += [spec.suites[0], str(rootfs), *(f"deb {mirror} {suite} main" for suite in spec.suites)]
    progress.say(f"mmdebstrap: {len(packages(release, extras))} packages from Debian {release} ({mirror}); log in {log}")
    with open(log, "w") as logfile:
        done = subprocess.run(cmd, stdout=logfile, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT)
    if done.returncode != 0:
        lines = log.read_text().splitlines()
        if any("No space left" in line for line in lines):
            raise OSError(errno.ENOSPC, "disk full")
        cause = _failure_cause(lines)
        if spec.moving and archive_broken(lines):
            raise ArchiveBroken(release, cause)
        raise UserError(f"mmdebstrap could not build Debian {release}: {cause}",
                        f"check that {mirror} is reachable and has {', '.join(spec.suites)} "
                        "(set UNITCHAOS_MIRROR to use another mirror)")

    kernel_version = _copy_boot_files(rootfs, out)
    with progress.step("Packing the fake ECS agent's container image"):
        agent_image.build(rootfs, rootfs / "usr/share/unitchaos/ecs-agent.tar")
    systemd_version = _dpkg_version(rootfs, "systemd")
    extra_versions = {p: _dpkg_version(rootfs, p) for p in extras.packages}
    # Exact package versions: sid moves every day, and an outcome must say what it ran on.
    versions = {"kernel": _dpkg_version(rootfs, f"linux-image-{kernel_version}"),
                "systemd": systemd_version, "xfsprogs": _dpkg_version(rootfs, "xfsprogs")}
    with progress.step("Writing the ext4 root filesystem"):
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-d", str(rootfs),
                        str(out / "root.img"), ROOT_SIZE], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(rootfs)
    manifest = {"release": release, "kernel": kernel_version, "systemd": systemd_version,
                "packages": packages(release, extras), "key": key,
                "versions": extra_versions, "package_versions": versions,
                "archive_dates": _archive_dates(out / "archive-dates.txt"),
                "built": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _say_what_changed(release, versions)


def _archive_dates(path: Path) -> dict[str, str]:
    """Suite -> the Date: of its Release file, from lines like
    deb.debian.org_debian_dists_sid_InRelease:Date: Fri, 30 Oct 2026 08:08:01 UTC."""
    dates = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        name, _, date = line.partition(":Date: ")
        suite = name.removesuffix("_InRelease").rpartition("_dists_")[2].replace("_", "/")
        dates[suite] = date.strip()
    return dates


def _say_what_changed(release: str, versions: dict) -> None:
    """Says which package versions differ from the release's previous image (sid moves
    daily), and remembers these for the next build."""
    seen = images_dir() / f"{release}.versions.json"
    before = json.loads(seen.read_text()) if seen.exists() else {}
    changed = [f"{name} {before[name]} -> {version}" for name, version in versions.items()
               if name in before and before[name] != version]
    if changed:
        progress.say(f"Debian {release} changed since its last image: {', '.join(changed)}")
    elif before:
        progress.say(f"Debian {release}: kernel, systemd and xfsprogs as in its last image")
    seen.write_text(json.dumps(versions, indent=2) + "\n")


# apt's own words when the archive, not the request, is at fault.
_ARCHIVE_WORDS = ("unmet dependencies", "but it is not installable", "but it is not going to be installed",
                  "has no installation candidate", "held broken packages", "Unable to locate package")


def archive_broken(lines: list[str]) -> bool:
    """Whether mmdebstrap's log says apt could not resolve the packages (unmet dependencies,
    a package missing), as opposed to a mirror that did not answer or a failing hook."""
    return any(words in line for line in lines for words in _ARCHIVE_WORDS)


# mmdebstrap's and apt's own summaries, which follow the line that says why.
_GENERIC_ERRORS = ("E: apt-get ", "E: mmdebstrap failed", "E: Some index files failed", "E: setup failed",
                   "E: run_", "E: Sub-process", "E: Unable to correct problems")


def _failure_cause(lines: list[str]) -> str:
    """The line of mmdebstrap's log that says why the build failed: apt's own error (a
    fetch that failed, a package it cannot find) rather than the summaries after it."""
    errors = [line.strip() for line in lines if line.startswith("E:")]
    specific = [line for line in errors if not line.startswith(_GENERIC_ERRORS)]
    picked = (specific or errors or lines[-1:] or ["no output"])[0]
    return " ".join(picked.split())[:300]


def _copy_boot_files(rootfs: Path, out: Path) -> str:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise UserError("the guest image has no kernel", "check linux-image-cloud-amd64 in vm/image/packages.txt")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    shutil.copy(kernels[-1], out / "vmlinuz")
    shutil.copy(rootfs / "boot" / f"initrd.img-{version}", out / "initrd.img")
    return version


def _dpkg_version(rootfs: Path, package: str) -> str:
    out = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f=${Version}", package],
                         capture_output=True, text=True)
    return out.stdout.strip()
