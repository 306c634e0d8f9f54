"""Tests for harness/machines/qmp.py's Monitor against a fake QMP server on a unix socket.

The fake speaks just enough QMP: the greeting, capabilities negotiation, command
replies that echo the client's "id", errors in QEMU's shape, and events sent after
chosen commands (as QEMU sends DEVICE_DELETED some time after device_del returns).
"""
import json
import os
import shutil
import socket
import tempfile
import threading
import time

import pytest

from harness.errors import GuestTimeout
from harness.errors import MonitorError
from harness.machines.qmp import Monitor, event_time
from harness.waiting import Deadline

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
                    "capabilities": []}}
STAMP = {"seconds": 1700000000, "microseconds": 250000}
# What QEMU 7.2 sends after device_del of a virtio-blk-pci disk: first for the
# virtio backend (no "device"), then for the device itself.
BACKEND_DELETED = {"event": "DEVICE_DELETED", "timestamp": STAMP,
                   "data": {"path": "/machine/peripheral/volumedisk/virtio-backend"}}
DEVICE_DELETED = {"event": "DEVICE_DELETED", "timestamp": {"seconds": 1700000000, "microseconds": 500000},
                  "data": {"device": "volumedisk", "path": "/machine/peripheral/volumedisk"}}


class FakeQMP:
    """A QMP server in a thread. REPLIES maps a command name to ("return", value) or
    ("error", desc); AFTER maps a command name to (delay, [events]) sent after its reply."""

    def __init__(self, path: str, greet: bool = True):
        self.path = path
        self.greet = greet
        self.replies: dict[str, tuple[str, object]] = {}
        self.after: dict[str, tuple[float, list[dict]]] = {}
        self.received: list[dict] = []
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def start(self, delay: float = 0.0) -> None:
        """Starts listening after DELAY seconds (QEMU creating its socket late)."""
        self._spawn(self._serve, delay)

    def stop(self) -> None:
        self._stop.set()
        for sock in [self._listener, *self._conns]:
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
            assert not thread.is_alive(), "fake QMP server thread did not stop"

    def commands(self) -> list[dict]:
        return [msg for msg in self.received if msg.get("execute") != "qmp_capabilities"]

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _serve(self, delay: float) -> None:
        if self._stop.wait(delay):
            return
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen()
        self._listener = listener
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # stop() closed the listener
            self._conns.append(conn)
            self._spawn(self._talk, conn)

    def _talk(self, conn: socket.socket) -> None:
        try:
            if self.greet:
                self._send(conn, GREETING)
            for msg in self._messages(conn):
                self.received.append(msg)
                self._answer(conn, msg)
        except OSError:
            pass  # the client or stop() closed the connection

    def _messages(self, conn: socket.socket):
        decoder = json.JSONDecoder()
        buffer = ""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk.decode()
            while buffer.strip():
                try:
                    msg, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break  # incomplete: wait for more
                buffer = buffer.lstrip()[end:]
                yield msg

    def _answer(self, conn: socket.socket, msg: dict) -> None:
        name = msg.get("execute")
        kind, value = ("return", {}) if name == "qmp_capabilities" else self.replies.get(name, ("return", {}))
        reply = {"return": value} if kind == "return" else {"error": {"class": "GenericError", "desc": value}}
        if "id" in msg:
            reply["id"] = msg["id"]
        self._send(conn, reply)
        if name in self.after:
            delay, events = self.after[name]
            self._spawn(self._emit, conn, delay, events)

    def _emit(self, conn: socket.socket, delay: float, events: list[dict]) -> None:
        if self._stop.wait(delay):
            return
        try:
            for event in events:
                self._send(conn, event)
        except OSError:
            pass

    @staticmethod
    def _send(conn: socket.socket, msg: dict) -> None:
        conn.sendall(json.dumps(msg).encode() + b"\r\n")


@pytest.fixture
def sock_path():
    # Unix socket paths are limited to ~108 bytes: pytest's tmp_path can be too long.
    directory = tempfile.mkdtemp(prefix="uc-qmp.", dir="/tmp")
    yield os.path.join(directory, "qmp.sock")
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def server(sock_path):
    fake = FakeQMP(sock_path)
    yield fake
    fake.stop()


@pytest.fixture
def monitor(server):
    """A Monitor connected to a running fake server."""
    server.start()
    mon = Monitor(server.path, timeout=2.0)
    mon.connect(Deadline(5))
    yield mon
    mon.close()


def test_connect_retries_until_the_socket_appears(server):
    server.start(delay=0.3)
    mon = Monitor(server.path, timeout=2.0)
    started = time.monotonic()
    try:
        mon.connect(Deadline(5))
        assert time.monotonic() - started >= 0.3
        assert server.received[0]["execute"] == "qmp_capabilities"
    finally:
        mon.close()


def test_connect_gives_up_at_its_deadline(sock_path):
    mon = Monitor(sock_path)
    started = time.monotonic()
    with pytest.raises(GuestTimeout, match="did not answer") as caught:
        mon.connect(Deadline(0.5))
    took = time.monotonic() - started
    assert 0.5 <= took < 2.0
    assert sock_path in str(caught.value)


def test_connect_gives_up_at_its_deadline_when_the_peer_never_greets(sock_path):
    silent = FakeQMP(sock_path, greet=False)
    silent.start()
    outcome = {}

    def attempt():
        mon = Monitor(sock_path)
        try:
            mon.connect(Deadline(0.5))
            outcome["result"] = "connected"
        except Exception as exc:  # noqa: BLE001 - any outcome is recorded and asserted below
            outcome["result"] = exc
        finally:
            mon.close()

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout=1.2)
    finished_in_time = not thread.is_alive()
    silent.stop()  # closes the connection: a stuck attempt now fails and the thread ends
    thread.join(timeout=5)
    assert finished_in_time, "connect() was still blocked 0.7 s after its deadline"
    assert isinstance(outcome["result"], GuestTimeout)


def test_command_returns_qemus_value(monitor, server):
    server.replies["query-status"] = ("return", {"running": True, "status": "running"})
    assert monitor.command("query-status") == {"running": True, "status": "running"}
    assert server.commands()[-1]["execute"] == "query-status"


def test_command_sends_arguments(monitor, server):
    monitor.command("device_del", id="volumedisk")
    assert server.commands()[-1]["arguments"] == {"id": "volumedisk"}


def test_qmp_error_becomes_monitor_error_with_qemus_desc(monitor, server):
    server.replies["device_del"] = ("error", "Device 'nope' not found")
    with pytest.raises(MonitorError) as caught:
        monitor.command("device_del", id="nope")
    assert "Device 'nope' not found" in str(caught.value)
    assert str(caught.value).startswith("device_del:")


def test_command_before_connect_is_a_monitor_error(sock_path):
    with pytest.raises(MonitorError, match="not connected"):
        Monitor(sock_path).command("query-status")


def test_hmp_sends_human_monitor_command(monitor, server):
    server.replies["human-monitor-command"] = ("return", "")
    assert monitor.hmp("drive_del volume") == ""
    sent = server.commands()[-1]
    assert sent["execute"] == "human-monitor-command"
    assert sent["arguments"] == {"command-line": "drive_del volume"}


def test_hmp_output_is_an_error(monitor, server):
    server.replies["human-monitor-command"] = ("return", "Device 'nope' not found\r\n")
    with pytest.raises(MonitorError) as caught:
        monitor.hmp("drive_del nope")
    assert str(caught.value) == "drive_del nope: Device 'nope' not found"


def test_wait_for_event_returns_the_matching_event(monitor, server):
    server.after["device_del"] = (0.2, [BACKEND_DELETED, DEVICE_DELETED])
    monitor.command("device_del", id="volumedisk")
    event = monitor.wait_for_event("DEVICE_DELETED", timeout=5, match={"device": "volumedisk"})
    assert event["data"] == DEVICE_DELETED["data"]
    assert event["timestamp"] == DEVICE_DELETED["timestamp"]


def test_wait_for_event_finds_an_event_that_came_before_the_wait(monitor, server):
    server.after["device_del"] = (0.0, [DEVICE_DELETED])
    monitor.command("device_del", id="volumedisk")
    time.sleep(0.2)  # the event is already here when the wait starts
    event = monitor.wait_for_event("DEVICE_DELETED", timeout=0.5, match={"device": "volumedisk"})
    assert event["data"]["device"] == "volumedisk"


def test_events_are_kept_in_order(monitor, server):
    server.after["device_del"] = (0.1, [BACKEND_DELETED, DEVICE_DELETED])
    monitor.command("device_del", id="volumedisk")
    monitor.wait_for_event("DEVICE_DELETED", timeout=5, match={"device": "volumedisk"})
    assert [event["data"] for event in monitor.events] == [BACKEND_DELETED["data"], DEVICE_DELETED["data"]]


def test_wait_for_event_times_out_when_the_event_never_comes(monitor, server):
    monitor.command("device_del", id="volumedisk")  # no event configured
    started = time.monotonic()
    with pytest.raises(GuestTimeout, match="DEVICE_DELETED"):
        monitor.wait_for_event("DEVICE_DELETED", timeout=0.5, match={"device": "volumedisk"})
    assert 0.5 <= time.monotonic() - started < 2.0


def test_wait_for_event_ignores_events_for_another_device(monitor, server):
    server.after["device_del"] = (0.0, [BACKEND_DELETED])
    monitor.command("device_del", id="volumedisk")
    with pytest.raises(GuestTimeout):
        monitor.wait_for_event("DEVICE_DELETED", timeout=0.5, match={"device": "volumedisk"})
    assert [event["data"] for event in monitor.events] == [BACKEND_DELETED["data"]]


def test_close_is_safe_after_qemu_is_gone(monitor, server):
    server.stop()
    monitor.close()
    monitor.close()
    with pytest.raises(MonitorError, match="not connected"):
        monitor.command("query-status")


def test_event_time_converts_qemus_timestamp():
    assert event_time(BACKEND_DELETED) == pytest.approx(1700000000.25)
    assert event_time({"event": "STOP"}) == 0
