"""The one exception the faces (CLI, pytest, API) turn into a one-line message."""
import contextlib
import errno


class UserError(Exception):
    """Bad input or a missing prerequisite: says what is wrong and how to fix it.

    The CLI prints it as one line and exits 2, never with a traceback.
    """

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} (fix: {fix})" if fix else problem)


class GuestTimeout(Exception):
    """A wait on the guest ran out of time; the message names what was awaited."""


class GuestKernelPanic(GuestTimeout):
    """The guest's kernel panicked while the harness waited on it: waiting longer is useless."""


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
