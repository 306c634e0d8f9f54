#!/usr/bin/env python3
"""A fake Amazon ECS agent, just faithful enough to reproduce the incident.

In the incident the agent's introspection endpoint (:51678/v1/metadata) kept
answering 200 while Docker's volume was dead, so the load balancer's health
check never noticed that no task could start. The real agent image is large
and needs AWS, so the guest VM runs this stand-in under the same
`docker run --name ecs-agent --net=host ...` command line instead.

Mirrors the real agent:
  GET /v1/metadata  {"Cluster", "ContainerInstanceArn", "Version"}; the ARN is
                    null until the agent "registers" (0.5 s after start). It
                    never calls Docker, which is the point of the incident.
  GET /v1/tasks     {"Tasks": [...]} in the introspection format. A task that
                    failed to start is still listed, with KnownStatus
                    "STOPPED" and an extra "unitchaos_error" field.
unitchaos extensions:
  POST /v1/tasks    runs one task container through the Docker Engine API
                    (create, start, wait, remove). Optional body {"Cmd": [...]}.
                    200 {"ok": true, ...} if it exited 0, else 500 (504 on a
                    timeout) {"ok": false, "stage", "error", ...}. The stages are
                    create, start, wait, exit (non-zero exit code), remove.
  GET /unitchaos/agent, POST /unitchaos/disconnect, POST /unitchaos/connect
                    fake control-plane state (tasks_started counts every
                    POST /v1/tasks); disconnecting leaves /v1/metadata at 200,
                    as in amazon-ecs-agent#2587.

The container's root filesystem and log file live on the volume that dies, so
every module is imported at start-up and nothing is logged per request.
"""
import argparse
import http.client
import http.server
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse

VERSION = "Amazon ECS Agent - v1.57.0 (unitchaos)"
ARN_PREFIX = "arn:aws:ecs:us-east-1:000000000000"
DOCKER_API = "/v1.41"
DEFAULT_CMD = ["python3", "-c", "print('task ran')"]


class DockerError(Exception):
    def __init__(self, stage, message, timed_out=False):
        super().__init__(message)
        self.stage, self.message, self.timed_out = stage, message, timed_out


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class Docker:
    def __init__(self, socket_path, timeout):
        self.socket_path, self.timeout = socket_path, timeout

    def call(self, stage, method, path, body=None):
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        expired = threading.Event()

        # The socket timeout restarts on every byte received; this timer makes
        # the limit hold for the whole call, since shutdown() wakes a blocked recv.
        def expire():
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(self.timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, DOCKER_API + path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            failure = None
        except (OSError, http.client.HTTPException) as exc:
            failure = exc
        finally:
            timer.cancel()
            conn.close()
        # After shutdown() a cut-off reply can also parse as a short, valid one.
        if expired.is_set() or isinstance(failure, TimeoutError):
            raise DockerError(stage, f"Docker {method} {path} timed out after "
                              f"{self.timeout:g}s", timed_out=True)
        if failure:
            raise DockerError(stage, f"{type(failure).__name__}: {failure}")
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if resp.status >= 400:
            message = data.get("message") if isinstance(data, dict) else None
            text = raw.decode("utf-8", "replace").strip()
            raise DockerError(stage, message or text or f"HTTP {resp.status}")
        return data


class Agent:
    def __init__(self, cluster, docker, image):
        self.cluster, self.docker, self.image = cluster, docker, image
        self.lock = threading.Lock()
        self.started_at = time.monotonic()
        self.instance_arn = None
        self.connected = True
        self.tasks = []

    def start(self):
        # The real agent registers after its first round trip to the control plane.
        timer = threading.Timer(0.5, self.register)
        timer.daemon = True
        timer.start()

    def register(self):
        with self.lock:
            self.instance_arn = (f"{ARN_PREFIX}:container-instance/"
                                 f"{self.cluster}/{os.urandom(16).hex()}")

    def state(self):
        with self.lock:
            return {"connected": self.connected,
                    "registered": self.instance_arn is not None,
                    "uptime_seconds": round(time.monotonic() - self.started_at, 3),
                    "tasks_started": len(self.tasks)}

    def run_task(self, cmd):
        task_id = os.urandom(16).hex()
        name = f"ecs-unitchaos-task-1-task-{task_id[:20]}"
        container = {"DockerId": None, "DockerName": name, "Name": "task"}
        task = {"Arn": f"{ARN_PREFIX}:task/{self.cluster}/{task_id}",
                "DesiredStatus": "RUNNING", "KnownStatus": "PENDING",
                "Family": "unitchaos-task", "Version": "1", "Containers": [container]}
        with self.lock:
            self.tasks.append(task)
        began = time.monotonic()
        docker_id, exit_code, error = None, None, None
        try:
            created = self.docker.call(
                "create", "POST", "/containers/create?name=" + urllib.parse.quote(name),
                {"Image": self.image, "Cmd": cmd, "HostConfig": {"NetworkMode": "none"}})
            if not isinstance(created, dict) or not created.get("Id"):
                raise DockerError("create", "Docker's reply has no container Id")
            docker_id = created["Id"]
            with self.lock:
                container["DockerId"] = docker_id
            self.docker.call("start", "POST", f"/containers/{docker_id}/start")
            with self.lock:
                task["KnownStatus"] = "RUNNING"
            waited = self.docker.call("wait", "POST", f"/containers/{docker_id}/wait")
            if not isinstance(waited, dict) or "StatusCode" not in waited:
                raise DockerError("wait", "Docker's reply has no StatusCode")
            exit_code = waited["StatusCode"]
            if exit_code != 0:
                raise DockerError("exit", f"task container exited with code {exit_code}")
        except DockerError as exc:
            error = exc
        # Skip the cleanup once Docker has hung: it would only hang again.
        if docker_id and not (error and error.timed_out):
            try:
                self.docker.call("remove", "DELETE", f"/containers/{docker_id}?force=1")
            except DockerError as exc:
                error = error or exc
        seconds = round(time.monotonic() - began, 3)
        with self.lock:
            task["DesiredStatus"] = task["KnownStatus"] = "STOPPED"
            if error:
                task["unitchaos_error"] = f"{error.stage}: {error.message}"
        if error is None:
            return 200, {"ok": True, "TaskArn": task["Arn"], "DockerId": docker_id,
                         "ExitCode": exit_code, "seconds": seconds}
        return (504 if error.timed_out else 500), {
            "ok": False, "TaskArn": task["Arn"], "DockerId": docker_id,
            "ExitCode": exit_code, "stage": error.stage, "error": error.message,
            "seconds": seconds}


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "unitchaos-fake-ecs-agent"

    def log_message(self, format, *args):
        pass  # the log file is on the disk that dies: writing could block

    def get_metadata(self, body):
        agent = self.server.agent
        with agent.lock:
            return 200, {"Cluster": agent.cluster, "ContainerInstanceArn": agent.instance_arn,
                         "Version": VERSION}

    def get_tasks(self, body):
        agent = self.server.agent
        with agent.lock:  # snapshot: run_task() keeps updating the records
            return 200, {"Tasks": json.loads(json.dumps(agent.tasks))}

    def post_task(self, body):
        cmd = DEFAULT_CMD
        if body:
            try:
                cmd = json.loads(body).get("Cmd", DEFAULT_CMD)
            except (ValueError, AttributeError):
                return 400, {"message": "body must be a JSON object"}
            if not (isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd)):
                return 400, {"message": "Cmd must be a non-empty list of strings"}
        return self.server.agent.run_task(cmd)

    def get_agent(self, body):
        return 200, self.server.agent.state()

    def disconnect(self, body):
        with self.server.agent.lock:
            self.server.agent.connected = False
        return 200, self.server.agent.state()

    def connect(self, body):
        with self.server.agent.lock:
            self.server.agent.connected = True
        return 200, self.server.agent.state()

    ROUTES = {
        ("GET", "/v1/metadata"): get_metadata,
        ("GET", "/v1/tasks"): get_tasks,
        ("POST", "/v1/tasks"): post_task,
        ("GET", "/unitchaos/agent"): get_agent,
        ("POST", "/unitchaos/disconnect"): disconnect,
        ("POST", "/unitchaos/connect"): connect,
    }

    def dispatch(self):
        path = urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        route = self.ROUTES.get((self.command, path))
        allowed = sorted(m for m, p in self.ROUTES if p == path)
        if route:
            status, payload = route(self, body)
        elif allowed:
            status, payload = 405, {"message": f"{self.command} not allowed on {path}"}
        else:
            status, payload = 404, {"message": f"no such endpoint: {path}"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 405:
            self.send_header("Allow", ", ".join(allowed))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = dispatch


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a request stuck on Docker must not delay exit
    block_on_close = False

    def __init__(self, address, agent):
        self.agent = agent
        super().__init__(address, Handler)

    def handle_error(self, request, client_address):
        pass  # the default prints a traceback to the log on the dead disk


def default_docker_socket():
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://"):] if host.startswith("unix://") else "/var/run/docker.sock"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("ECS_AGENT_PORT", "51678")))
    parser.add_argument("--docker-socket", default=default_docker_socket())
    args = parser.parse_args(argv)

    docker = Docker(args.docker_socket, float(os.environ.get("UNITCHAOS_DOCKER_TIMEOUT", "20")))
    agent = Agent(os.environ.get("ECS_CLUSTER") or "default", docker,
                  os.environ.get("UNITCHAOS_TASK_IMAGE", "amazon/amazon-ecs-agent:latest"))
    server = Server((args.host, args.port), agent)

    # shutdown() waits for serve_forever() to return, so it cannot run in the
    # signal handler, which interrupts serve_forever() on this same thread.
    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.start()
    print(f"fake ECS agent listening on {args.host}:{args.port}, cluster {agent.cluster}, "
          f"docker {args.docker_socket}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
