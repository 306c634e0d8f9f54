"""One QEMU guest: boot it, talk to it (console, QMP, SSH), wait on it, tear it down.

A Machine knows nothing of faults or experiments. Everything it creates lives in its
run directory, and the QEMU process dies with the Python process that started it, even
when that one is killed (PR_SET_PDEATHSIG), so nothing is left behind.
"""
import ctypes
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import testinfra

from . import accel, saved_state, tcg
from .. import timeouts
from ..errors import GuestKernelPanic, GuestTimeout, UserError
from ..waiting import Deadline, wait_until
from ..images.image import Image
from .channel import GuestChannel
from .commands import GuestCommands, Result
from .disks import Disk, overlay
from .qmp import Monitor
from .saved_state import SavedState

__all__ = ["Capabilities", "Disk", "Machine", "Result", "SavedState", "SSH_ALIAS"]

SSH_ALIAS = "unitchaos-guest"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Capabilities:
    """What a backend's machines can do. The harness asks `machine.capabilities`, never
    which class a machine is."""
    name: str = "qemu"  # the backend, in messages ("warm snapshots do not apply to the Vagrant backend")
    # start(restore=...) resumes a saved guest (warm snapshots).
    warm_snapshots: bool = True
    # The volume's block nodes carry the names _node_names gives them, so block_faults can
    # slide filters under them and drive_del can take the volume's backend away.
    named_volume_nodes: bool = True
    # Instance.boot may boot again on fresh overlays after a kernel panic under TCG.
    reboots_after_panic: bool = True
    # Who SSH logs in as; testinfra runs as any other user with sudo.
    ssh_user: str = "root"
    # How long wait_until_responsive waits by default (seconds, before scaling).
    responsive_within: float = 60
    # The volume can start as a given raw image (volume_source: the mkfs-refuses experiments).
    volume_from_image: bool = True


# A panicked guest never prints what the harness waits for: say so at once, with the
# first sign of trouble before it (the panic line itself says little).
PANIC = re.compile(r"(Kernel panic - not syncing: [^\n]*)")
FIRST_OOPS = re.compile(r"\] ((?:BUG: |Oops: |general protection fault|WARNING: CPU: |Kernel panic - not syncing: )[^\n]*)")
KERNEL_ARGS = "root=/dev/vda rw console=ttyS0 net.ifnames=0 printk.time=1 apparmor=0"


class Machine(GuestCommands):
    """One guest under the harness's QEMU: `start` it (or restore a saved one), talk to it
    (console, QMP `monitor`, command `channel`, SSH `host`), wait on it, `stop` it.

        with Machine(image, run_dir) as m:
            m.wait_for_console(BOOTED, 240)
            m.succeed("systemctl is-active docker")

    Backends (Vagrant, Fedora CoreOS) subclass it; everything else sees a Machine and asks
    its `capabilities`. A backend states its CAPABILITIES and overrides only the HOOKS, as
    QEMU's own QEMUMachine subclasses override _pre_launch and _post_launch:

    - `__init__`: may take more keyword arguments; passes the rest on.
    - `_pre_launch(restore)`: before QEMU runs: choose the accelerator, make the disks.
    - `_create_disks(restore)`: the root and volume files (called by _pre_launch).
    - `_launch(restore)`: start QEMU, set `process` and `ports`, connect `monitor` and `channel`.
    - `_post_launch(restore)`: after QEMU runs: load a saved guest, find the volume.
    - `_shutdown()`: end QEMU and whatever the backend made for it (after channels close).
    - `_boot_args()`, `_command_port_args()`: pieces of the QEMU command line.
    - `_ssh_config_text()`: the ssh_config file's text (written once, to `ssh_config`).
    - `volume_attached()`: when the backend names the volume's nodes its own way.
    """
    CAPABILITIES = Capabilities()
    HOOKS = ("__init__", "_pre_launch", "_create_disks", "_launch", "_post_launch", "_shutdown",
             "_boot_args", "_command_port_args", "_ssh_config_text", "volume_attached")
    # The volume's mount point and .mount unit in the guest; the Instance sets the chain's.
    mount_point = "/var/lib/docker"
    mount_unit = "var-lib-docker.mount"

    def __init__(self, image: Image, run_dir: Path, *, memory_mb: int = 1024, cpus: int = 2,
                 volume_size: str = "1G", fw_cfg: dict[str, Path] | None = None,
                 extra_ports: tuple[int, ...] = (), name: str = "guest", volume_source: Path | None = None):
        if volume_source is not None and not self.capabilities.volume_from_image:
            raise UserError("the mkfs-refuses experiments need the harness's own QEMU (a volume that starts "
                            "with an old filesystem)", "run them with --backend qemu --guest debian")
        self.image = image
        self.run_dir = run_dir
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.volume_size = volume_size
        self.volume_source = volume_source  # a raw image the volume starts as (else blank)
        self.fw_cfg = fw_cfg or {}
        self.guest_ports = (22, *extra_ports)  # forwarded to the host: SSH and what the lab asks for
        self.name = name
        self.address = "127.0.0.1"  # where the host reaches the guest's ports
        self.ports: dict[int, int] = {}  # guest port -> host port at `address`
        self.accel = ""
        self.process: subprocess.Popen | None = None
        self.monitor = Monitor(str(run_dir / "qmp.sock"))
        self.channel = GuestChannel(str(run_dir / "cmd.sock"))
        self.console_path = run_dir / "console.log"
        self.started_at = 0.0
        self.start_split: dict[str, float] = {}  # seconds per phase of the last start (see start)
        # How long the backend's own tool took to bring the guest up (vagrant up); None
        # when the harness starts QEMU itself.
        self.up_seconds: float | None = None
        self._host = None
        self.ram_file: Path | None = None
        self.restoring = False
        # Boot options the lean-guest survey (bench --survey) varies; these defaults won there.
        self.kernel_args = KERNEL_ARGS
        self.cpu_model = "qemu64"  # under TCG; KVM always uses -cpu host
        self.tcg_threads = "multi"
        # QEMU dies with this process unless told otherwise (the interactive lab's `up`).
        self.die_with_owner = True
        self.root = Disk("root", run_dir / "root.qcow2")
        self.volume = Disk("volume", run_dir / "volume.qcow2")

    @property
    def capabilities(self) -> Capabilities:
        """What this machine's backend can do (see Capabilities)."""
        return self.CAPABILITIES

    # -- life cycle -------------------------------------------------------------

    def start(self, restore: "SavedState | None" = None) -> None:
        """Boots the kernel, or with RESTORE resumes a saved guest on fresh overlays of its disks."""
        if restore is not None and not self.capabilities.warm_snapshots:
            raise UserError(f"warm snapshots do not apply to the {self.capabilities.name} backend", "boot cold (--cold)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Where a start's time goes (bench reports it for restores): the disks, QEMU's
        # launch up to its monitor and command port, and loading a saved guest.
        marks = [time.monotonic()]
        self._pre_launch(restore)
        marks.append(time.monotonic())
        self._launch(restore)
        marks.append(time.monotonic())
        self._post_launch(restore)
        marks.append(time.monotonic())
        self.start_split = {name: marks[i + 1] - marks[i] for i, name in enumerate(("disks", "launch", "incoming"))}

    def _pre_launch(self, restore: "SavedState | None") -> None:
        """Hook: everything QEMU needs before it starts: the accelerator, the disks."""
        self.accel = restore.accel if restore else accel.choose(self.image.kernel)
        if restore:
            self.ram_file, self.restoring = restore.ram, True
        self._create_disks(restore)

    def _create_disks(self, restore: "SavedState | None") -> None:
        """Hook: the root and volume disks, as overlays of the image (or of RESTORE's disks)."""
        if restore:
            # Copy-on-write over the saved disks: a restore never changes the snapshot.
            for disk, base in ((self.root, restore.root), (self.volume, restore.volume)):
                overlay(disk.path, base, "qcow2")
            return
        overlay(self.root.path, self.image.root)
        overlay(self.volume.path, self.volume_source, size=self.volume_size)

    def _launch(self, restore: "SavedState | None") -> None:
        """Hook: starts QEMU (paused for an incoming RESTORE) on free loopback ports and
        connects the monitor and the command port."""
        for attempt in range(3):
            self.ports = {guest: _free_port() for guest in self.guest_ports}
            if self._spawn(incoming=restore is not None):
                return
        raise UserError("QEMU could not forward a port to the guest: every port tried was taken",
                        "free some loopback ports or stop other VMs")

    def _post_launch(self, restore: "SavedState | None") -> None:
        """Hook: once QEMU runs: a RESTORE loads the saved guest and resumes it."""
        if restore:
            saved_state.load(self, restore.state)

    def save_state(self, state: Path) -> None:
        """Pauses the guest and writes its RAM and device state to STATE. The guest stays
        paused; its disks, as they are now, belong with the state."""
        saved_state.save(self, state)

    @property
    def vcpus(self) -> int:
        """The guest's vCPUs (under TCG, one where its release needs it: tcg.vcpus)."""
        return self.cpus if self.accel == "kvm" else tcg.vcpus(self.cpus, tcg.release_of(self.image))

    def qemu_argv(self) -> list[str]:
        """QEMU's command line for this guest (snapshots key their saves on its shape)."""
        forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self.ports.items())
        if self.accel == "kvm":
            cpu = ["-accel", "kvm", "-cpu", "host"]
        else:
            cpu = ["-accel", f"tcg,thread={self.tcg_threads}", "-cpu", self._tcg_cpu()]
        cpus = self.vcpus
        argv = [
            accel.qemu_binary(), "-name", f"unitchaos-{self.name}", *cpu,
            "-smp", str(cpus), "-m", f"{self.memory_mb}M", *self._memory_args(),
            "-nodefaults", "-no-user-config", "-display", "none",
            *self._boot_args(),
            "-netdev", f"user,id=net0,restrict=on,{forwards}",
            "-device", "virtio-net-pci,netdev=net0,romfile=",
            "-chardev", f"file,id=console,path={self.console_path}", "-serial", "chardev:console",
            "-qmp", f"unix:{self.monitor.address},server=on,wait=off",
            *self._command_port_args(),
        ]
        for disk in (self.root, self.volume):
            argv += ["-drive", f"file={disk.path},if=none,id={disk.name},format=qcow2,cache=unsafe{self._node_names(disk)}",
                     "-device", f"virtio-blk-pci,drive={disk.name},id={disk.device_id},serial={disk.name}"]
        for name, path in self.fw_cfg.items():
            argv += ["-fw_cfg", f"name={name},file={path}"]
        return argv

    def _tcg_cpu(self) -> str:
        return tcg.cpu(self.cpu_model, tcg.release_of(self.image))

    def _node_names(self, disk: Disk) -> str:
        """Names for the volume's block nodes, so that a fault can slide a filter under its
        qcow2 node at run time (see block_faults.py). A restored volume has a backing file."""
        if disk is not self.volume:
            return ""
        names = f",node-name={disk.name}-fmt,file.node-name={disk.name}-file"
        return names + (f",backing.node-name={disk.name}-base" if self.restoring else "")

    def _boot_args(self) -> list[str]:
        """Direct kernel boot from the image's kernel and initrd."""
        return ["-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
                "-append", tcg.kernel_args(self.kernel_args, self.accel, tcg.release_of(self.image))]

    def _command_port_args(self) -> list[str]:
        """The virtio-serial port the guest's unitchaos-cmdd answers on."""
        return ["-chardev", f"socket,id=cmd,path={self.channel.path},server=on,wait=off",
                "-device", "virtio-serial-pci,id=serial0",
                "-device", "virtserialport,bus=serial0.0,chardev=cmd,name=org.unitchaos.cmd"]

    def _memory_args(self) -> list[str]:
        """Guests that are saved or restored keep their RAM in a file: saved by mapping it
        shared (QEMU writes the RAM there, not into the migration stream), restored by
        mapping it private (pages are read on first touch and copied on write, so the
        snapshot never changes and restoring reads almost nothing up front)."""
        if self.ram_file is None:
            return ["-machine", "pc"]
        share = "off" if self.restoring else "on"
        return ["-object", f"memory-backend-file,id=ram,size={self.memory_mb}M,mem-path={self.ram_file},share={share}",
                "-machine", "pc,memory-backend=ram"]

    def _spawn(self, incoming: bool) -> bool:
        """Starts QEMU and connects to it; False if a forwarded port was taken meanwhile."""
        stderr_path = self.run_dir / "qemu.stderr"
        self.console_path.write_bytes(b"")
        with open(stderr_path, "w") as stderr:
            argv = self.qemu_argv() + (["-incoming", "defer"] if incoming else [])
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr,
                                            stderr=stderr, start_new_session=True,
                                            preexec_fn=_die_with_parent if self.die_with_owner else None)
        (self.run_dir / "qemu.pid").write_text(str(self.process.pid))
        self.started_at = time.monotonic()
        deadline = Deadline(timeouts.scaled(15))  # socket, monitor and command port together
        if wait_until(lambda: "socket" if os.path.exists(self.monitor.address) else self.process.poll() is not None and "exited",
                      15, "QEMU to create its monitor socket", interval=0.02) == "exited":
            message = stderr_path.read_text().strip()
            if "hostfwd" in message or "forwarding rule" in message:
                return False
            raise UserError(f"QEMU failed to start: {message.splitlines()[-1] if message else 'no output'}",
                            f"see {stderr_path}")
        self.monitor.connect(deadline)
        self.channel.connect(deadline)
        return True

    def stop(self) -> None:
        """Ends the guest at once (these guests are disposable) and closes every channel."""
        self.close_channels()
        self._shutdown()

    def _shutdown(self) -> None:
        """Hook: ends QEMU (the channels are closed already)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def close_channels(self) -> None:
        """Closes the SSH master, the command port and the monitor (the guest keeps running)."""
        if self._host is not None:
            subprocess.run(["ssh", "-F", str(self.ssh_config), "-O", "exit", SSH_ALIAS],
                           capture_output=True, timeout=5)
            self._host = None
        self.channel.close()
        self.monitor.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def running(self) -> bool:
        """Is QEMU still there?"""
        return self.process is not None and self.process.poll() is None

    # -- the serial console -------------------------------------------------------

    def console_text(self) -> str:
        """Everything the guest wrote to its serial console since QEMU started."""
        return self.console_path.read_text(errors="replace")

    def wait_for_console(self, pattern: str, timeout: float, since: int = 0) -> re.Match:
        """The first match of PATTERN on the console after offset SINCE, waiting up to
        TIMEOUT (scaled) seconds for it; a kernel panic or QEMU's exit ends the wait at once."""
        __tracebackhide__ = True
        regex = re.compile(pattern)
        return wait_until(lambda: regex.search(self.console_text(), since), timeout,
                          f"{pattern!r} on the console", machine=self, since=since, interval=0.05,
                          last_seen=lambda _: "the console's last lines:\n"
                          + "\n".join(self.console_text().splitlines()[-5:]))

    def check_alive(self, waiting_for: str, since: int = 0) -> None:
        """Raises at once when a wait can no longer end: QEMU has exited (GuestTimeout), or
        the guest's kernel panicked after console offset SINCE (GuestKernelPanic, naming the
        first oops). WAITING_FOR says what was being waited for. wait_until calls this on
        every round; a backend without a console of its own overrides it."""
        __tracebackhide__ = True
        if not self.running:
            raise GuestTimeout(f"QEMU exited while {waiting_for}", evidence=self.run_dir)
        text = self.console_text()
        if panic := PANIC.search(text, since):
            first = FIRST_OOPS.search(text, since) or panic  # a console without printk times
            raise GuestKernelPanic(f"the guest kernel panicked while {waiting_for}: "
                                   f"{first.group(1).strip()} ... {panic.group(1).strip()}", evidence=self.run_dir)

    def console_offset(self) -> int:
        """Where the console is now: pass it as SINCE to wait only for what comes later."""
        return len(self.console_text())

    def wait_for_kernel_message(self, pattern: str, timeout: float = 60, since: int = 0) -> str:
        """The kernel line matching PATTERN (printed to the console with its timestamp)."""
        __tracebackhide__ = True
        match = self.wait_for_console(r"\[\s*\d+\.\d+\][^\n]*" + pattern + r"[^\n]*", timeout, since)
        return match.group(0).strip()

    # -- reaching the guest (commands: see GuestCommands) -------------------------

    @property
    def ssh_config(self) -> Path:
        """An ssh_config file for this guest (`ssh -F PATH unitchaos-guest`), written once."""
        path = self.run_dir / "ssh_config"
        if not path.exists():
            path.write_text(self._ssh_config_text())
        return path

    def _ssh_config_text(self) -> str:
        """Hook: the ssh_config for SSH_ALIAS: this guest's forwarded port 22, the image's key."""
        return (f"Host {SSH_ALIAS}\n  HostName 127.0.0.1\n  Port {self.ports[22]}\n  User {self.capabilities.ssh_user}\n"
                f"  IdentityFile {self.image.ssh_key}\n  IdentitiesOnly yes\n"
                "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
                "  ConnectTimeout 10\n  ServerAliveInterval 5\n  ServerAliveCountMax 3\n"
                f"  ControlMaster auto\n  ControlPath {self.run_dir}/ssh-mux\n  ControlPersist 60\n")

    @property
    def host(self):
        """testinfra's view of the guest: host.service(...), host.mount_point(...), host.file(...)."""
        if self._host is None:
            self._host = testinfra.get_host(f"ssh://{SSH_ALIAS}", ssh_config=str(self.ssh_config),
                                            **({"sudo": True} if self.capabilities.ssh_user != "root" else {}))
        return self._host

    # -- from the host, as a load balancer would see it ------------------------

    def volume_attached(self) -> bool:
        """Whether the volume is still in the guest with its backend: False once it was
        unplugged (device_del) or yanked (drive_del), so a second one can say so."""
        devices = {block["device"]: block for block in self.monitor.command("query-block")}
        return "inserted" in devices.get(self.volume.name, {})

    def endpoint(self, guest_port: int) -> tuple[str, int]:
        """Where the host reaches GUEST_PORT: (address, port), a port forwarded on the loopback
        for the harness's QEMU."""
        return self.address, self.ports[guest_port]

    def http_get(self, guest_port: int, path: str, timeout: float = 5.0) -> tuple[int | None, dict | str | None]:
        """(status, body) of GET PATH on the guest's GUEST_PORT; (None, reason) if no answer."""
        conn = http.client.HTTPConnection(*self.endpoint(guest_port), timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
            try:
                return response.status, json.loads(body)
            except ValueError:
                return response.status, body
        except (OSError, http.client.HTTPException) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child before exec: the kernel kills QEMU if the harness dies, even by SIGKILL.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
