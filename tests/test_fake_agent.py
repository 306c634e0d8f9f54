"""Tests for vm/agent/fake_ecs_agent.py against a fake Docker Engine API.

The agent runs as a subprocess, exactly as in the guest, but on 127.0.0.1 and
talking to a fake Docker socket that can succeed, fail like a dead overlay2
disk, or hang.
"""
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from fake_docker import FakeDockerServer

from harness.waiting import wait_until

AGENT = Path(__file__).resolve().parents[1] / "vm" / "agent" / "fake_ecs_agent.py"
DOCKER_TIMEOUT = 2.0
CONTAINER_ID = "c0ffee" * 10 + "abcd"
IO_ERROR = "mkdir /var/lib/docker/overlay2/3f1c9e/merged: input/output error"


class FakeDocker(FakeDockerServer):
    """The few Docker Engine API calls the agent makes."""
    # mode: "ok", "fail_create", "hang" or "trickle"

    def respond(self, req, path, body):
        self.calls.append((req.command, req.path, body))
        if self.mode == "hang":
            self.release.wait()
            return
        if self.mode == "trickle":  # never finishes, but never goes quiet either
            req.wfile.write(b"HTTP/1.1 200 OK\r\n")
            while not self.release.wait(0.3):
                req.wfile.write(b"X-Still-Busy: 1\r\n")
            return
        if path.endswith("/containers/create"):
            if self.mode == "fail_create":
                return self.reply(req, 500, {"message": IO_ERROR})
            return self.reply(req, 201, {"Id": CONTAINER_ID, "Warnings": []})
        if path.endswith("/start") or req.command == "DELETE":
            return self.reply(req, 204, None)
        if path.endswith("/wait"):
            return self.reply(req, 200, {"StatusCode": 0, "Error": None})
        self.reply(req, 404, {"message": f"page not found: {req.path}"})

    def stages(self):
        names = []
        for method, path, _ in self.calls:
            path = urllib.parse.urlsplit(path).path
            names.append("delete" if method == "DELETE" else path.rsplit("/", 1)[-1])
        return names


class Agent:
    def __init__(self, proc, port, fake, output):
        self.proc, self.port, self.fake, self.output = proc, port, fake, output

    def request(self, method, path, body=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def request_in_background(self, method, path):
        """Fire a request whose answer the test does not wait for."""
        def run():
            try:
                self.request(method, path)
            except (OSError, http.client.HTTPException):
                pass  # the agent was stopped under it
        threading.Thread(target=run, daemon=True).start()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def start_agent():
    # Not tmp_path: a unix socket path must stay under ~108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="uc-agent-"))
    started = []

    def start(*python_flags):
        fake = FakeDocker(workdir / f"docker{len(started)}.sock")
        port = free_port()
        output = workdir / f"agent{len(started)}.log"
        with open(output, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *python_flags, str(AGENT), "--host", "127.0.0.1",
                 "--port", str(port), "--docker-socket", str(fake.server.server_address)],
                env={"ECS_CLUSTER": "test", "UNITCHAOS_DOCKER_TIMEOUT": str(DOCKER_TIMEOUT)},
                stdout=out, stderr=subprocess.STDOUT)
        agent = Agent(proc, port, fake, output)
        started.append(agent)
        # The port opens just before the startup line is printed: wait for both.
        def up() -> bool:
            assert proc.poll() is None, output.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                return False
            return "listening on" in output.read_text()
        wait_until(up, 10, "the agent to come up", interval=0.02)
        return agent

    yield start
    for agent in started:
        agent.proc.kill()
        agent.proc.wait()
        agent.fake.close()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def agent(start_agent):
    return start_agent()


def wait_for(predicate, timeout=5.0):
    wait_until(predicate, timeout, "the condition", interval=0.05)


def test_metadata_reports_cluster_and_registers(agent):
    status, meta = agent.request("GET", "/v1/metadata")
    assert status == 200
    assert meta["Cluster"] == "test"
    assert meta["Version"] == "Amazon ECS Agent - v1.57.0 (unitchaos)"

    wait_for(lambda: agent.request("GET", "/v1/metadata")[1]["ContainerInstanceArn"])
    arn = agent.request("GET", "/v1/metadata")[1]["ContainerInstanceArn"]
    assert re.fullmatch(r"arn:aws:ecs:us-east-1:000000000000:container-instance/test/[0-9a-f]{32}", arn)
    assert agent.request("GET", "/unitchaos/agent")[1]["registered"] is True
    assert agent.fake.calls == [], "metadata must never touch Docker"


def test_task_runs_through_docker(agent):
    status, result = agent.request("POST", "/v1/tasks")

    assert (status, result["ok"], result["ExitCode"]) == (200, True, 0)
    assert result["DockerId"] == CONTAINER_ID
    assert agent.fake.stages() == ["create", "start", "wait", "delete"]
    method, path, body = agent.fake.calls[0]
    assert path.startswith("/v1.41/containers/create?name=ecs-")
    assert body == {"Image": "amazon/amazon-ecs-agent:latest",
                    "Cmd": ["python3", "-c", "print('task ran')"],
                    "HostConfig": {"NetworkMode": "none"}}
    assert agent.fake.calls[-1][1] == f"/v1.41/containers/{CONTAINER_ID}?force=1"


def test_task_cmd_can_be_overridden(agent):
    status, _ = agent.request("POST", "/v1/tasks", {"Cmd": ["true"]})
    assert status == 200
    assert agent.fake.calls[0][2]["Cmd"] == ["true"]


def test_started_tasks_are_listed(agent):
    agent.request("POST", "/v1/tasks")
    status, listing = agent.request("GET", "/v1/tasks")

    assert status == 200
    [task] = listing["Tasks"]
    assert re.fullmatch(r"arn:aws:ecs:us-east-1:000000000000:task/test/[0-9a-f]{32}", task["Arn"])
    assert (task["DesiredStatus"], task["KnownStatus"]) == ("STOPPED", "STOPPED")
    assert task["Family"] == "unitchaos-task"
    assert task["Containers"][0]["DockerId"] == CONTAINER_ID
    assert task["Containers"][0]["DockerName"].startswith("ecs-unitchaos-task-1-task-")
    assert "unitchaos_error" not in task
    assert agent.request("GET", "/unitchaos/agent")[1]["tasks_started"] == 1


def test_create_failure_reports_dockers_message(agent):
    agent.fake.mode = "fail_create"
    status, result = agent.request("POST", "/v1/tasks")

    assert status == 500
    assert (result["ok"], result["stage"], result["error"]) == (False, "create", IO_ERROR)
    assert agent.fake.stages() == ["create"]
    [task] = agent.request("GET", "/v1/tasks")[1]["Tasks"]
    assert task["KnownStatus"] == "STOPPED"
    assert task["unitchaos_error"] == f"create: {IO_ERROR}"


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_hung_docker_times_out_with_504(agent, mode):
    agent.fake.mode = mode
    began = time.monotonic()
    status, result = agent.request("POST", "/v1/tasks")
    elapsed = time.monotonic() - began

    assert status == 504, result
    assert (result["ok"], result["stage"]) == (False, "create")
    assert "timed out" in result["error"]
    assert DOCKER_TIMEOUT - 0.1 < elapsed < DOCKER_TIMEOUT + 1.5


def test_metadata_stays_fast_while_docker_hangs(agent):
    agent.fake.mode = "hang"
    agent.request_in_background("POST", "/v1/tasks")
    wait_for(lambda: agent.fake.calls)

    for _ in range(5):
        began = time.monotonic()
        status, meta = agent.request("GET", "/v1/metadata", timeout=1)
        assert status == 200 and meta["Cluster"] == "test"
        assert time.monotonic() - began < 0.5


def test_disconnect_keeps_metadata_healthy(agent):
    assert agent.request("GET", "/unitchaos/agent")[1]["connected"] is True

    status, state = agent.request("POST", "/unitchaos/disconnect")
    assert (status, state["connected"]) == (200, False)
    assert agent.request("GET", "/unitchaos/agent")[1]["connected"] is False
    assert agent.request("GET", "/v1/metadata")[0] == 200

    status, state = agent.request("POST", "/unitchaos/connect")
    assert (status, state["connected"]) == (200, True)


def test_unknown_path_and_wrong_method(agent):
    status, body = agent.request("GET", "/v1/nope")
    assert status == 404 and "message" in body
    assert agent.request("POST", "/v1/metadata")[0] == 405
    assert agent.request("GET", "/unitchaos/disconnect")[0] == 405


def test_sigterm_exits_cleanly(agent):
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=5) == 0


def test_sigterm_exits_even_with_a_docker_call_hung(agent):
    agent.fake.mode = "hang"
    agent.request_in_background("POST", "/v1/tasks")
    wait_for(lambda: agent.fake.calls)

    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=DOCKER_TIMEOUT / 2) == 0


def test_no_output_or_imports_after_startup(start_agent):
    # In the incident the log file and the agent's own root filesystem sit on
    # the dead volume: after start-up the agent must neither write to its log
    # nor import anything. -X importtime reports every import on stderr.
    agent = start_agent("-X", "importtime")
    startup = agent.output.read_text()

    agent.request("GET", "/v1/metadata")
    agent.request("POST", "/v1/tasks")
    agent.request("GET", "/v1/tasks")
    agent.request("GET", "/nope")
    agent.request("POST", "/v1/metadata")
    agent.request("POST", "/unitchaos/disconnect")
    agent.fake.mode = "fail_create"
    agent.request("POST", "/v1/tasks")
    agent.fake.mode = "hang"
    agent.request("POST", "/v1/tasks")
    assert agent.request("GET", "/unitchaos/agent")[1]["registered"]

    assert agent.output.read_text() == startup
    assert [l for l in startup.splitlines() if not l.startswith("import time:")] == [
        f"fake ECS agent listening on 127.0.0.1:{agent.port}, cluster test, "
        f"docker {agent.fake.server.server_address}"]
