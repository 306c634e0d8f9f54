"""Is this host ready to run guests? What `unitchaos doctor` checks: the tools, QEMU's
version, whether KVM really works (else TCG), and free disk in the cache."""
import os
import shutil
from dataclasses import dataclass

from ..images import image
from ..paths import cache_dir
from . import accel

TOOLS = [("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils"), ("mmdebstrap", "mmdebstrap"),
         ("mke2fs", "e2fsprogs"), ("ssh", "openssh-client"), ("systemd-analyze", "systemd")]
NEEDS_GIB = 5


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def checks() -> list[Check]:
    """Every check, in the order doctor shows them; a failed one says what to install."""
    found = []
    for tool, package in TOOLS:
        path = shutil.which(tool)
        found.append(Check(tool, bool(path), path or f"missing: apt-get install {package}"))
    if shutil.which("qemu-system-x86_64"):
        found.append(Check("QEMU version", True, accel.qemu_version()))
    found.append(Check("KVM", True, _kvm()))
    free_gib = shutil.disk_usage(cache_dir()).free / 2**30
    found.append(Check("free disk", free_gib >= NEEDS_GIB,
                       f"{free_gib:.1f} GiB free in {cache_dir()} (needs ~{NEEDS_GIB} GiB)"))
    return found


def _kvm() -> str:
    """KVM's verdict (probed once per kernel); TCG is always there to fall back on."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm: guests run under TCG (slower)"
    try:
        kernel = next(image.images_dir().glob("*/vmlinuz"), None)
    except OSError:
        kernel = None
    if not (kernel and shutil.which("qemu-system-x86_64")):
        return "/dev/kvm present; probed at first boot (build the image first)"
    verdict = accel.kvm_verdict(kernel)
    return "usable" if verdict["usable"] else "unusable, using TCG: " + verdict["reason"]
