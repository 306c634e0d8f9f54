"""What the kernel itself told userspace about the volume's filesystem, and who listened:
FAN_FS_ERROR (as the guest's deep check received it) and xfs_healer@<volume>.service.

Times are on the guest's own clock (CLOCK_MONOTONIC; kernel lines are put on it by the
deep check's clock mark in /dev/kmsg), so host load does not enter them.
"""
from ..chainfile import escape_path
from ..lab.instance import HEALTH_PORT
from .outcome import Healer, KernelWord

# Kernel pattern names (kernel-patterns.json) meaning "an I/O on the volume failed": the
# first of them is when the fault took effect.
FAILED_IO = ("block-io-error", "buffer-io-error", "lost-page-write", "xfs-metadata-io-error", "xfs-log-io-error",
             "block-device-gone", "writeback-error")
SHUTDOWN = ("xfs-shutdown", "xfs-device-removed", "ext4-abort-journal", "ext4-remount-ro", "ext4-shutdown")


def fan_fs_error(health_body) -> KernelWord:
    """Whether FAN_FS_ERROR arrived, its error, and the seconds from the first failed I/O;
    and how long after the kernel's shutdown line the deep check turned unhealthy."""
    if not isinstance(health_body, dict) or not isinstance(health_body.get("fs_error"), dict):
        return KernelWord(reason="the deep check did not answer with its FAN_FS_ERROR state")
    state, matches = health_body["fs_error"], health_body.get("kernel_matches") or {}
    events = [event for event in state.get("events", []) if event.get("error") is not None]
    first_io = _first(matches, FAILED_IO)
    shutdown = _first(matches, SHUTDOWN)
    word = KernelWord(supported=state.get("supported"), reason=state.get("reason"), arrived=bool(events),
                      error=events[0]["error_name"] if events else None,
                      errors_counted=sum(event.get("count", 0) for event in events))
    if events and first_io is not None:
        word.seconds_from_first_failed_io = round(events[0]["monotonic"] - first_io, 3)
    unhealthy = health_body.get("became_unhealthy_monotonic")
    if unhealthy is not None and shutdown is not None:
        word.deep_unhealthy_after_shutdown_line = round(unhealthy - shutdown, 3)
    return word


def _first(matches: dict, names) -> float | None:
    times = [matches[name]["first_monotonic"] for name in names
             if name in matches and matches[name].get("first_monotonic") is not None]
    return min(times) if times else None


def observe(instance) -> tuple[KernelWord, Healer]:
    """FAN_FS_ERROR as the deep check saw it (and how soon systemd stopped the agent after
    the shutdown line), and what xfs_healer did."""
    status, body = instance.machine.http_get(HEALTH_PORT, "/health", timeout=5)
    word = fan_fs_error(body if status is not None else None)
    stopping = agent_stopping(instance)
    shutdown = _first(body.get("kernel_matches") or {}, SHUTDOWN) if isinstance(body, dict) else None
    if stopping is not None and shutdown is not None:
        word.agent_stopping_after_shutdown_line = round(stopping - shutdown, 3)
    return word, xfs_healer(instance)


def agent_stopping(instance) -> float | None:
    """CLOCK_MONOTONIC of systemd's first "Stopping ecs-agent.service" this boot, if any."""
    out = instance.machine.run("journalctl -b -o short-monotonic _PID=1 | grep -m1 'Stopping ecs-agent.service' || true",
                               timeout=10).stdout.strip()
    return float(out[1:out.index("]")]) if out.startswith("[") else None


def xfs_healer(instance) -> Healer:
    """The healer's service for the volume (xfs_healer@<mount point>.service): present at all
    (xfsprogs >= 7), its state now, and whether its journal (systemd's lines about it
    included) says it saw the shutdown. A unit that ran and was stopped is unloaded by
    systemd, so the unit is named from the mount point, not looked up among loaded ones."""
    machine = instance.machine
    if machine.run("test -e /usr/lib/systemd/system/xfs_healer@.service", timeout=10).status != 0:
        return Healer(present=False, state="not installed (xfsprogs before 7)")
    unit = f"xfs_healer@{escape_path(instance.chain.mount_point)}.service"
    shown = dict(line.split("=", 1) for line in machine.run(
        f"systemctl show -p ActiveState,SubState,Result,ExecMainStatus,ExecMainStartTimestampMonotonic {unit}",
        timeout=10).stdout.splitlines() if "=" in line)
    journal = machine.run(f"journalctl -b -o cat -u {unit} | tail -n 20", timeout=10).stdout.strip().splitlines()
    if shown.get("ExecMainStartTimestampMonotonic", "0") == "0" and not journal:
        return Healer(present=True, unit=unit, state="never started for the volume",
                      start=machine.run("systemctl is-active xfs_healer_start.service", timeout=10).stdout.strip())
    saw = [line for line in journal if any(word in line.lower() for word in ("shut", "i/o error", "dead", "unmount"))]
    return Healer(present=True, unit=unit, state=f"{shown.get('ActiveState')} ({shown.get('SubState')})",
                  result=shown.get("Result"), exit_status=shown.get("ExecMainStatus"),
                  saw_shutdown=bool(saw), journal=journal[-8:])
