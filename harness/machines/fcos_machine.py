"""One Fedora CoreOS guest: a user-supplied FCOS qcow2 (the `qemu` platform image),
provisioned by Ignition from `-fw_cfg name=opt/com.coreos/config.ign` as kola does.

Fedora CoreOS has no Python, so the guest command port (unitchaos-cmdd) cannot run there:
commands go over SSH instead, as the `core` user with the lab image's key (put there by
the Ignition config) and through sudo, as Fedora CoreOS intends. Everything else (console, QMP, faults, port forwards) is the Machine's own.
The disks are the same: the image as vda (a qcow2 overlay, the image is never written)
and the volume as vdb.
"""
import shlex
import subprocess
from pathlib import Path

from ..images import ignition
from ..images.image import Image
from .disks import overlay
from .machine import SSH_ALIAS, Capabilities, Machine
from ..waiting import Deadline

# Fedora CoreOS asks for 2 GiB; with less, Ignition and Docker compete for memory at boot.
MIN_MEMORY_MB = 2048
# ssh itself failed (connection refused, auth): not the command's status.
SSH_FAILED = 255


class SshChannel:
    """The Machine's command channel (run, set_clock, close) over SSH."""

    def __init__(self, machine: Machine):
        self.machine = machine
        self.path = ""

    def connect(self, deadline: Deadline) -> None:
        """Nothing to do: sshd comes up late in boot, and Machine.wait_until_responsive retries."""

    def run(self, command: str, timeout: float) -> tuple[int, str, str]:
        remote = f"sudo timeout -s KILL {max(1, int(timeout))} bash -c {shlex.quote(command)}"
        try:
            done = subprocess.run(["ssh", "-F", str(self.machine.ssh_config), SSH_ALIAS, remote],
                                  capture_output=True, text=True, timeout=timeout + 15)
        except subprocess.TimeoutExpired:
            return -1, "", ""
        return done.returncode, done.stdout, done.stderr

    def set_clock(self, epoch: float) -> None:
        self.run(f"date -s @{epoch:.3f}", 10)

    def close(self) -> None:
        """SSH connections are closed by Machine.stop (ssh -O exit)."""


class FcosMachine(Machine):
    """A Machine booting a Fedora CoreOS image by its own boot loader, commands over SSH."""
    CAPABILITIES = Capabilities(
        name="Fedora CoreOS", warm_snapshots=False, volume_from_image=False, ssh_user="core",
        # First boot on FCOS runs Ignition (and may reboot once for kernel arguments).
        responsive_within=180)

    def __init__(self, image: Image, run_dir: Path, *, disk: Path, ignition_config: Path,
                 memory_mb: int = MIN_MEMORY_MB, cpus: int = 2, volume_size: str = "1G",
                 fw_cfg: dict[str, Path] | None = None, extra_ports: tuple[int, ...] = (), name: str = "fcos",
                 volume_source: Path | None = None):
        # The unit chain travels inside the Ignition config: the Debian guest's units.tar is not passed.
        super().__init__(image, run_dir, memory_mb=max(memory_mb, MIN_MEMORY_MB), cpus=cpus,
                         volume_size=volume_size, fw_cfg={ignition.CONFIG_FW_CFG: ignition_config},
                         extra_ports=extra_ports, name=name, volume_source=volume_source)
        self.disk = disk
        self.channel = SshChannel(self)
        self.cpu_model = "max"  # the lean-guest survey measured Debian guests only

    def _create_disks(self, restore) -> None:
        overlay(self.root.path, self.disk, "qcow2")
        overlay(self.volume.path, size=self.volume_size)

    def _boot_args(self) -> list[str]:
        # The image's own boot loader and kernel command line (ignition.platform.id=qemu).
        return []

    def _command_port_args(self) -> list[str]:
        return []
