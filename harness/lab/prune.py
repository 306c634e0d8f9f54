"""What `unitchaos prune` removes from the cache: what no run can use any more.

Every change to the guest recipe builds a new image, and every change to QEMU's command
line or the QEMU version makes new snapshots; the old ones stay behind (gigabytes each
time). Stale here means:
- an image whose key is not the current recipe's for its release, plain or with the extras
  of a shipped chain (chains/*.toml) or of the chain file in use (--chain-file's default:
  $UNITCHAOS_CHAIN_FILE, ./unitchaos.toml). Images of a user's other chain files are rebuilt
  on their next run. (Before this, prune removed the Redis and PostgreSQL images: their keys
  are "bookworm-<hash>" like any older bookworm recipe's.) An image with a user's kernel
  (--kernel FILE.deb) is kept while that file is where it was and unchanged: it is stale once
  the package is gone or rebuilt (its key follows the package's sha256), like any other.
- a snapshot whose image is gone, stale or rebuilt since, or that was saved by another
  QEMU or for another command line;
- a staging directory (a half-built image or half-saved snapshot, dot-named) whose key
  nobody holds the lock of: its builder was killed before it could clean up.
Another checkout with another recipe would build its image again after a prune.
"""
import fcntl
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from .. import chainfile
from ..errors import UserError
from ..machines import accel
from ..images import image, user_kernel
from . import snapshots


@dataclass(frozen=True)
class Stale:
    path: Path
    why: str

    @property
    def size(self) -> int:
        """Bytes on disk: RAM files are sparse, their apparent size says little."""
        return sum(p.stat().st_blocks * 512 for p in self.path.rglob("*") if p.is_file())


def find() -> list[Stale]:
    current_images = current_image_keys()
    found = [Stale(path, "built by an older recipe") for path in _entries(image.images_dir())
             if path.name not in current_images]
    found += [Stale(path, why) for path in _entries(snapshots.snapshots_dir())
              if (why := _stale_snapshot(path, current_images))]
    found += abandoned_staging(image.images_dir()) + abandoned_staging(snapshots.snapshots_dir())
    return found


def current_image_keys() -> set[str]:
    """The image keys a run of this checkout can use: every release, plain and with each
    known chain's extras, and with a user's kernel package (--kernel) that is still where
    it was and unchanged."""
    extras = {image.NO_EXTRAS}
    for path in {*chainfile.CHAINS_DIR.glob("*.toml"), chainfile.find()}:
        try:
            extras.add(image.Extras.of(chainfile.parse_file(path, check_packages=False)))
        except UserError:
            continue  # a broken chain file has no image to keep
    keys = {image.recipe_key(release, e) for release in image.RELEASES for e in extras}
    for kernel, release in _user_kernels():
        keys |= {user_kernel.image_key(release, kernel, e) for e in extras}
    return keys


def _user_kernels() -> list[tuple["user_kernel.UserKernel", str]]:
    """(package, release) of each kernel image whose .deb is still there, as it was built from."""
    found = []
    for manifest in image.images_dir().glob("*/manifest.json"):
        try:
            built = json.loads(manifest.read_text())
            kernel = user_kernel.inspect(built["user_kernel"]["file"])
        except (OSError, ValueError, KeyError, UserError):
            continue  # not a kernel image, or its package is gone: nothing keeps it
        if kernel.sha256 == built["user_kernel"]["sha256"] and built.get("release") in image.RELEASES:
            found.append((kernel, built["release"]))
    return found


def remove(stale: list[Stale]) -> None:
    for entry in stale:
        shutil.rmtree(entry.path, ignore_errors=True)
        entry.path.with_name(f"{entry.path.name}.lock").unlink(missing_ok=True)


def abandoned_staging(directory: Path) -> list[Stale]:
    """Dot-named staging directories whose key's lock is free: a live builder holds it."""
    found = []
    for path in directory.glob(".*.*"):
        key = path.name[1:].rsplit(".", 1)[0]
        if path.is_dir() and not _locked(directory / f"{key}.lock"):
            found.append(Stale(path, "left half-written by a killed run"))
    return found


def _entries(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _stale_snapshot(path: Path, current_images: set[str]) -> str | None:
    try:
        meta = json.loads((path / "meta.json").read_text())
        backing = Path(snapshots.backing_file(path / "root.qcow2") or "")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return "unreadable"
    if backing.parent.name not in current_images or not backing.exists():
        return "its image is gone or stale"
    if meta.get("image_stamp") != snapshots.image_stamp(image.Image(backing.parent)):
        return "its image was rebuilt since"
    if meta.get("qemu", accel.qemu_version()) != accel.qemu_version():
        return f"saved by {meta['qemu']}"
    if "argv_shape" in meta:
        chain = SimpleNamespace(size=meta.get("volume_size", "1G"), ports=tuple(meta.get("ports", ())))
        argv = snapshots.argv_shape(image.Image(backing.parent), meta["memory_mb"], meta["accel"], chain)
        if meta["argv_shape"] != argv:
            return "saved for another QEMU command line"
    return None


def _locked(lock_path: Path) -> bool:
    if not lock_path.exists():
        return False
    with open(lock_path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False
