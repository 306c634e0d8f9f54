"""A user's own kernel (`--kernel FILE.deb`): a linux-image package, such as a bisect build
(`make bindeb-pkg`) or another distribution's kernel, installed into a release's image and
booted instead of the release's own.

Such an image is the release's recipe plus the package: its key hashes the release's
recipe key, the package's sha256 and this file, so the release's own key (no --kernel)
never changes, and warm snapshots (keyed by the image) follow the package.

The release's stock kernel stays installed (packages.txt names it, and image.py, hashed
into every image key, is not touched); the image boots the package's kernel because that
is the one taken out for direct kernel boot, by name.
"""
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import image
from ..errors import UserError

FIX_PACKAGE = "give a linux-image .deb (e.g. linux-image-6.12.117+deb13-cloud-amd64_6.12.117-1_amd64.deb, or one of make bindeb-pkg)"
# The kernel a linux-image package ships: ./boot/vmlinuz-<uname -r>.
VMLINUZ = re.compile(r"\s\./boot/vmlinuz-(\S+)$")


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
    """RELEASE's image with KERNEL installed and taken out for direct boot, built first if
    missing. An image is complete once its manifest names the user's kernel."""
    image.check_release(release)
    key = image_key(release, kernel, extras)
    built = image.Image(image.images_dir() / key)
    with open(image.images_dir() / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rebuild or not _complete(built):
            shutil.rmtree(built.path, ignore_errors=True)
            _build(release, kernel, built, extras)
    return built


def _complete(built: image.Image) -> bool:
    try:
        return "user_kernel" in built.manifest
    except (OSError, ValueError):
        return False


def _build(release: str, kernel: UserKernel, built: image.Image, extras: image.Extras) -> None:
    if not shutil.which("debugfs"):
        raise UserError("debugfs is not installed (it takes the kernel out of the image)", "apt-get install e2fsprogs")
    # A copy under the cache, named by us: the path goes through mmdebstrap's comma-split
    # --include, and the user's file may change while apt reads it.
    holder = Path(tempfile.mkdtemp(prefix=f".{built.key}.", dir=image.images_dir()))
    # The release's last versions (sid's "what changed" memory) are of its stock image.
    remembered = image.images_dir() / f"{release}.versions.json"
    before = remembered.read_bytes() if remembered.exists() else None
    try:
        deb = holder / "user-kernel.deb"
        shutil.copyfile(kernel.file, deb)
        if _sha256(deb) != kernel.sha256:
            raise UserError(f"--kernel {kernel.file} changed while it was read", "give a file that is not being written")
        # apt (outside the chroot) hands a local .deb's path to dpkg (inside it) verbatim
        # (mmdebstrap(1), --include): /proc/<this process>/root/... names the same file on
        # both sides (mmdebstrap's root mode bind-mounts the host's /proc), where a setup
        # hook would need a change to image.py and so a new key for every image. apt
        # resolves the package's dependencies from the release's archive.
        through_proc = f"/proc/{os.getpid()}/root{deb}"
        try:
            image._build(release, built, image.Extras((*extras.packages, through_proc), extras.files))
        except UserError as exc:
            if type(exc) is not UserError:  # ArchiveBroken, say: the release's own trouble
                raise
            raise UserError(f"Debian {release} with --kernel {kernel.describe()}: {exc.problem}",
                            f"{exc.fix}; or the package's dependencies are not installable on Debian {release}"
                            " (a kernel of another release may need a newer linux-base or initramfs-tools)") from None
        _boot_the_user_kernel(built, kernel, through_proc)
    except BaseException:
        shutil.rmtree(built.path, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(holder, ignore_errors=True)
        if before is not None:
            remembered.write_bytes(before)
        else:
            remembered.unlink(missing_ok=True)


def _boot_the_user_kernel(built: image.Image, kernel: UserKernel, through_proc: str) -> None:
    """Takes the user's kernel and initrd out of the root disk (image.py took whichever
    vmlinuz sorts last), and names the package in the manifest."""
    for name, dest in ((f"vmlinuz-{kernel.uname_r}", built.kernel), (f"initrd.img-{kernel.uname_r}", built.initrd)):
        dest.unlink(missing_ok=True)
        # debugfs exits 0 even when the file is missing: what it wrote tells.
        subprocess.run(["debugfs", "-R", f'dump /boot/{name} "{dest}"', str(built.root)], capture_output=True)
        if not dest.exists() or dest.stat().st_size == 0:
            raise UserError(f"{kernel.describe()} installed no /boot/{name} in the Debian {built.manifest['release']} image",
                            "a linux-image package needs its postinst to make the initrd (initramfs-tools); "
                            "check the package's build")
    manifest = built.manifest
    stock = manifest["kernel"]
    manifest.update({"kernel": kernel.uname_r, "user_kernel": kernel.to_json(), "stock_kernel_ignored": stock,
                     "packages": [p for p in manifest["packages"] if p != through_proc] + [kernel.package]})
    manifest["versions"].pop(through_proc, None)
    manifest["package_versions"]["kernel"] = kernel.version
    staged = built.path / "manifest.json.new"
    staged.write_text(json.dumps(manifest, indent=2) + "\n")
    staged.rename(built.path / "manifest.json")  # atomic: complete only once it names the kernel


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
