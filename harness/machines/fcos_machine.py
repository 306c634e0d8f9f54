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

import testinfra

from ..images import ignition
from ..images.image import Image
from ..errors import UserError
from .machine import SSH_ALIAS, Machine, _qemu_img
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
    def __init__(self, image: Image, run_dir: Path, *, disk: Path, ignition_config: Path,
                 memory_mb: int = MIN_MEMORY_MB, cpus: int = 2, volume_size: str = "1G",
                 fw_cfg: dict[str, Path] | None = None, extra_ports: tuple[int, ...] = (), name: str = "fcos",
                 volume_source: Path | None = None):
        if volume_source is not None:
            raise UserError("the mkfs-refuses experiments need the harness's own QEMU (a volume that starts "
                            "with an old filesystem)", "run them with --backend qemu --guest debian")
        # The unit chain travels inside the Ignition config: the Debian guest's units.tar is not passed.
        super().__init__(image, run_dir, memory_mb=max(memory_mb, MIN_MEMORY_MB), cpus=cpus,
                         volume_size=volume_size, fw_cfg={ignition.CONFIG_FW_CFG: ignition_config},
                         extra_ports=extra_ports, name=name)
        self.disk = disk
        self.channel = SshChannel(self)
        self.cpu_model = "max"  # the lean-guest survey measured Debian guests only

    def start(self, restore=None) -> None:
        if restore is not None:
            raise ValueError("Fedora CoreOS guests boot cold: warm snapshots are for the Debian guest")
        super().start()

    def _create_disks(self, restore) -> None:
        _qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.disk), str(self.root.path))
        _qemu_img("create", "-q", "-f", "qcow2", str(self.volume.path), self.volume_size)

    def _boot_args(self) -> list[str]:
        # The image's own boot loader and kernel command line (ignition.platform.id=qemu).
        return []

    def _command_port_args(self) -> list[str]:
        return []

    @property
    def ssh_config(self) -> Path:
        path = super().ssh_config
        text = path.read_text()
        if "User root" in text:
            path.write_text(text.replace("User root", "User core"))
        return path

    @property
    def host(self):
        if self._host is None:
            self._host = testinfra.get_host(f"ssh://{SSH_ALIAS}", ssh_config=str(self.ssh_config), sudo=True)
        return self._host

    def wait_until_responsive(self, timeout: float = 180) -> None:
        # First boot on FCOS runs Ignition (and may reboot once for kernel arguments).
        super().wait_until_responsive(timeout)
