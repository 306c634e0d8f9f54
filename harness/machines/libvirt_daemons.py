"""virtlogd and libvirtd for the Vagrant backend, on hosts where nobody else runs them.

Where systemd is not PID 1 (containers, some CI runners) nothing starts libvirt's
daemons. The first lab process that needs them starts them (virtlogd first: libvirtd
hands QEMU's logs to it) and the last one that used them stops them, by PID, and only
if a lab process started them: daemons that were already running are never touched.
Users are counted in a directory of PID files, so pytest-xdist workers share them.
"""
import atexit
import fcntl
import os
import shutil
import signal
import subprocess
from pathlib import Path

from ..errors import GuestTimeout, UserError
from ..waiting import wait_until

STATE_DIR = Path("/run/unitchaos-libvirt")
SOCKET = Path("/run/libvirt/libvirt-sock")
DAEMONS = [("virtlogd", Path("/run/virtlogd.pid")), ("libvirtd", Path("/run/libvirtd.pid"))]
MANAGEMENT_NETWORK = "unitchaos-vagrant"  # named in the Vagrantfile
_registered = False


def ensure(hide_kvm: bool = False) -> None:
    """Makes sure libvirtd answers on qemu:///system; counts this process as a user.
    HIDE_KVM (the lab runs TCG): a libvirtd started here does not see /dev/kvm."""
    global _registered
    for tool, package in [("libvirtd", "libvirt-daemon-system"), ("virtlogd", "libvirt-daemon-system"),
                          ("virsh", "libvirt-clients")]:
        if not shutil.which(tool):
            raise UserError(f"{tool} is not installed", f"apt-get install {package}")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with _locked():
        (STATE_DIR / "users").mkdir(exist_ok=True)
        (STATE_DIR / "users" / str(os.getpid())).touch()
        started = _read_started()
        for name, pidfile in DAEMONS:
            if _daemon_pid(pidfile) is None:
                # A daemon that kept our pipes open would hold run() up: give it none.
                if not any(subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, timeout=30).returncode == 0
                           for command in _start_commands(name, hide_kvm)):
                    raise UserError(f"{name} -d failed to start", f"run '{name} -v' by hand to see why")
                pid = _wait_for_pidfile(name, pidfile)
                started[name] = pid
        (STATE_DIR / "started").write_text("".join(f"{name} {pid}\n" for name, pid in started.items()))
        _wait_for_socket()
    if not _registered:
        atexit.register(release)
        _registered = True


def release() -> None:
    """This process no longer needs the daemons; the last user stops those a lab started."""
    if not STATE_DIR.exists():
        return
    with _locked():
        (STATE_DIR / "users" / str(os.getpid())).unlink(missing_ok=True)
        users = [p for p in (STATE_DIR / "users").iterdir() if _alive(int(p.name))]
        if users:
            return
        started = _read_started()
        if "libvirtd" in started:
            # The management network's dnsmasq outlives libvirtd: take the network down first.
            subprocess.run(["virsh", "-c", "qemu:///system", "net-destroy", MANAGEMENT_NETWORK],
                           capture_output=True, timeout=60)
        # Stopped in reverse: libvirtd first, while virtlogd still takes its last logs.
        for name, pid in reversed(list(started.items())):
            if _alive(pid) and name in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGTERM)
                _wait_gone(pid)
        (STATE_DIR / "started").unlink(missing_ok=True)


class _locked:
    def __enter__(self):
        self.file = open(STATE_DIR / "lock", "w")
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        self.file.close()


# Where /dev/kvm is root's alone (0600, as on this project's CI host, where KVM guests hang),
# libvirt's QEMU probe finds KVM, but its check of /dev/kvm for libvirt-qemu does not: it
# calls its cached QEMU capabilities stale at every lookup and probes QEMU again, 4-8 s a
# time. That was 132 s of idle waiting in each `vagrant up` there (2026-12-02 00:25-00:28:
# 72 s to define the domain, 60 s to update it). Where the lab runs TCG anyway, libvirtd
# gets a mount namespace of its own in which /dev/kvm is an empty file nobody may open:
# both say "no KVM", the capabilities stay cached (0.02 s a lookup), and no domain can
# reach a KVM that hangs. Its qemu.conf there adds `namespaces = []`: libvirt moves every
# mount under /dev into each domain's own /dev, and cannot move a file's.
def _start_commands(name: str, hide_kvm: bool) -> list[list[str]]:
    """How to start daemon NAME, in order of preference: where a mount namespace cannot be
    made (no CAP_SYS_ADMIN), libvirtd starts as before, only slower."""
    plain = [name, "-d"]
    if name != "libvirtd" or not hide_kvm or not Path("/dev/kvm").exists():
        return [plain]
    no_kvm, qemu_conf = STATE_DIR / "no-kvm", STATE_DIR / "qemu.conf"
    no_kvm.touch()
    no_kvm.chmod(0)
    mounts = [f"mount --bind {no_kvm} /dev/kvm"]
    host_conf = Path("/etc/libvirt/qemu.conf")
    if host_conf.exists():
        kept = [line for line in host_conf.read_text().splitlines() if not line.strip().startswith("namespaces")]
        qemu_conf.write_text("\n".join(kept + ["namespaces = [ ]", ""]))
        mounts.append(f"mount --bind {qemu_conf} {host_conf}")
    return [["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(mounts + [f"exec {name} -d"])],
            plain]


def _read_started() -> dict[str, int]:
    try:
        lines = (STATE_DIR / "started").read_text().split("\n")
    except FileNotFoundError:
        return {}
    return {name: int(pid) for name, pid in (line.split() for line in lines if line.strip())}


def _daemon_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _wait_for_pidfile(name: str, pidfile: Path, timeout: float = 15) -> int:
    return wait_until(lambda: _daemon_pid(pidfile), timeout, f"{name} to write its pid", interval=0.1,
                      done=lambda pid: pid is not None,
                      on_timeout=lambda *_: UserError(f"{name} -d did not start (no live pid in {pidfile})",
                                                      f"run '{name} -v' by hand to see why"))


def _wait_for_socket(timeout: float = 30) -> None:
    wait_until(lambda: subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True,
                                      timeout=timeout).returncode == 0, timeout, f"libvirtd to answer on {SOCKET}",
               interval=0.2, on_timeout=lambda *_: UserError(f"libvirtd did not answer on {SOCKET}",
                                                             "run 'libvirtd -v' by hand to see why"))


def _wait_gone(pid: int, timeout: float = 15) -> None:
    try:
        wait_until(lambda: not _alive(pid), timeout, f"pid {pid} to exit", interval=0.1)
    except GuestTimeout:
        pass
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive: its parent has not reaped it yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False
