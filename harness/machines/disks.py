"""A machine's disks: the virtio disks QEMU is given and the qcow2 overlays they are, so
that a run never writes the image or the snapshot it starts from."""
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

# What a yank slides under a volume it cannot drive_del (libvirt's -blockdev disks): a
# blkdebug node of this name failing all I/O. Its presence says the backend is gone.
YANK_NODE = "unitchaos-yank"


@dataclass
class Disk:
    """A virtio disk: NAME is both QEMU's drive id and (with a 'disk' suffix) its device id."""
    name: str
    path: Path

    @property
    def device_id(self) -> str:
        return f"{self.name}disk"


def overlay(path: Path, base: Path | None = None, base_format: str = "raw", size: str | None = None) -> None:
    """Creates qcow2 PATH over BASE (copy-on-write: BASE is never written), or blank of SIZE."""
    if base is None:
        qemu_img("create", "-q", "-f", "qcow2", str(path), size)
    else:
        qemu_img("create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(path))


def qemu_img(*args: str) -> None:
    """Runs qemu-img ARGS; a missing tool, a full disk or a failure is one UserError."""
    try:
        subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("qemu-img is not installed", "apt-get install qemu-utils") from None
    except subprocess.CalledProcessError as exc:
        message = exc.stderr.strip()
        if "No space left" in message:
            raise UserError("disk full while creating a disk overlay",
                            "free some space or point UNITCHAOS_CACHE at a larger disk") from None
        raise UserError(f"qemu-img {args[0]} failed: {message}", "check the image cache (unitchaos image build --rebuild)") from None
