"""One family of errors. The faces (CLI, pytest, API) turn each into a one-line message:

    UnitchaosError            anything the harness raises on purpose
    ├── UserError             bad input or a missing tool: says the fix; exit 2
    │   ├── ArchiveBroken     a moving release (sid) the archive cannot install today
    │   └── KernelDidNotBoot  a user's kernel (--kernel FILE.deb) that did not boot
    ├── GuestError            the guest did not do what was asked; exit 1, names the evidence
    │   ├── GuestTimeout      a wait ran out of time (GuestKernelPanic: it never could end)
    │   ├── GuestCommandFailed  a command in the guest exited otherwise than expected
    │   └── GuestRefused      the guest (or its unit chain) would not do what a step needs
    └── MonitorError          QEMU refused a monitor command
"""
import contextlib
import errno
import time
from pathlib import Path


class UnitchaosError(Exception):
    """The root: the CLI prints any of these as one line and exits with EXIT_CODE."""
    exit_code = 1


class UserError(UnitchaosError):
    """Bad input or a missing prerequisite: says what is wrong and how to fix it.

    The CLI prints it as one line and exits 2, never with a traceback.
    """
    exit_code = 2

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} (fix: {fix})" if fix else problem)


class ArchiveBroken(UserError):
    """A moving release (sid) cannot be installed today because of the archive itself,
    not the recipe: a transition half done. CI reports it, with the date, and neither
    passes nor fails on it."""

    def __init__(self, release: str, cause: str):
        self.release = release
        self.date = time.strftime("%Y-%m-%d", time.gmtime())
        super().__init__(f"Debian {release} cannot be installed from the archive on {self.date}: {cause}",
                         "wait for the archive to settle (sid transitions take a day or two), or pick another release")


class KernelDidNotBoot(UserError):
    """A user's kernel (--kernel FILE.deb) that did not boot, after the retries any boot
    gets under TCG: the package is the problem, so it is bad input; its console is kept."""

    def __init__(self, kernel: str, release: str, failure: str, console: Path):
        self.console = console
        super().__init__(f"the kernel {kernel} did not boot on Debian {release}'s userspace: {failure}; "
                         f"console kept: {console}",
                         "read the console; the kernel needs virtio (blk, net, pci), ext4 and a serial console, "
                         "built in or in its initrd (a slow host: rerun with UNITCHAOS_TIMEOUT_SCALE=2)")


class GuestError(UnitchaosError):
    """The guest did not behave: EVIDENCE is the run directory that holds its console,
    journal and QMP events (kept under the artifacts directory if the run was kept)."""
    exit_code = 1

    def __init__(self, message: str, evidence: Path | str | None = None):
        super().__init__(message)
        self.evidence = Path(evidence) if evidence else None

    def evidence_location(self) -> Path | None:
        """Where the evidence is now: the run directory, or its kept copy, or nowhere."""
        if self.evidence is None:
            return None
        from .paths import artifacts_dir
        for place in (self.evidence, artifacts_dir() / self.evidence.name):
            if place.exists():
                return place
        return None


class GuestTimeout(GuestError):
    """A wait on the guest ran out of time; the message names what was awaited."""


class GuestKernelPanic(GuestTimeout):
    """The guest's kernel panicked while the harness waited on it: waiting longer is useless."""


class GuestCommandFailed(GuestError, AssertionError):
    """A guest command exited non-zero (or zero where failure was expected). Also an
    AssertionError: in a scenario it is a failed expectation, reported at the scenario's line."""

    def __init__(self, result, expected_failure: bool = False, evidence: Path | str | None = None):
        self.result = result
        verb = "succeeded but should have failed" if expected_failure else f"failed with status {result.status}"
        super().__init__(f"guest command {result.command!r} {verb}\n"
                         f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}", evidence)


class GuestRefused(GuestError):
    """The guest would not do what a step needs (a fault's command failed, the chain did
    not come up healthy); FIX says what to check."""

    def __init__(self, problem: str, fix: str = "", evidence: Path | str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} (fix: {fix})" if fix else problem, evidence)


class MonitorError(UnitchaosError):
    """QEMU refused a monitor command; the message is QEMU's own."""


@contextlib.contextmanager
def disk_full_means(doing: str):
    """Turns ENOSPC inside the block into a UserError saying what was being done."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"disk full while {doing}",
                            "free some space or point UNITCHAOS_CACHE at a larger disk") from None
        raise
