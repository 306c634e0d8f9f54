"""The Vagrant box: the lab image (harness/images/image.py) as a local vagrant-libvirt box.

No Vagrant Cloud: the box is a tar of the root filesystem as qcow2 (box.img) and the
metadata.json vagrant-libvirt reads, added under a name that carries the image's key,
so a new image makes a new box and an unchanged one is never added twice. The box
boots with the image's kernel and initrd (direct kernel boot, set in the Vagrantfile),
and root logs in with the image's SSH key.

Boxes live in a Vagrant home of their own in the cache (VAGRANT_HOME), so the user's
~/.vagrant.d is left alone.
"""
import contextlib
import fcntl
import json
import math
import subprocess
import tarfile
import tempfile
from pathlib import Path

import vagrant

from ..errors import UserError, disk_full_means
from .image import Image
from ..paths import cache_dir
from .. import progress

BOX_PREFIX = "unitchaos/"


def vagrant_home() -> Path:
    path = cache_dir() / "vagrant" / "home"
    path.mkdir(parents=True, exist_ok=True)
    return path


def box_name(image: Image) -> str:
    return BOX_PREFIX + image.key


def metadata(image: Image) -> dict:
    """vagrant-libvirt's box metadata: the disk's format and size (GiB, rounded up)."""
    return {"provider": "libvirt", "format": "qcow2",
            "virtual_size": math.ceil(image.root.stat().st_size / 2**30)}


def ensure_box(image: Image, env: dict[str, str], log: Path) -> str:
    """The box for IMAGE, added to Vagrant first if it is not there yet. ENV names
    vagrant_home(); Vagrant's output goes to LOG."""
    name = box_name(image)
    # Box commands run outside the repository: its Vagrantfile describes one instance
    # and refuses to load without one.
    boxes = vagrant.Vagrant(root=str(vagrant_home()), env=env, out_cm=vagrant.make_file_cm(str(log)),
                            err_cm=vagrant.make_file_cm(str(log)))
    # Two pytest workers asking at once: one adds the box, the other reuses it.
    with locked():
        if any(box.name == name for box in boxes.box_list()):
            return name
        with tempfile.TemporaryDirectory(prefix="unitchaos-box.", dir=cache_dir()) as tmp, \
                disk_full_means(f"building the Vagrant box in {cache_dir()}"), \
                progress.step(f"Adding Vagrant box {name}"):
            box = build_box(image, Path(tmp))
            try:
                boxes.box_add(name, str(box), provider="libvirt", force=True)
            except subprocess.CalledProcessError as exc:
                raise UserError(f"vagrant box add {name} failed (exit {exc.returncode})",
                                f"see what Vagrant said in {log}") from None
    return name


@contextlib.contextmanager
def locked():
    """Held while a box is added to Vagrant or uploaded into libvirt's pool (the first
    `vagrant up` of a box): vagrant-libvirt guards the upload only within one process."""
    with open(vagrant_home() / "box.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def uploaded(name: str, pool_volumes: str) -> bool:
    """Is box NAME's image already a volume in the pool (given `virsh vol-list` output)?"""
    return name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image" in pool_volumes


def build_box(image: Image, workdir: Path) -> Path:
    """Writes WORKDIR/unitchaos.box (metadata.json + box.img) and returns its path."""
    disk = workdir / "box.img"
    try:
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(image.root), str(disk)],
                       check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("qemu-img is not installed", "apt-get install qemu-utils") from None
    except subprocess.CalledProcessError as exc:
        raise UserError(f"converting the image to qcow2 failed: {exc.stderr.strip()}",
                        "rebuild the image (unitchaos image build --rebuild)") from None
    (workdir / "metadata.json").write_text(json.dumps(metadata(image)) + "\n")
    box = workdir / "unitchaos.box"
    with tarfile.open(box, "w") as tar:
        tar.add(workdir / "metadata.json", arcname="metadata.json")
        tar.add(disk, arcname="box.img")
    disk.unlink()
    return box
