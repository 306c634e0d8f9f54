"""Which machine an instance runs on: the harness's own QEMU (the default, with warm
snapshots), Vagrant with vagrant-libvirt, or a Fedora CoreOS image under the harness's
QEMU. The rest of the harness sees a Machine either way."""
import functools
import os
from pathlib import Path

from ..images import ignition
from .. import units
from ..errors import UserError
from ..images.image import Image
from ..machines.machine import Machine

BACKENDS = ("qemu", "vagrant")
GUESTS = ("debian", "fcos")
FCOS_IMAGE_ENV = "UNITCHAOS_FCOS_IMAGE"


def check(backend: str, guest: str, fcos_image: str | Path | None) -> Path | None:
    """Rejects a combination that cannot run; returns the FCOS image to boot, if any."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}", f"use one of: {', '.join(BACKENDS)}")
    if guest not in GUESTS:
        raise UserError(f"unknown guest {guest!r}", f"use one of: {', '.join(GUESTS)}")
    if guest == "debian":
        return None
    if backend != "qemu":
        raise UserError(f"the {backend} backend runs the Debian guest only",
                        "use --backend qemu with --guest fcos")
    fcos_image = fcos_image or os.environ.get(FCOS_IMAGE_ENV)
    if not fcos_image:
        raise UserError("--guest fcos needs a Fedora CoreOS qcow2 image",
                        f"pass --image PATH or set {FCOS_IMAGE_ENV} (get one with: coreos-installer "
                        "download -s stable -p qemu -f qcow2.xz --decompress)")
    path = Path(fcos_image)
    if not path.is_file():
        raise UserError(f"Fedora CoreOS image {path} does not exist", "pass the path of a downloaded qemu qcow2")
    return path.resolve()


def cold_only(backend: str, guest: str) -> bool:
    """Warm snapshots restore a QEMU the harness launched with the Debian guest's layout."""
    return backend != "qemu" or guest != "debian"


def machine_class(backend: str, fcos_image: Path | None, image: Image, variant: units.Variant, run_dir: Path):
    """The Machine class (or factory) for one instance of VARIANT in RUN_DIR."""
    if fcos_image is not None:
        config = ignition.write(variant, image, run_dir / "config.ign")
        from ..machines.fcos_machine import FcosMachine
        return functools.partial(FcosMachine, disk=fcos_image, ignition_config=config)
    if backend == "vagrant":
        from ..machines.vagrant_machine import VagrantMachine
        return VagrantMachine
    return Machine
