"""Commands in a running guest, and the waits built on them: the half of a Machine that
scenarios use most. GuestCommands is mixed into Machine; it needs only `channel` (the
command port: run(command, timeout) -> (status, stdout, stderr), -1 on timeout), `run_dir`
(where the evidence is) and, for its waits, `check_alive` and `capabilities`."""
import shlex
from dataclasses import dataclass

from .. import timeouts
from ..errors import GuestCommandFailed, GuestRefused, GuestTimeout
from ..waiting import wait_until


@dataclass
class Result:
    """What one guest command did: its exit status and output."""
    command: str
    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Did the command exit 0?"""
        return self.status == 0


class GuestCommands:
    """run, succeed, fail, and waits on commands, units and ports (see the module's docstring)."""

    def run(self, command: str, timeout: float = 30) -> Result:
        """Runs COMMAND in the guest with bash (-eo pipefail); never waits past TIMEOUT."""
        wrapped = f"set -eo pipefail\n{command}"
        status, stdout, stderr = self.channel.run(wrapped, timeouts.scaled(timeout))
        if status == -1:
            raise GuestTimeout(f"guest command {command!r} did not finish within {timeout:.0f} s")
        return Result(command, status, stdout, stderr)

    def succeed(self, command: str, timeout: float = 30) -> str:
        """COMMAND's stdout; GuestCommandFailed (an AssertionError) if it exits non-zero.

            machine.succeed("xfs_io -c 'pwrite 0 4k' /var/lib/docker/probe")
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

    def wait_until_responsive(self, timeout: float | None = None) -> None:
        """Waits until the guest runs commands (its command port answers), up to TIMEOUT
        seconds (default: the backend's capabilities.responsive_within)."""
        __tracebackhide__ = True

        def answers() -> bool:
            try:
                return self.run("true", timeout=5).ok
            except GuestTimeout:
                return False
        wait_until(answers, timeout or self.capabilities.responsive_within, "the guest to answer commands",
                   machine=self)

    def wait_for_unit(self, unit: str, state: str = "active", timeout: float = 60) -> None:
        """Waits until UNIT's ActiveState is STATE; fails at once if it failed instead.

            machine.wait_for_unit("ecs-agent.service", "inactive")
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
        shown = self.unit_properties(units, ["ActiveState"])
        return {unit: shown[unit].get("ActiveState", "unknown") for unit in units}

    def unit_properties(self, units: list[str], names: list[str]) -> dict[str, dict[str, str]]:
        """The properties NAMES of each unit (as `systemctl show` writes them), from one call."""
        out = self.succeed(f"systemctl show -p Id {' '.join(f'-p {name}' for name in names)} "
                           + " ".join(map(shlex.quote, units)))
        shown = {}
        for block in out.strip().split("\n\n"):
            fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            shown[fields.get("Id", "")] = fields
        return {unit: shown.get(unit, {}) for unit in units}

    def wait_for_port(self, guest_port: int, timeout: float = 60) -> None:
        """Waits until something in the guest listens on GUEST_PORT."""
        self.wait_until_succeeds(f"test -n \"$(ss -Htln 'sport = :{guest_port}')\"", timeout)
