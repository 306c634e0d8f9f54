"""A process the harness did not start: QEMU started by libvirt (the Vagrant backend), or
by an earlier `unitchaos up` (the interactive lab). It is not our child, so there is no
Popen; this is as much of one as Machine uses."""
import os
import signal
import subprocess
from pathlib import Path
from typing import Callable

from ..waiting import wait_until


class AdoptedProcess:
    """pid, poll, send_signal, kill and wait for process PID. STILL_OURS says whether PID
    still names that process (a pid can be reused); by default, whether it exists and is
    not a zombie."""

    def __init__(self, pid: int, still_ours: Callable[[], bool] | None = None):
        self.pid = pid
        self._still_ours = still_ours or self._exists

    def _exists(self) -> bool:
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(") ", 1)[-1][0]
        except OSError:
            return False
        return state != "Z"

    def poll(self) -> int | None:
        """None while the process runs, else 0 (its exit status is its parent's to know)."""
        return None if self._still_ours() else 0

    def send_signal(self, signum: int) -> None:
        """Signals the process, unless it has gone (and its pid may be another's)."""
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        """Waits until the process is gone, like Popen.wait: TIMEOUT in real seconds."""
        wait_until(lambda: self.poll() is not None, 1e9 if timeout is None else timeout, f"qemu pid {self.pid} to exit",
                   scale=False, interval=0.05,
                   on_timeout=lambda *_: subprocess.TimeoutExpired(f"qemu pid {self.pid}", timeout))
        return 0
