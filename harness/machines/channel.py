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
    """Requests may overlap: the guest answers each in a thread of its own, tagged with its
    id, so callers on several threads wait at once. Whichever waiting caller holds the
    reader's turn reads the port for everyone and hands each reply to its caller."""
    def __init__(self, path: str):
        self.path = path
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._state = threading.Condition()
        self._waiting: set[int] = set()      # ids whose callers still wait
        self._replies: dict[int, dict] = {}  # read by the reader for another caller
        self._reading = False                # a caller is reading the port

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
        deadline = Deadline(timeout + 10)
        with self._state:
            if self._sock is None:
                raise GuestTimeout("not connected to the guest's command port")
            request_id = next(self._ids)
            self._waiting.add(request_id)
        try:
            with self._send_lock:
                if self._sock is None:
                    raise GuestTimeout(f"the guest's command port closed before {command!r} was sent")
                self._sock.sendall((json.dumps({"id": request_id, **request}) + "\n").encode())
            reply = self._await(request_id, deadline, command)
            return reply["status"], reply["stdout"], reply["stderr"]
        finally:
            with self._state:
                self._waiting.discard(request_id)
                self._replies.pop(request_id, None)

    def _await(self, request_id: int, deadline: Deadline, command: str) -> dict:
        """REQUEST_ID's reply: handed over by the reader, or read here when it is our turn."""
        with self._state:
            while request_id not in self._replies and self._reading:
                if deadline.left() <= 0:
                    raise GuestTimeout(f"the guest did not answer {command!r} in time")
                self._state.wait(deadline.left())
            if request_id in self._replies:
                return self._replies.pop(request_id)
            self._reading = True
        try:
            while True:
                if self._sock is None:
                    raise GuestTimeout(f"the guest's command port closed while running {command!r}")
                reply = json.loads(self._read_line(deadline, command))
                if reply.get("id") == request_id:
                    return reply
                with self._state:
                    # Another caller's, or a late answer to an abandoned request (dropped).
                    if reply.get("id") in self._waiting:
                        self._replies[reply["id"]] = reply
                        self._state.notify_all()
        finally:
            with self._state:
                self._reading = False
                self._state.notify_all()  # the next waiting caller takes its turn at reading

    def _read_line(self, deadline: Deadline, command: str) -> bytes:
        while b"\n" not in self._buffer:
            left = deadline.left()
            if left <= 0:
                raise GuestTimeout(f"the guest did not answer {command!r} in time")
            sock = self._sock
            if sock is None:
                raise GuestTimeout(f"the guest's command port closed while running {command!r}")
            try:
                sock.settimeout(left)
                chunk = sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                chunk = b""  # closed under us (the machine stopped): as a close
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
