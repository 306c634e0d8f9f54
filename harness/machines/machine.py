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
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import testinfra

from . import accel
from .. import timeouts
from ..errors import GuestCommandFailed, GuestKernelPanic, GuestRefused, GuestTimeout, UserError
from ..waiting import Deadline, wait_until
from ..images.image import Image
from .channel import GuestChannel
from .qmp import Monitor

SSH_ALIAS = "unitchaos-guest"
AGENT_PORT = 51678
HEALTH_PORT = 51680  # the deep health daemon (vm/guest/usr/local/sbin/unitchaos-health)
_PR_SET_PDEATHSIG = 1


@dataclass
class Result:
    command: str
    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass
class Disk:
    """A virtio disk: NAME is both QEMU's drive id and (with a 'disk' suffix) its device id."""
    name: str
    path: Path

    @property
    def device_id(self) -> str:
        return f"{self.name}disk"


@dataclass(frozen=True)
class SavedState:
    """A paused guest written to disk: RAM and devices, plus its disks at that moment."""
    state: Path
    ram: Path
    root: Path
    volume: Path
    accel: str
    guest_versions: dict  # kernel and systemd the saved guest runs


# A panicked guest never prints what the harness waits for: say so at once, with the
# first sign of trouble before it (the panic line itself says little).
PANIC = re.compile(r"(Kernel panic - not syncing: [^\n]*)")
FIRST_OOPS = re.compile(r"\] ((?:BUG: |Oops: |general protection fault|WARNING: CPU: |Kernel panic - not syncing: )[^\n]*)")
KERNEL_ARGS = "root=/dev/vda rw console=ttyS0 net.ifnames=0 printk.time=1 apparmor=0"
# CPU features a release's kernel must not see under TCG. bookworm-backports' kernel
# (6.12.95+deb12) takes #DB warnings in kmem_cache_alloc's cmpxchg16b, then oopses or hangs
# in early boot under QEMU 7.2's TCG (any -cpu model, -smp 1, single-threaded TCG alike);
# without CX16 SLUB takes its locked path and the guest boots. trixie's 6.12.117 boots
# with CX16 (one unexplained panic in CI aside: see Instance.boot).
TCG_HIDDEN_FEATURES = {"bookworm-backports": ("cx16",)}
# Releases whose kernel must run under single-threaded TCG. trixie-backports' 7.3.4+deb13
# oopses in early boot under QEMU 7.2's multi-threaded TCG on a breakpoint the kernel's own
# text patching left in a 5-byte NOP (seen 2026-12-01, 2 of 2 boots, with and without CX16):
#   Oops: int3: 0000 [#1] SMP NOPTI / RIP: 0010:set_next_task_fair+0x609/0x780
#   Code: ... eb 6d 0f <1f> 44 00 00 ... / Kernel panic - not syncing: Fatal exception in interrupt
#   (other boot: RIP: 0010:__hrtimer_start_range_ns+0x45a/0x8d0)
# i.e. one vCPU ran stale translated code while another patched it (int3-based text_poke).
# With thread=single (vCPUs take turns) the same image boots to systemd.
TCG_SINGLE_THREAD = {"trixie-backports"}
# Under TCG on a loaded host udev's coldplug can outlast systemd's 90 s wait for the volume:
# on 2026-12-01 (host load 11-16 on 2 cores) trixie-backports (single-threaded) and sid
# (multi-threaded) both logged "dev-vdb.device: Job dev-vdb.device/start timed out.",
# "Dependency failed for format-ephemeral.service" and booted metadata=000 agent=inactive.
# A device that comes late is not what the experiments are about: wait longer.
TCG_KERNEL_ARGS = "systemd.default_device_timeout_sec=600"


class Machine:
    """One guest under the harness's QEMU: `start` it (or restore a saved one), talk to it
    (console, QMP `monitor`, command `channel`, SSH `host`), wait on it, `stop` it.

        with Machine(image, run_dir) as m:
            m.wait_for_console(BOOTED, 240)
            m.succeed("systemctl is-active docker")

    Backends (Vagrant, Fedora CoreOS) subclass it; everything else sees a Machine.
    """
    # block_faults.py finds the volume's nodes by the names _node_names gives them.
    names_volume_nodes = True
    # Instance.boot may boot again on fresh overlays after a kernel panic under TCG.
    reboots_after_panic = True
    # The volume's mount point and .mount unit in the guest; the Instance sets the chain's.
    mount_point = "/var/lib/docker"
    mount_unit = "var-lib-docker.mount"

    def __init__(self, image: Image, run_dir: Path, *, memory_mb: int = 1024, cpus: int = 2,
                 volume_size: str = "1G", fw_cfg: dict[str, Path] | None = None,
                 extra_ports: tuple[int, ...] = (), name: str = "guest", volume_source: Path | None = None):
        self.image = image
        self.run_dir = run_dir
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.volume_size = volume_size
        self.volume_source = volume_source  # a raw image the volume starts as (else blank)
        self.fw_cfg = fw_cfg or {}
        self.guest_ports = (22, AGENT_PORT, HEALTH_PORT, *extra_ports)
        self.name = name
        self.ports: dict[int, int] = {}
        self.accel = ""
        self.process: subprocess.Popen | None = None
        self.monitor = Monitor(str(run_dir / "qmp.sock"))
        self.channel = GuestChannel(str(run_dir / "cmd.sock"))
        self.console_path = run_dir / "console.log"
        self.started_at = 0.0
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

    # -- life cycle -------------------------------------------------------------

    def start(self, restore: "SavedState | None" = None) -> None:
        """Boots the kernel, or with RESTORE resumes a saved guest on fresh overlays of its disks."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.accel = restore.accel if restore else accel.choose(self.image.kernel)
        if restore:
            self.ram_file, self.restoring = restore.ram, True
        self._create_disks(restore)
        for attempt in range(3):
            self.ports = {guest: _free_port() for guest in self.guest_ports}
            if self._launch(incoming=restore is not None):
                break
        else:
            raise UserError("QEMU could not forward a port to the guest: every port tried was taken",
                            "free some loopback ports or stop other VMs")
        if restore:
            self._load_state(restore.state)

    def _create_disks(self, restore: "SavedState | None") -> None:
        if restore:
            # Copy-on-write over the saved disks: a restore never changes the snapshot.
            for disk, base in ((self.root, restore.root), (self.volume, restore.volume)):
                _qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(disk.path))
            return
        _qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.image.root), str(self.root.path))
        if self.volume_source:
            _qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.volume_source), str(self.volume.path))
        else:
            _qemu_img("create", "-q", "-f", "qcow2", str(self.volume.path), self.volume_size)

    def _load_state(self, state: Path) -> None:
        self._ignore_shared_ram()
        self.monitor.command("migrate-incoming", uri=f"exec:cat {shlex.quote(str(state))}")
        # The guest was paused when saved, so it stays paused once loaded: then resume it.
        def status() -> str:
            now = self.monitor.command("query-status")["status"]
            if now not in ("paused", "running") and not self.running:
                message = (self.run_dir / "qemu.stderr").read_text().strip().splitlines()
                raise UserError(f"QEMU could not load the saved guest: {message[-1] if message else 'no output'}",
                                "remove the snapshot cache (unitchaos snapshot clear) and retry")
            return now
        if wait_until(status, 120, "QEMU to finish loading the saved guest", interval=0.01,
                      done=lambda now: now in ("paused", "running")) == "paused":
            self.monitor.command("cont")

    def save_state(self, state: Path) -> None:
        """Pauses the guest and writes its RAM and device state to STATE. The guest stays
        paused; its disks, as they are now, belong with the state."""
        self.channel.close()
        self.monitor.command("stop")
        # Fast: the state file is local, so let the migration use all the bandwidth it likes.
        self.monitor.command("migrate-set-parameters", **{"max-bandwidth": 8 << 30})
        self._ignore_shared_ram()
        self.monitor.command("migrate", uri=f"exec:cat > {shlex.quote(str(state))}")
        self._wait_for_migration()

    def _ignore_shared_ram(self) -> None:
        # The RAM is in its file already: keep it out of the migration stream.
        if self.ram_file is not None:
            self.monitor.command("migrate-set-capabilities",
                                 capabilities=[{"capability": "x-ignore-shared", "state": True}])

    def _wait_for_migration(self) -> None:
        def status() -> str:
            info = self.monitor.command("query-migrate")
            if (now := info.get("status", "none")) in ("failed", "cancelled"):
                raise UserError(f"QEMU could not save the guest's state: {info.get('error-desc', now)}",
                                "check free disk space in the cache directory")
            return now
        wait_until(status, 120, "saving the guest's state to finish", interval=0.02,
                   done=lambda now: now == "completed")

    def qemu_argv(self) -> list[str]:
        """QEMU's command line for this guest (snapshots key their saves on its shape)."""
        forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self.ports.items())
        if self.accel == "kvm":
            cpu = ["-accel", "kvm", "-cpu", "host"]
        else:
            threads = "single" if self._release() in TCG_SINGLE_THREAD else self.tcg_threads
            cpu = ["-accel", f"tcg,thread={threads}", "-cpu", self._tcg_cpu()]
        argv = [
            accel.qemu_binary(), "-name", f"unitchaos-{self.name}", *cpu,
            "-smp", str(self.cpus), "-m", f"{self.memory_mb}M", *self._memory_args(),
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

    def _kernel_args(self) -> str:
        return self.kernel_args if self.accel == "kvm" else f"{self.kernel_args} {TCG_KERNEL_ARGS}"

    def _release(self) -> str:
        manifest = self.image.path / "manifest.json"  # a user's FCOS image has none
        return json.loads(manifest.read_text()).get("release", "") if manifest.exists() else ""

    def _tcg_cpu(self) -> str:
        return ",".join([self.cpu_model, *(f"-{f}" for f in TCG_HIDDEN_FEATURES.get(self._release(), ()))])

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
                "-append", self._kernel_args()]

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

    def _launch(self, incoming: bool = False) -> bool:
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

    # -- commands in the guest --------------------------------------------------

    @property
    def ssh_config(self) -> Path:
        """An ssh_config file for this guest (`ssh -F PATH unitchaos-guest`), written once."""
        path = self.run_dir / "ssh_config"
        if not path.exists():
            path.write_text(
                f"Host {SSH_ALIAS}\n  HostName 127.0.0.1\n  Port {self.ports[22]}\n  User root\n"
                f"  IdentityFile {self.image.ssh_key}\n  IdentitiesOnly yes\n"
                "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
                "  ConnectTimeout 10\n  ServerAliveInterval 5\n  ServerAliveCountMax 3\n"
                f"  ControlMaster auto\n  ControlPath {self.run_dir}/ssh-mux\n  ControlPersist 60\n")
        return path

    def run(self, command: str, timeout: float = 30) -> Result:
        """Runs COMMAND in the guest with bash (-eo pipefail); never waits past TIMEOUT."""
        wrapped = f"set -eo pipefail\n{command}"
        status, stdout, stderr = self.channel.run(wrapped, timeouts.scaled(timeout))
        if status == -1:
            raise GuestTimeout(f"guest command {command!r} did not finish within {timeout:.0f} s")
        return Result(command, status, stdout, stderr)

    def succeed(self, command: str, timeout: float = 30) -> str:
        """COMMAND's stdout; GuestCommandFailed (an AssertionError) if it exits non-zero.

            vm.machine.succeed("xfs_io -c 'pwrite 0 4k' /var/lib/docker/probe")
        """
        __tracebackhide__ = True  # pytest points at the scenario's line, not this one
        result = self.run(command, timeout)
        if not result.ok:
            raise GuestCommandFailed(result, evidence=self.run_dir)
        return result.stdout

    def fail(self, command: str, timeout: float = 30) -> str:
        """COMMAND's stderr; GuestCommandFailed if it exits zero (it was meant to fail)."""
        __tracebackhide__ = True
        result = self.run(command, timeout)
        if result.ok:
            raise GuestCommandFailed(result, expected_failure=True, evidence=self.run_dir)
        return result.stderr

    def wait_until_succeeds(self, command: str, timeout: float = 60, interval: float = 0.5) -> str:
        """Runs COMMAND until it exits 0 and returns its stdout; GuestTimeout after TIMEOUT
        (scaled) seconds, with what it last printed."""
        __tracebackhide__ = True
        return wait_until(lambda: self.run(command, timeout=max(5.0, timeout)), timeout,
                          f"{command!r} to succeed", done=lambda result: result.ok, machine=self,
                          interval=interval, last_seen=lambda r: r.stderr.strip() or r.stdout.strip()).stdout

    def wait_until_responsive(self, timeout: float = 60) -> None:
        """Waits until the guest runs commands (its command port answers)."""
        __tracebackhide__ = True

        def answers() -> bool:
            try:
                return self.run("true", timeout=5).ok
            except GuestTimeout:
                return False
        wait_until(answers, timeout, "the guest to answer commands", machine=self)

    def wait_for_unit(self, unit: str, state: str = "active", timeout: float = 60) -> None:
        """Waits until UNIT's ActiveState is STATE; fails at once if it failed instead.

            vm.machine.wait_for_unit("ecs-agent.service", "inactive")
        """
        __tracebackhide__ = True

        def current() -> str:
            now = self.unit_state(unit)
            if now == "failed" and state != "failed":
                raise GuestRefused(f"{unit} failed while waiting for it to be {state}:\n"
                                   + self.run(f"journalctl -u {unit} -n 20 --no-pager").stdout, evidence=self.run_dir)
            return now
        wait_until(current, timeout, f"{unit} to be {state}", done=lambda now: now == state,
                   machine=self, interval=0.3)

    def unit_state(self, unit: str) -> str:
        """UNIT's ActiveState ("active", "inactive", "failed", ...)."""
        return self.unit_states([unit])[unit]

    def unit_states(self, units: list[str]) -> dict[str, str]:
        """Each unit's ActiveState, from one systemctl call."""
        out = self.succeed("systemctl show -p Id -p ActiveState " + " ".join(map(shlex.quote, units)))
        states = {}
        for block in out.strip().split("\n\n"):
            fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            states[fields.get("Id", "")] = fields.get("ActiveState", "unknown")
        return {unit: states.get(unit, "unknown") for unit in units}

    def wait_for_port(self, guest_port: int, timeout: float = 60) -> None:
        """Waits until something in the guest listens on GUEST_PORT."""
        self.wait_until_succeeds(f"test -n \"$(ss -Htln 'sport = :{guest_port}')\"", timeout)

    @property
    def host(self):
        """testinfra's view of the guest: host.service(...), host.mount_point(...), host.file(...)."""
        if self._host is None:
            self._host = testinfra.get_host(f"ssh://{SSH_ALIAS}", ssh_config=str(self.ssh_config))
        return self._host

    # -- from the host, as a load balancer would see it ------------------------

    def volume_attached(self) -> bool:
        """Whether the volume is still in the guest with its backend: False once it was
        unplugged (device_del) or yanked (drive_del), so a second one can say so."""
        devices = {block["device"]: block for block in self.monitor.command("query-block")}
        return "inserted" in devices.get(self.volume.name, {})

    def remove_volume_backend(self) -> dict:
        """Takes the volume's backend away and leaves its virtio device: every later I/O on
        it fails with EIO (a force-detached EBS volume whose Xen front end would not let go)."""
        self.monitor.hmp(f"drive_del {self.volume.name}")
        return {"hmp": f"drive_del {self.volume.name}"}

    def endpoint(self, guest_port: int) -> tuple[str, int]:
        """Where the host reaches GUEST_PORT: a port forwarded on the loopback."""
        return "127.0.0.1", self.ports[guest_port]

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


def _qemu_img(*args: str) -> None:
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


def _die_with_parent() -> None:
    # Runs in the child before exec: the kernel kills QEMU if the harness dies, even by SIGKILL.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
