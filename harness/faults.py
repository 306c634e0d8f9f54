"""Ways to break the volume: through the QEMU monitor (what the hypervisor does to a
disk) and inside the guest (what an operator or a script does).

A fault acts on a Machine and knows nothing of experiments or pytest. Each one says
what to wait for afterwards, so that an experiment can give its verdict at the right
moment rather than after a fixed sleep.
"""
from dataclasses import dataclass, field
from typing import Callable

from .errors import UserError
from .machine import Machine
from .qmp import MonitorError

MOUNT_POINT = "/var/lib/docker"


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    where: str                      # "qemu" or "guest"
    action: Callable[[Machine], dict]
    # Kernel words that show the fault has landed, by filesystem (regular expressions).
    kernel_word: dict[str, str] = field(default_factory=dict)

    def inject(self, machine: Machine) -> dict:
        """Breaks MACHINE; returns what was done (commands, QMP events) for the record."""
        return self.action(machine)


def _unplug(machine: Machine) -> dict:
    # ACPI hot-unplug: the guest is asked to let go of the disk, then it is gone.
    device = machine.volume.device_id
    try:
        machine.monitor.command("device_del", id=device)
    except MonitorError as exc:
        raise UserError(f"unplug does not apply: {exc}", "inject it on a guest that still has its volume") from None
    event = machine.monitor.wait_for_event("DEVICE_DELETED", timeout=30, match={"device": device})
    return {"qmp": f"device_del id={device}", "event": event}


def _yank(machine: Machine) -> dict:
    # drive_del removes the backend but leaves the virtio device: every later I/O gets
    # EIO, as on a force-detached EBS volume whose Xen front end would not let go.
    try:
        machine.monitor.hmp(f"drive_del {machine.volume.name}")
    except MonitorError as exc:
        raise UserError(f"yank does not apply: {exc}", "inject it on a guest that still has its volume") from None
    # Nothing notices until something writes back; Docker would, sooner or later.
    write = machine.run(f"dd if=/dev/zero of={MOUNT_POINT}/.unitchaos-writeback bs=4k count=1 conv=fsync",
                        timeout=60)
    return {"hmp": f"drive_del {machine.volume.name}",
            "writeback": {"status": write.status, "stderr": write.stderr.strip()}}


def _umount(machine: Machine) -> dict:
    # A plain umount fails ("target is busy") while dockerd holds files there; the lazy
    # one takes the mount away behind systemd's back, as the incident's operator did.
    result = machine.run(f"umount {MOUNT_POINT} || umount -l {MOUNT_POINT}", timeout=30)
    return {"command": result.command, "status": result.status, "stderr": result.stderr.strip()}


def _stop_mount(machine: Machine) -> dict:
    result = machine.run("systemctl stop var-lib-docker.mount", timeout=120)
    return {"command": result.command, "status": result.status, "stderr": result.stderr.strip()}


XFS_SHUTDOWN = r"XFS \(vdb\):.*(Shutting down filesystem|Filesystem has been shut down)"
FAULTS = {fault.name: fault for fault in [
    Fault("unplug", "hot-unplug the volume (QMP device_del): the guest sees the disk removed", "qemu",
          _unplug, {"xfs": r"XFS \(vdb\)", "ext4": r"vdb"}),
    Fault("yank", "remove the volume's backend (drive_del): the disk stays, every I/O fails with EIO",
          "qemu", _yank, {"xfs": XFS_SHUTDOWN, "ext4": r"(Buffer I/O error on dev vdb|JBD2|EXT4-fs error)"}),
    Fault("umount", "unmount /var/lib/docker behind systemd's back (lazily if busy)", "guest", _umount),
    Fault("stop-mount", "systemctl stop var-lib-docker.mount", "guest", _stop_mount),
]}


def get(name: str) -> Fault:
    try:
        return FAULTS[name]
    except KeyError:
        raise UserError(f"unknown fault {name!r}", f"use one of: {', '.join(FAULTS)}") from None
