"""The host's end of the guest's command port (vm/guest/usr/local/sbin/unitchaos-cmdd):
one JSON line per command each way over a virtio-serial port. No handshake, and the
port is there again as soon as a restored QEMU starts, where SSH would need a new key
exchange."""
import itertools
import json
import socket
import threading

from ..errors import GuestTimeout
from ..waiting import Deadline, wait_until


class GuestChannel:
    def __init__(self, path: str):
        self.path = path
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def connect(self, deadline: Deadline) -> None:
        """Connects to the command port, retrying until DEADLINE while QEMU opens it."""
        def attempt() -> OSError | None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                self._sock = sock
                return None
            except OSError as exc:
                sock.close()
                return exc
        wait_until(attempt, deadline.left(), f"the guest's command port {self.path}", done=lambda error: error is None,
                   scale=False, interval=0.02, on_timeout=lambda _, error: GuestTimeout(
                       f"the guest's command port {self.path} did not open: {error}"))

    def run(self, command: str, timeout: float) -> tuple[int, str, str]:
        """(status, stdout, stderr) of COMMAND run by bash in the guest; the guest kills it
        after TIMEOUT, and this gives up a little later if the guest says nothing at all."""
        return self._ask({"cmd": command, "timeout": timeout}, timeout, command)

    def set_clock(self, epoch: float) -> None:
        """Sets the guest's wall clock, without starting a process in the guest."""
        status, _, stderr = self._ask({"settime": epoch}, 10, "settime")
        if status != 0:
            raise GuestTimeout(f"the guest did not set its clock: {stderr}")

    def _ask(self, request: dict, timeout: float, command: str) -> tuple[int, str, str]:
        with self._lock:
            if self._sock is None:
                raise GuestTimeout("not connected to the guest's command port")
            request_id = next(self._ids)
            request = {"id": request_id, **request}
            deadline = Deadline(timeout + 10)
            self._sock.sendall((json.dumps(request) + "\n").encode())
            while True:
                line = self._read_line(deadline, command)
                reply = json.loads(line)
                if reply.get("id") == request_id:  # Skip late answers to abandoned requests.
                    return reply["status"], reply["stdout"], reply["stderr"]

    def _read_line(self, deadline: Deadline, command: str) -> bytes:
        while b"\n" not in self._buffer:
            left = deadline.left()
            if left <= 0:
                raise GuestTimeout(f"the guest did not answer {command!r} in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(1 << 16)
            except socket.timeout:
                continue
            if not chunk:
                self.close()
                raise GuestTimeout(f"the guest's command port closed while running {command!r}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""
