"""One way to wait: `wait_until(predicate, timeout, what)`, in the spirit of the NixOS test
driver's `retry`. It scales the timeout once (UNITCHAOS_TIMEOUT_SCALE), asks a machine on
every round whether waiting can still end (QEMU alive, no kernel panic), and on timeout
raises one error that names what was awaited, how long that was, and the last value seen.

    state = wait_until(lambda: vm.machine.unit_state("ecs-agent.service"), 60,
                       "ecs-agent.service to be inactive", done=lambda s: s == "inactive",
                       machine=vm.machine)
"""
import time
from typing import Any, Callable

from . import timeouts
from .errors import GuestTimeout


class Deadline:
    """A moment SECONDS from now, for a bound that is not a polling loop (a socket read, a
    connection attempt). SECONDS is used as given: scale it where the wait starts."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self._at - time.monotonic()

    def passed(self) -> bool:
        return self.left() <= 0


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, *,
               done: Callable[[Any], bool] = bool, machine=None, since: int = 0,
               interval: float = 0.2, scale: bool = True, last_seen: Callable[[Any], str] | None = None,
               on_timeout: Callable[[str, Any], Exception] | None = None) -> Any:
    """Calls PREDICATE every INTERVAL seconds until DONE(its value) holds, and returns that
    value. WHAT completes "waiting for ...". TIMEOUT is multiplied by the timeout scale
    (unless SCALE is false: a bound given in real seconds, like Popen.wait's). With MACHINE,
    each round first makes sure waiting can still end (see Machine.check_alive; SINCE is
    the console offset from which a panic counts). On timeout raises ON_TIMEOUT(message,
    last value), or a GuestTimeout carrying MACHINE's run directory as evidence; LAST_SEEN
    turns the last value into words for the message.

        wait_until(lambda: vm.metadata_status(timeout=3), 30, "the metadata check to answer 200",
                   done=lambda status: status == 200)
    """
    __tracebackhide__ = True  # pytest points at the scenario's line
    seconds = timeouts.scaled(timeout) if scale else timeout
    deadline = Deadline(seconds)
    while True:
        last = predicate()
        if done(last):
            return last
        if machine is not None:
            machine.check_alive(f"waiting for {what}", since)
        if deadline.passed():
            seen = last_seen(last) if last_seen else _short(last)
            message = f"waiting for {what}: gave up after {_seconds(timeout, seconds)}; last seen: {seen}"
            if on_timeout is not None:
                raise on_timeout(message, last)
            raise GuestTimeout(message, evidence=getattr(machine, "run_dir", None))
        time.sleep(max(0.0, min(interval, deadline.left())))


def _seconds(timeout: float, seconds: float) -> str:
    if seconds == timeout:
        return f"{timeout:.0f} s"
    return f"{seconds:.0f} s ({timeout:.0f} s x UNITCHAOS_TIMEOUT_SCALE {timeouts.scale():g})"


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " ..."
