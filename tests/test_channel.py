"""The command port's host end: requests overlap and each caller gets its own reply
(a fake unitchaos-cmdd answering each request in a thread of its own, as the guest's does)."""
import json
import socket
import threading
import time

import pytest

from harness.errors import GuestTimeout
from harness.machines.channel import GuestChannel
from harness.waiting import Deadline


@pytest.fixture
def guest(tmp_path):
    """A fake cmdd: COMMAND "sleep S; echo OUT" answers OUT after S seconds."""
    path = str(tmp_path / "cmd.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    write = threading.Lock()

    def answer(conn, request):
        delay, _, out = request["cmd"].removeprefix("sleep ").partition("; echo ")
        time.sleep(float(delay))
        with write:
            conn.sendall((json.dumps({"id": request["id"], "status": 0, "stdout": out, "stderr": ""}) + "\n").encode())

    def serve():
        conn, _ = server.accept()
        pending = b""
        while chunk := conn.recv(1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                threading.Thread(target=answer, args=(conn, json.loads(line)), daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    channel = GuestChannel(path)
    channel.connect(Deadline(5))
    yield channel
    channel.close()
    server.close()


def ask_at_once(channel, commands):
    results = {}

    def ask(command):
        results[command] = (channel.run(command, timeout=5)[1], time.monotonic())
    threads = [threading.Thread(target=ask, args=(command,)) for command in commands]
    started = time.monotonic()
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # in this order
    for thread in threads:
        thread.join(10)
    return started, results


def test_overlapping_requests_each_get_their_own_answer_and_wait_together(guest):
    _, results = ask_at_once(guest, ["sleep 0.6; echo slow", "sleep 0; echo fast", "sleep 0.3; echo middle"])
    assert {command: out for command, (out, _) in results.items()} == {
        "sleep 0.6; echo slow": "slow", "sleep 0; echo fast": "fast", "sleep 0.3; echo middle": "middle"}
    # Each was answered when the guest was done with it, not after the slow one sent ahead of it.
    assert results["sleep 0; echo fast"][1] < results["sleep 0.3; echo middle"][1] < results["sleep 0.6; echo slow"][1]


def test_when_the_reader_has_its_answer_a_waiting_caller_reads_on(guest):
    # The first caller reads the port, gets its answer and leaves; the slow one must not starve.
    _, results = ask_at_once(guest, ["sleep 0; echo first", "sleep 0.4; echo second"])
    assert results["sleep 0; echo first"][0] == "first" and results["sleep 0.4; echo second"][0] == "second"


def test_a_late_answer_to_an_abandoned_request_goes_to_nobody(guest):
    with pytest.raises(GuestTimeout, match="did not answer"):
        guest.run("sleep 0.5; echo late", timeout=-9.8)  # gives up after 0.2 s
    time.sleep(0.5)  # the late answer is on its way
    assert guest.run("sleep 0; echo next", timeout=5)[1] == "next"
