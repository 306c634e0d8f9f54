"""The QEMU monitor: commands and events over QMP, through the qemu.qmp library."""
import asyncio
import os

from qemu.qmp import ExecuteError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from ..errors import GuestTimeout, MonitorError
from ..waiting import Deadline, wait_until


class Monitor:
    """One QMP connection. Every event QEMU sends is kept in `events`, in order, each with
    QEMU's own timestamp, so experiments can put them on a timeline."""

    def __init__(self, address, timeout: float = 10.0):
        self.address = address
        self.timeout = timeout
        self.events: list[dict] = []
        self._qmp: QEMUMonitorProtocol | None = None

    def connect(self, deadline: Deadline) -> None:
        """Connects, retrying until DEADLINE while QEMU creates its socket."""
        def attempt() -> Exception | None:
            if isinstance(self.address, str) and not os.path.exists(self.address):
                # qemu.qmp logs every refused attempt at ERROR: wait for the socket quietly.
                return FileNotFoundError(f"no socket {self.address} yet")
            qmp = QEMUMonitorProtocol(self.address)
            qmp.settimeout(self.timeout)
            try:
                # The legacy wrapper's connect() has no timeout of its own, and a peer that
                # accepts but never greets would hang it: bound each attempt by the deadline.
                qmp._sync(qmp._qmp.connect(self.address), max(0.05, deadline.left()))
                self._qmp = qmp
                return None
            except (OSError, QMPError, asyncio.TimeoutError) as exc:
                qmp._sync(qmp._qmp.disconnect())
                return exc
        wait_until(attempt, deadline.left(), f"QEMU's monitor at {self.address}", done=lambda error: error is None,
                   scale=False, interval=0.05, on_timeout=lambda _, error: GuestTimeout(
                       f"QEMU's monitor at {self.address} did not answer: {error}"))

    def command(self, command: str, /, **arguments):
        # Positional-only: QMP commands take arguments called "name" and "command" too.
        self._drain()
        try:
            return self._client.cmd(command, **arguments)
        except ExecuteError as exc:
            raise MonitorError(f"{command}: {exc.error.error.desc}") from None

    def hmp(self, command_line: str) -> str:
        """A human-monitor command (some, like drive_del, exist only there)."""
        output = self.command("human-monitor-command", **{"command-line": command_line})
        if output.strip():
            raise MonitorError(f"{command_line}: {output.strip()}")
        return output

    def wait_for_event(self, name: str, timeout: float, match: dict | None = None) -> dict:
        """The first event NAME (whose data contains MATCH) seen since connecting, waiting
        up to TIMEOUT (scaled) seconds for it if it has not come yet."""
        __tracebackhide__ = True
        seen = 0

        def arrived() -> dict | None:
            nonlocal seen
            self._drain()
            for event in self.events[seen:]:
                if event["event"] == name and _matches(event.get("data", {}), match or {}):
                    return event
            seen = len(self.events)
            try:  # blocks until an event comes, or half a second
                if event := self._client.pull_event(wait=0.5):
                    self.events.append(event)
            except asyncio.TimeoutError:
                pass
            return None
        return wait_until(arrived, timeout, f"QMP event {name} {match or ''}".rstrip(), interval=0)

    def close(self) -> None:
        if self._qmp is not None:
            try:
                self._qmp.close()
            except (OSError, EOFError, QMPError, asyncio.TimeoutError, RuntimeError):
                pass  # QEMU may already be gone: closing is best effort.
            self._qmp = None

    @property
    def _client(self) -> QEMUMonitorProtocol:
        if self._qmp is None:
            raise MonitorError("not connected to QEMU's monitor")
        return self._qmp

    def _drain(self) -> None:
        self.events.extend(self._client.get_events(wait=False))


def _matches(data: dict, match: dict) -> bool:
    return all(data.get(key) == value for key, value in match.items())


def event_time(event: dict) -> float:
    """An event's wall-clock time (seconds since the epoch), as QEMU stamped it."""
    stamp = event.get("timestamp", {})
    return stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
