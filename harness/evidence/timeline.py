"""One incident timeline on one clock: the fault, QEMU's events, the kernel's lines, systemd's
unit changes and the health checks' answers, in seconds from the fault.

Clocks: QMP events carry the host's wall clock; systemd's journal the guest's (set to the
host's on restore); kernel lines carry the guest's uptime, placed on the host clock by
the uptime read at the moment of the fault.
"""
import json
import re

from .. import kernel_log
from ..lab.instance import Instance

# Console lines that are bad news whatever the experiment (as kola scans for).
BADNESS = re.compile(r"Kernel panic|Oops|WARNING:|BUG:|blocked for more than|Ordering cycle|"
                     r"segfault|invoked oom-killer|Call Trace", re.IGNORECASE)
SYSTEMD_WORDS = re.compile(r"^(Stopping|Stopped|Starting|Started|Mounting|Mounted|Unmounting|Unmounted|"
                           r"Deactivated|Failed|Finished)|: (Deactivated|Failed|Main process exited|Unit is bound)")


def build(instance: Instance, lb=None) -> list[dict]:
    """The events since the last fault, each {"t": seconds from the fault, "source", "event"}."""
    if not instance.fault_log:
        return []
    fault = instance.fault_log[-1]
    t0 = fault["at"]
    events = [{"t": 0.0, "source": "fault", "event": f"{fault['fault']} injected"}]
    for event in instance.machine.monitor.events:
        stamp = event.get("timestamp", {})
        at = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
        if at >= t0 - 1:
            events.append({"t": at - t0, "source": "qmp",
                           "event": f"{event['event']} {json.dumps(event.get('data', {}), sort_keys=True)}"})
    uptime0 = fault.get("guest_uptime")
    if uptime0 is not None:
        for line in kernel_log.events(instance.machine.console_text()[fault["console_offset"]:]):
            events.append({"t": line["uptime"] - uptime0, "source": "kernel", "event": line["line"]})
    events += _systemd(instance, t0)
    if lb is not None:
        for name, target in lb.targets.items():
            previous = object()  # The first answer after the fault always counts, then only changes.
            for at, status in target.samples:
                if at >= t0 and status != previous:
                    events.append({"t": at - t0, "source": f"{name} check", "event": f"answers {status}"})
                    previous = status
            for at, state in target.changes:
                if at >= t0:
                    events.append({"t": at - t0, "source": f"{name} LB", "event": f"target {state}"})
    return sorted(({**e, "t": round(e["t"], 2)} for e in events), key=lambda e: e["t"])


def systemd_since(instance: Instance, t0: float) -> list[dict]:
    """systemd's unit changes (PID 1's journal lines) from T0 (host clock) on, in order,
    each {"t": seconds from T0, "source": "systemd", "event"}."""
    return sorted(_systemd(instance, t0), key=lambda e: e["t"])


def _systemd(instance: Instance, t0: float) -> list[dict]:
    if not instance.machine.running:
        return []
    result = instance.machine.run(f"journalctl -o json --no-pager _PID=1 --since=@{int(t0) - 1}", timeout=30)
    events = []
    for line in result.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE", "")
        if isinstance(message, str) and SYSTEMD_WORDS.search(message):
            at = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
            if at >= t0 - 0.5:
                events.append({"t": at - t0, "source": "systemd", "event": message})
    return events


def badness(instance: Instance) -> list[str]:
    return [line.strip() for line in instance.machine.console_text().splitlines() if BADNESS.search(line)]


def render(events: list[dict]) -> str:
    return "\n".join(f"{e['t']:+8.2f} s  {e['source']:<12} {e['event'][:150]}" for e in events)
