"""A paused guest written to disk and resumed from it (QEMU migration to and from a file):
what warm snapshots are made of. The RAM lives in its own file (see Machine._memory_args),
so the migration stream holds only the devices' state."""
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..waiting import wait_until


@dataclass(frozen=True)
class SavedState:
    """A paused guest written to disk: RAM and devices, plus its disks at that moment."""
    state: Path
    ram: Path
    root: Path
    volume: Path
    accel: str
    guest_versions: dict  # kernel and systemd the saved guest runs
    made: str = ""  # tells one save of a snapshot from another at the same path


def save(machine, state: Path) -> None:
    """Pauses MACHINE's guest and writes its RAM and device state to STATE."""
    machine.channel.close()
    machine.monitor.command("stop")
    # Fast: the state file is local, so let the migration use all the bandwidth it likes.
    machine.monitor.command("migrate-set-parameters", **{"max-bandwidth": 8 << 30})
    _ignore_shared_ram(machine)
    machine.monitor.command("migrate", uri=f"exec:cat > {shlex.quote(str(state))}")

    def status() -> str:
        info = machine.monitor.command("query-migrate")
        if (now := info.get("status", "none")) in ("failed", "cancelled"):
            raise UserError(f"QEMU could not save the guest's state: {info.get('error-desc', now)}",
                            "check free disk space in the cache directory")
        return now
    wait_until(status, 120, "saving the guest's state to finish", interval=0.02,
               done=lambda now: now == "completed")


def load(machine, state: Path) -> None:
    """Loads STATE into MACHINE's QEMU (started with -incoming defer) and runs the guest."""
    _ignore_shared_ram(machine)
    machine.monitor.command("migrate-incoming", uri=f"exec:cat {shlex.quote(str(state))}")

    # The guest was paused when saved, so it stays paused once loaded: then resume it.
    def status() -> str:
        now = machine.monitor.command("query-status")["status"]
        if now not in ("paused", "running") and not machine.running:
            message = (machine.run_dir / "qemu.stderr").read_text().strip().splitlines()
            raise UserError(f"QEMU could not load the saved guest: {message[-1] if message else 'no output'}",
                            "remove the snapshot cache (unitchaos snapshot clear) and retry")
        return now
    if wait_until(status, 120, "QEMU to finish loading the saved guest", interval=0.01,
                  done=lambda now: now in ("paused", "running")) == "paused":
        machine.monitor.command("cont")


def _ignore_shared_ram(machine) -> None:
    # The RAM is in its file already: keep it out of the migration stream.
    if machine.ram_file is not None:
        machine.monitor.command("migrate-set-capabilities",
                                capabilities=[{"capability": "x-ignore-shared", "state": True}])
