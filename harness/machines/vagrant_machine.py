"""One lab guest brought up by Vagrant (vagrant-libvirt) instead of by the harness.

It is a Machine like any other for the rest of the harness: the same console, the same
QMP monitor (a second QMP socket passed to QEMU through the Vagrantfile's qemuargs), the
same guest command port (virtio-serial, also through qemuargs), testinfra over the SSH
configuration Vagrant gives. What differs: Vagrant and libvirt create and destroy the
domain and its disks, libvirt's QEMU runs as libvirt-qemu (so every file QEMU touches
lives in a directory that user can reach, not under root's cache), and the guest is on
libvirt's management network, reached at its own address.

Cold boot only: warm snapshots restore a QEMU the harness started itself.
"""
import contextlib
import json
import os
from dataclasses import dataclass
import pwd
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import vagrant

from . import accel, libvirt_daemons
from .. import timeouts
from ..images import vagrant_box
from ..errors import UserError
from ..images.image import Image
from .disks import YANK_NODE, Disk
from .machine import SSH_ALIAS, Capabilities, Machine
from .process import AdoptedProcess
from ..paths import REPO
from ..waiting import Deadline

SHARED_ROOT = Path("/var/lib/unitchaos/vagrant")
LIBVIRT_URI = "qemu:///system"
QEMU_USER = "libvirt-qemu"
VOLUME_TARGET = "vdb"


@dataclass
class LibvirtDisk(Disk):
    """A disk libvirt attached: NAME is its format node (-blockdev), QDEV its device id."""
    qdev: str = ""

    @property
    def device_id(self) -> str:
        return self.qdev


class VagrantMachine(Machine):
    """A Machine whose QEMU libvirt runs, brought up and destroyed by Vagrant."""
    CAPABILITIES = Capabilities(
        name="Vagrant", warm_snapshots=False, volume_from_image=False,
        named_volume_nodes=False,  # libvirt names them: no volume I/O faults here
        reboots_after_panic=False)  # a second `vagrant up` costs minutes: report the panic

    def __init__(self, image: Image, run_dir: Path, *, memory_mb: int = 1024, cpus: int = 2,
                 volume_size: str = "1G", fw_cfg: dict[str, Path] | None = None,
                 extra_ports: tuple[int, ...] = (), name: str = "guest", volume_source: Path | None = None):
        super().__init__(image, run_dir, memory_mb=memory_mb, cpus=cpus, volume_size=volume_size,
                         fw_cfg=fw_cfg, extra_ports=extra_ports, name=name, volume_source=volume_source)
        self.domain_prefix = f"unitchaos-{uuid.uuid4().hex[:10]}-"
        self.domain = self.domain_prefix + "default"
        self.shared = SHARED_ROOT / self.domain
        self.monitor.address = str(self.shared / "qmp.sock")
        self.channel.path = str(self.shared / "cmd.sock")
        self.console_path = self.shared / "console.log"
        self.volume = LibvirtDisk("", Path(f"/var/lib/libvirt/images/{self.domain}-{VOLUME_TARGET}.qcow2"))
        self.address = ""
        self._box = ""
        self._vagrant: vagrant.Vagrant | None = None

    # -- life cycle -------------------------------------------------------------

    def _pre_launch(self, restore) -> None:
        """libvirt's daemons, the accelerator, the box, and what the Vagrantfile reads."""
        self.accel = accel.choose(self.image.kernel)
        libvirt_daemons.ensure(hide_kvm=self.accel != "kvm")
        self._prepare_shared_dir()
        self._box = vagrant_box.ensure_box(self.image, self.vagrant.env, self.run_dir / "vagrant.log")
        (self.run_dir / "vagrant.json").write_text(json.dumps(self.vagrant_config(self._box), indent=1))

    def _launch(self, restore) -> None:
        """vagrant up, then QEMU's monitor and command port (through the shared directory)."""
        started = time.monotonic()
        self.started_at = started
        first_up = not vagrant_box.uploaded(self._box, _virsh("vol-list", "default").stdout)
        try:
            with vagrant_box.locked() if first_up else contextlib.nullcontext():
                self.vagrant.up(provider="libvirt")
        except subprocess.CalledProcessError:
            raise UserError(f"vagrant up failed: {self._log_tail()}", f"see {self.run_dir / 'vagrant.log'}") from None
        self.up_seconds = time.monotonic() - started
        pid = int(Path(f"/run/libvirt/qemu/{self.domain}.pid").read_text())
        self.process = AdoptedProcess(pid)
        # The sweeper of dead owners' run directories kills the QEMU named here.
        (self.run_dir / "qemu.pid").write_text(str(pid))
        self.address = self._ssh_fields()["HostName"]
        self.ports = {port: port for port in self.guest_ports}  # the guest's own, at its address
        deadline = Deadline(timeouts.scaled(15))
        self.monitor.connect(deadline)
        self.channel.connect(deadline)

    def _post_launch(self, restore) -> None:
        """The volume's node and device, as libvirt named them (from the disk's file)."""
        for block in self.monitor.command("query-block"):
            inserted = block.get("inserted") or {}
            if inserted.get("file") == str(self.volume.path):
                self.volume.name = inserted["node-name"]
                self.volume.qdev = _device_of(block)
                return
        raise UserError(f"libvirt did not attach the volume {self.volume.path}", f"see {self.run_dir / 'vagrant.log'}")

    def volume_attached(self) -> bool:
        """libvirt's -blockdev disks have no drive name (query-block's "device" is empty), so
        the volume is found by its device; a yank leaves its blkdebug node behind."""
        attached = any(_device_of(block) == self.volume.qdev and "inserted" in block
                       for block in self.monitor.command("query-block"))
        return attached and not any(node["node-name"] == YANK_NODE
                                    for node in self.monitor.command("query-named-block-nodes", flat=True))

    def vagrant_config(self, box: str) -> dict:
        """What the Vagrantfile reads (see its header)."""
        qemuargs = [
            "-qmp", f"unix:{self.monitor.address},server=on,wait=off",
            # Names the run directory on QEMU's command line: the sweeper checks it there
            # before it kills a dead owner's QEMU.
            "-fw_cfg", f"name=opt/unitchaos/run,string={self.run_dir}",
        ]
        if self.accel != "kvm":
            # libvirt's host-model CPU under TCG emulates a long list of host features
            # (5-level paging among them) and boots several times slower than the
            # harness's own QEMU: the last -cpu wins, so give TCG the same one.
            qemuargs += ["-cpu", self._tcg_cpu()]
        for name, path in self.fw_cfg.items():
            qemuargs += ["-fw_cfg", f"name={name},file={self.shared / path.name}"]
        return {
            "name": self.domain_prefix, "box": box, "driver": "kvm" if self.accel == "kvm" else "qemu",
            "kernel": str(self.shared / "vmlinuz"), "initrd": str(self.shared / "initrd.img"),
            "cmdline": "root=/dev/vda rw console=ttyS0 net.ifnames=0 printk.time=1 apparmor=0 unitchaos.dhcp",
            "memory": self.memory_mb, "cpus": self.cpus, "volume_size": self.volume_size,
            "ssh_key": str(self.image.ssh_key), "console": str(self.console_path),
            "boot_timeout": int(timeouts.scaled(300)), "qemuargs": qemuargs,
            "command_port": self.channel.path,
        }

    def _prepare_shared_dir(self) -> None:
        """Everything QEMU opens itself, where libvirt's unprivileged QEMU can reach it."""
        SHARED_ROOT.mkdir(parents=True, exist_ok=True)
        for parent in (SHARED_ROOT, SHARED_ROOT.parent):
            os.chmod(parent, 0o755)
        self.shared.mkdir()
        shutil.copy(self.image.kernel, self.shared / "vmlinuz")
        shutil.copy(self.image.initrd, self.shared / "initrd.img")
        for path in self.fw_cfg.values():
            shutil.copy(path, self.shared / path.name)
        self.console_path.write_bytes(b"")
        try:
            qemu_user = pwd.getpwnam(QEMU_USER)
        except KeyError:
            return  # A libvirt built to run QEMU as root.
        for path in [self.shared, *self.shared.iterdir()]:
            os.chown(path, qemu_user.pw_uid, qemu_user.pw_gid)

    @property
    def vagrant(self) -> vagrant.Vagrant:
        """python-vagrant on the repository's Vagrantfile, with this domain's own state and log."""
        if self._vagrant is None:
            if not shutil.which("vagrant"):
                raise UserError("vagrant is not installed", "apt-get install vagrant vagrant-libvirt")
            env = {**os.environ,
                   "VAGRANT_HOME": str(vagrant_box.vagrant_home()),
                   "VAGRANT_DOTFILE_PATH": str(self.run_dir / ".vagrant"),
                   "VAGRANT_DEFAULT_PROVIDER": "libvirt",
                   "VAGRANT_CHECKPOINT_DISABLE": "1",
                   "VAGRANT_NO_COLOR": "1",
                   "LIBVIRT_DEFAULT_URI": LIBVIRT_URI,
                   "UNITCHAOS_VAGRANT_CONFIG": str(self.run_dir / "vagrant.json")}
            log = vagrant.make_file_cm(str(self.run_dir / "vagrant.log"))
            self._vagrant = vagrant.Vagrant(root=str(REPO), env=env, out_cm=log, err_cm=log)
        return self._vagrant

    def _log_tail(self) -> str:
        try:
            text = (self.run_dir / "vagrant.log").read_text(errors="replace").replace("\r", "\n")
        except OSError:
            return "no output"
        # Progress bars and Ruby's backtrace say nothing about what went wrong.
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and "Progress:" not in line and not re.match(r"\s+from /", line)]
        return " | ".join(line[:300] for line in lines[-3:]) or "no output"

    def _ssh_fields(self) -> dict[str, str]:
        text = self.vagrant.ssh_config()
        return dict(line.strip().split(None, 1) for line in text.splitlines() if len(line.strip().split(None, 1)) == 2)

    def _shutdown(self) -> None:
        """Destroys the domain and everything Vagrant made for it, whatever state it is in."""
        if self._vagrant is not None and (self.run_dir / ".vagrant").exists():
            try:
                self.vagrant.destroy()
            except subprocess.CalledProcessError:
                # Vagrant could not: make sure libvirt forgets the domain all the same.
                _virsh("destroy", self.domain)
                _virsh("undefine", self.domain, "--remove-all-storage")
        # After an out-of-band unplug the volume is no longer in the domain's definition,
        # so vagrant destroy leaves it in the pool, and the next up with that name fails.
        _virsh("vol-delete", "--pool", "default", self.volume.path.name)
        if self.console_path.exists():
            shutil.copy(self.console_path, self.run_dir / "console.log")
        shutil.rmtree(self.shared, ignore_errors=True)
        self.console_path = self.run_dir / "console.log"

    # -- reaching the guest -----------------------------------------------------

    def _ssh_config_text(self) -> str:
        """Vagrant's own SSH configuration for the guest, under the harness's alias."""
        text = re.sub(r"^Host \S+", f"Host {SSH_ALIAS}", self.vagrant.ssh_config(), flags=re.MULTILINE)
        return text + (f"  ConnectTimeout 10\n  ServerAliveInterval 5\n  ServerAliveCountMax 3\n"
                       f"  ControlMaster auto\n  ControlPath {self.run_dir}/ssh-mux\n  ControlPersist 60\n")


def sweep(run_dir: Path) -> None:
    """Removes what a dead owner's Vagrant instance left in libvirt: the domain, its disks
    and the directory QEMU used. Its QEMU was killed already (lab.sweep_stale_runs)."""
    try:
        prefix = json.loads((run_dir / "vagrant.json").read_text())["name"]
    except (OSError, ValueError, KeyError):
        return
    domain = prefix + "default"
    _virsh("destroy", domain)
    _virsh("undefine", domain, "--remove-all-storage")
    _virsh("vol-delete", "--pool", "default", f"{domain}-{VOLUME_TARGET}.qcow2")
    shutil.rmtree(SHARED_ROOT / domain, ignore_errors=True)


def _virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", LIBVIRT_URI, *args], capture_output=True, text=True, timeout=60)


def _device_of(block: dict) -> str:
    """The device id in a query-block entry's qdev path (/machine/peripheral/ID/virtio-backend)."""
    return block.get("qdev", "").removeprefix("/machine/peripheral/").split("/")[0]
