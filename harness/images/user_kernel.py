"""A user's own kernel (`--kernel FILE.deb`): a linux-image package, such as a bisect build
(`make bindeb-pkg`) or another distribution's kernel, installed into a copy of a release's
image and booted instead of the release's own.

Such an image is the release's image plus the package: its key hashes the release's
recipe key, the package's sha256 and this file, so the release's own key (no --kernel)
never changes (image.py, hashed into every image key, is not touched), and warm snapshots
(keyed by the image) follow the package.

The package goes in with apt-get inside a chroot of the loop-mounted copy, so its
maintainer scripts run as on a real system (depmod, the initrd); the release's stock
kernel stays installed, and the image boots the package's kernel because that is the one
taken out for direct kernel boot, by name.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import image
from .. import progress
from ..errors import UserError, disk_full_means

FIX_PACKAGE = "give a linux-image .deb (e.g. linux-image-6.12.117+deb13-cloud-amd64_6.12.117-1_amd64.deb, or one of make bindeb-pkg)"
# The kernel a linux-image package ships: ./boot/vmlinuz-<uname -r>.
VMLINUZ = re.compile(r"\s\./boot/vmlinuz-(\S+)$")
# apt-get install in the chroot: the package's postinst makes the initrd (tens of seconds
# under load); a hung maintainer script must not hang the run.
INSTALL_TIMEOUT = 900


@dataclass(frozen=True)
class UserKernel:
    """The package given with --kernel: what an outcome names it by."""
    file: str           # the .deb as given (absolute)
    package: str        # its Package: field
    version: str        # its Version: field
    sha256: str         # of the .deb: the image's key follows it
    uname_r: str        # the kernel release it boots as (its /boot/vmlinuz-<uname -r>)

    def to_json(self) -> dict:
        return {"package": self.package, "version": self.version, "sha256": self.sha256,
                "uname_r": self.uname_r, "file": self.file}

    @classmethod
    def from_json(cls, data: dict) -> "UserKernel":
        return cls(**{key: data[key] for key in ("file", "package", "version", "sha256", "uname_r")})

    def describe(self) -> str:
        """"linux-image-6.12.117+deb13-cloud-amd64 6.12.117-1 (sha256 0a1b2c3d4e5f)"."""
        return f"{self.package} {self.version} (sha256 {self.sha256[:12]})"


def inspect(path: str | Path) -> UserKernel:
    """The kernel package at PATH, checked before any image or VM work: it exists, is a
    Debian package for amd64, and ships a kernel (/boot/vmlinuz-*). Else one UserError."""
    given = Path(path).expanduser()
    if not given.is_file():
        raise UserError(f"--kernel {path}: no such file", FIX_PACKAGE)
    if not shutil.which("dpkg-deb"):
        raise UserError("dpkg-deb is not installed (needed to read --kernel's package)", "apt-get install dpkg")
    fields = subprocess.run(["dpkg-deb", "--field", str(given), "Package", "Version", "Architecture"],
                            capture_output=True, text=True)
    if fields.returncode != 0:
        said = " ".join((fields.stderr.strip().splitlines() or ["not readable"])[0].split())
        raise UserError(f"--kernel {path} is not a Debian package ({said})", FIX_PACKAGE)
    control = dict(line.split(": ", 1) for line in fields.stdout.splitlines() if ": " in line)
    package, version = control.get("Package", "?"), control.get("Version", "?")
    if control.get("Architecture") not in ("amd64", "all"):
        raise UserError(f"--kernel {path}: {package} {version} is for {control.get('Architecture')}, "
                        "and the guest is amd64 (x86_64)", "give an amd64 linux-image package")
    contents = subprocess.run(["dpkg-deb", "--contents", str(given)], capture_output=True, text=True)
    kernels = [m.group(1) for line in contents.stdout.splitlines() if (m := VMLINUZ.search(line))]
    if contents.returncode != 0 or len(kernels) != 1:
        what = "no /boot/vmlinuz-*" if not kernels else f"{len(kernels)} kernels ({', '.join(kernels)})"
        raise UserError(f"--kernel {path}: {package} {version} is not a kernel image package: it has {what}",
                        FIX_PACKAGE + "; not linux-headers, -dbg or a metapackage such as linux-image-cloud-amd64")
    return UserKernel(str(given.resolve()), package, version, _sha256(given), kernels[0])


def image_key(release: str, kernel: UserKernel, extras: image.Extras = image.NO_EXTRAS) -> str:
    """RELEASE's recipe key, with the package and this recipe on top."""
    digest = hashlib.sha256("\0".join([image.recipe_key(release, extras), kernel.sha256]).encode())
    digest.update(Path(__file__).read_bytes())
    return f"{release}-kernel-{digest.hexdigest()[:16]}"


def ensure_image(release: str, kernel: UserKernel, rebuild: bool = False,
                 extras: image.Extras = image.NO_EXTRAS) -> image.Image:
    """RELEASE's image (with a chain's EXTRAS) with KERNEL installed and taken out for direct
    boot, made first from the release's own image (built first if need be)."""
    image.check_release(release)
    key = image_key(release, kernel, extras)
    built = image.Image(image.images_dir() / key)
    with open(image.images_dir() / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rebuild:
            shutil.rmtree(built.path, ignore_errors=True)
        if not (built.path / "manifest.json").exists():
            _build(image.ensure_image(release, extras=extras), kernel, built)
    return built


def _build(base: image.Image, kernel: UserKernel, built: image.Image) -> None:
    if os.geteuid() != 0:
        raise UserError("installing a --kernel package into the image needs root (a loop mount and chroot)",
                        "run as root or with sudo")
    staging = Path(tempfile.mkdtemp(prefix=f".{built.key}.", dir=image.images_dir()))
    try:
        with disk_full_means(f"making the --kernel image in {image.images_dir()}"), \
                progress.step(f"Installing {kernel.describe()} into a copy of image {base.key}"):
            subprocess.run(["cp", "--sparse=always", str(base.root), str(staging / "root.img")], check=True, timeout=600)
            for name in ("id_ed25519", "id_ed25519.pub"):
                shutil.copy2(base.path / name, staging / name)
            with _mounted(staging / "root.img", staging / "mnt") as tree:
                _install_into(tree, kernel, base.manifest["release"])
                _take_out(tree, kernel, staging)
            (staging / "mnt").rmdir()
            manifest = base.manifest
            manifest.update({"key": built.key, "kernel": kernel.uname_r, "user_kernel": kernel.to_json(),
                             "base_image": base.key, "stock_kernel_ignored": manifest["kernel"],
                             "package_versions": {**manifest.get("package_versions", {}), "kernel": kernel.version},
                             "built": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            # Renaming a finished directory is atomic: a half-made image is never visible.
            staging.rename(built.path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _mounted(root_img: Path, mnt: Path):
    """ROOT_IMG loop-mounted on MNT, with /proc, /sys and /dev for maintainer scripts;
    everything unmounted on the way out, whatever happens."""
    mnt.mkdir()
    mounted = []
    try:
        for args, point in ((["-o", "loop", str(root_img)], mnt), (["-t", "proc", "proc"], mnt / "proc"),
                            (["--bind", "/sys"], mnt / "sys"), (["--bind", "/dev"], mnt / "dev")):
            done = subprocess.run(["mount", *args, str(point)], capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise UserError(f"cannot mount the image copy to install --kernel: {done.stderr.strip()}",
                                "run as root on a host with loop devices (modprobe loop)")
            mounted.append(point)
        yield mnt
    finally:
        for point in reversed(mounted):
            if subprocess.run(["umount", str(point)], capture_output=True, timeout=60).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=60)


def _install_into(tree: Path, kernel: UserKernel, release: str) -> None:
    """apt-get install of the package in a chroot of TREE. Its dependencies must already be
    in the image: a release's image has kmod, linux-base and initramfs-tools for its own
    kernel, and no package lists to fetch more."""
    deb = tree / "tmp" / "user-kernel.deb"
    shutil.copyfile(kernel.file, deb)
    try:
        if _sha256(deb) != kernel.sha256:
            raise UserError(f"--kernel {kernel.file} changed while it was read", "give a file that is not being written")
        done = subprocess.run(["chroot", str(tree), "apt-get", "install", "-y", "--no-install-recommends",
                               "/tmp/user-kernel.deb"], capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
                                   "LC_ALL": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        raise UserError(f"installing {kernel.describe()} took more than {INSTALL_TIMEOUT} s",
                        "check the package's maintainer scripts") from None
    finally:
        deb.unlink(missing_ok=True)
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).splitlines()
        said = next((line for line in lines if "Depends:" in line), None) or \
            next((line for line in lines if line.startswith("E:")), None) or (lines[-1:] or ["no output"])[0]
        raise UserError(f"{kernel.describe()} cannot be installed on Debian {release}: {' '.join(said.split())}",
                        "its dependencies must be in the release's image (a kernel of another release may need a "
                        "newer linux-base or initramfs-tools): try it with that --release")


def _take_out(tree: Path, kernel: UserKernel, out: Path) -> None:
    """The package's kernel and initrd, by name, as the ones the image boots."""
    for name, dest in ((f"vmlinuz-{kernel.uname_r}", "vmlinuz"), (f"initrd.img-{kernel.uname_r}", "initrd.img")):
        source = tree / "boot" / name
        if not source.is_file():
            raise UserError(f"{kernel.describe()} installed no /boot/{name}",
                            "a linux-image package's postinst makes the initrd (initramfs-tools); check the package's build")
        shutil.copyfile(source, out / dest)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
