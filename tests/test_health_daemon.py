"""Tests for the guest's deep health daemon (vm/guest/usr/local/sbin/unitchaos-health).

The daemon runs as a subprocess, as in the guest, with every path pointed at stand-ins:
a temp dir as the volume, a fake mountinfo and /sys/class/block, a regular file as
/dev/kmsg, a fake Docker socket and a fake ECS agent. No VM, no root.
"""
import http.client
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fake_docker import FakeDockerServer

from harness.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
DAEMON = ROOT / "vm" / "guest" / "usr" / "local" / "sbin" / "unitchaos-health"
PATTERNS_JSON = ROOT / "vm" / "guest" / "usr" / "local" / "share" / "unitchaos" / "kernel-patterns.json"
CHECKS = {"volume", "io", "space", "kernel", "docker", "agent"}
IO_ERROR = "mkdir /var/lib/docker/overlay2/3f1c9e/merged: input/output error"

# node-problem-detector's XfsShutdown pattern (config/kernel-monitor.json).
NPD_XFS_SHUTDOWN = re.compile(r"XFS .* Shutting down filesystem.?")
LOG_SHUTDOWN = "XFS (vdb): Filesystem has been shut down due to log error (0x2)."
KERNEL_FAILURES = [  # (kernel message, the pattern the kernel check must name)
    (LOG_SHUTDOWN, "xfs-shutdown"),
    ("XFS (vdb): Log I/O Error Detected. Shutting down filesystem", "xfs-shutdown"),
    ("XFS (vdb): Metadata I/O Error (0x1) detected at xfs_trans_read_buf_map+0x1e2/0x2f0 [xfs] "
     "(fs/xfs/xfs_trans_buf.c:296).  Shutting down filesystem.", "xfs-shutdown"),
    ("XFS (vdb): Block device removal (0x20) detected at fs_bdev_mark_dead+0x59/0x70 "
     "(fs/xfs/xfs_super.c:1177).  Shutting down filesystem.", "xfs-shutdown"),
    ("XFS (vdb): Corruption of in-memory data (0x8) detected at xfs_trans_cancel+0x13c/0x160 [xfs] "
     "(fs/xfs/xfs_trans.c:1098).  Shutting down filesystem.", "xfs-shutdown"),
    ('XFS (vdb): metadata I/O error in "xfs_alloc_read_agfl+0x7a/0xb0 [xfs]" at daddr 0x8 len 8 error 5',
     "xfs-metadata-io-error"),
    ("XFS (vdb): log I/O error -5", "xfs-log-io-error"),
    ("I/O error, dev vdb, sector 192 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2", "block-io-error"),
    ("EXT4-fs error (device vdb): ext4_journal_check_start:83: comm dd: Detected aborted journal",
     "ext4-error"),
    ("EXT4-fs (vdb): Remounting filesystem read-only", "ext4-remount-ro"),
    ("Aborting journal on device vdb-8.", "ext4-abort-journal"),
    ("INFO: task kworker/1:2:123 blocked for more than 120 seconds.", "hung-task"),
]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeDocker(FakeDockerServer):
    """Docker's /_ping and the container test's calls."""
    # mode: "ok", "hang", "error" (ping 500) or "create_fails"

    def respond(self, req, path, body):
        self.calls.append((req.command, path, body))
        if self.mode == "hang":
            self.release.wait()
        elif path.endswith("/_ping"):
            self.reply(req, 500, {"message": "daemon is shutting down"}) if self.mode == "error" \
                else self.reply(req, 200, "OK")
        elif path.endswith("/containers/create"):
            if self.mode == "create_fails":
                self.reply(req, 500, {"message": IO_ERROR})
            else:
                self.reply(req, 201, {"Id": "c0ffee", "Warnings": []})
        elif path.endswith("/wait"):
            self.reply(req, 200, {"StatusCode": 0})
        else:
            self.reply(req, 204, None)

    def stages(self):
        return [("delete" if m == "DELETE" else p.rsplit("/", 1)[-1]) for m, p, _ in self.calls
                if not p.endswith("/_ping")]


class FakeAgent:
    """The fake ECS agent's two endpoints the daemon reads."""

    def __init__(self):
        self.metadata_status, self.connected = 200, True
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/v1/metadata":
                    status, body = fake.metadata_status, {"Cluster": "default"}
                elif self.path == "/unitchaos/agent":
                    status, body = 200, {"connected": fake.connected, "registered": True}
                else:
                    status, body = 404, {}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Daemon:
    def __init__(self, proc, port, output):
        self.proc, self.port, self.output = proc, port, output

    def get(self, path, timeout=2.0):
        """(status, body, seconds it took)."""
        began = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode()
        finally:
            conn.close()
        return resp.status, body, time.monotonic() - began

    def health(self):
        status, body, _ = self.get("/health")
        return status, json.loads(body)

    def wait_for(self, predicate, timeout=5.0):
        """The first /health answer (status, json) for which PREDICATE holds."""
        def holds(answer) -> bool:
            if predicate(*answer):
                return True
            assert self.proc.poll() is None, self.output.read_text()
            return False
        return wait_until(self.health, timeout, "a /health answer that fits", done=holds, interval=0.05)

    def wait_healthy(self):
        return self.wait_for(lambda status, body: status == 200)

    def wait_failing(self, check, timeout=5.0):
        """The reason CHECK gives once /health says 503 because of it."""
        _, body = self.wait_for(lambda status, body: status == 503
                                and body["checks"][check]["status"] == "fail"
                                and body["checks"][check]["reason"] != "not checked yet", timeout)
        return body["checks"][check]["reason"]

    def kill(self):
        """Teardown: SIGKILL, fast (SIGTERM has its own tests). The daemon's probe
        children share its process group, so none outlives the test."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


class Env:
    """Everything the daemon looks at, faked under one temp dir."""

    def __init__(self, root):
        self.root = root
        self.mount = root / "mnt"
        self.mount.mkdir()
        self.mountinfo = root / "mountinfo"
        self.block = root / "block"
        (self.block / "vdb").mkdir(parents=True)
        (self.block / "vdb" / "size").write_text("2097152\n")
        (self.block / "vdb" / "dev").write_text("254:16\n")
        self.kmsg = root / "kmsg"
        self.kmsg.touch()
        self.seq = 1000
        self.docker = FakeDocker(root / "docker.sock")
        self.docker_pidfile = root / "docker.pid"
        self.docker_pidfile.write_text(f"{os.getpid()}\n")  # a live process stands in for dockerd
        self.agent = FakeAgent()
        self.daemons = []
        self.set_mount()

    def set_mount(self, present=True, options="rw,relatime", fstype="xfs", source="/dev/vdb",
                  super_options="rw,attr2,inode64,logbufs=8,noquota", majmin="254:16"):
        lines = ["22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw,errors=remount-ro"]
        if present:
            lines.append(f"100 22 {majmin} / {self.mount} {options} shared:50 - {fstype} {source} {super_options}")
        tmp = self.root / "mountinfo.new"  # replaced whole: the daemon never reads half a file
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.mountinfo)

    def kernel(self, message, pri=6, continuation=None):
        """Appends a record as /dev/kmsg shows it: "pri,seq,usec,flags;message"."""
        self.seq += 1
        with open(self.kmsg, "a") as f:
            f.write(f"{pri},{self.seq},{self.seq * 1000},-;{message}\n")
            if continuation:
                f.write(f" {continuation}\n")

    def start(self, *extra, env=None, python_flags=()):
        env = env or {}
        port = int(env.get("UNITCHAOS_HEALTH_PORT") or free_port())
        output = self.root / f"daemon{len(self.daemons)}.log"
        flags = {"--host": "127.0.0.1", "--port": port, "--interval": 0.1,
                 "--mount-point": self.mount, "--device": "/dev/vdb", "--mountinfo": self.mountinfo,
                 "--sysfs-block": self.block, "--kmsg": self.kmsg, "--kernel-patterns": PATTERNS_JSON,
                 "--docker-socket": self.docker.server.server_address, "--docker-pidfile": self.docker_pidfile,
                 "--docker-timeout": 0.5,
                 "--container-every": 0, "--container-timeout": 2, "--agent-url": self.agent.url,
                 "--agent-timeout": 0.5, "--io-timeout": 1, "--min-free-space": 0, "--min-free-inodes": 0}
        if "UNITCHAOS_HEALTH_PORT" in env:
            del flags["--port"]
        argv = [sys.executable, *python_flags, str(DAEMON)] + [str(x) for kv in flags.items() for x in kv] + list(extra)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("UNITCHAOS_HEALTH_")}
        with open(output, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**clean, **env})
        daemon = Daemon(proc, port, output)
        self.daemons.append(daemon)
        def answers() -> bool:
            assert proc.poll() is None, output.read_text()
            try:
                daemon.get("/health", timeout=0.5)
                return True
            except OSError:
                return False
        wait_until(answers, 10, "the daemon to answer", interval=0.02)
        return daemon

    def healthy(self, *extra):
        daemon = self.start(*extra)
        daemon.wait_healthy()
        return daemon

    def close(self):
        for daemon in self.daemons:
            daemon.kill()
        self.docker.close()
        self.agent.close()


@pytest.fixture
def env():
    # Not tmp_path: a unix socket path must stay under ~108 bytes.
    root = Path(tempfile.mkdtemp(prefix="uc-health-"))
    environment = Env(root)
    try:
        yield environment
    finally:
        environment.close()
        shutil.rmtree(root, ignore_errors=True)


def load_daemon_module():
    loader = importlib.machinery.SourceFileLoader("unitchaos_health", str(DAEMON))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


# -- healthy ---------------------------------------------------------------------------------

def test_healthy_answers_200_with_every_check_ok(env):
    daemon = env.start()
    status, body = daemon.wait_healthy()

    assert status == 200 and body["healthy"] is True
    assert set(body["checks"]) == CHECKS
    for name, check in body["checks"].items():
        assert set(check) == {"status", "reason", "since", "duration_ms"}, name
        assert check["status"] == "ok" and check["reason"], name
        assert check["since"] <= time.time() and check["duration_ms"] >= 0
    assert body["actions"] == [] and body["kernel_matches"] == {}
    assert body["version"].startswith("unitchaos-health")
    assert "/dev/vdb xfs rw" in body["checks"]["volume"]["reason"]
    assert daemon.get("/nothing-here")[0] == 404
    assert not (env.mount / ".unitchaos-health-probe").is_dir()


def test_a_check_that_has_not_answered_yet_is_not_ok(env):
    daemon = env.start("--probe-command", "sleep 60", "--io-timeout", "30")
    _, body = daemon.wait_for(lambda s, b: all(c["status"] == "ok" for n, c in b["checks"].items() if n != "io"))
    assert body["healthy"] is False
    assert body["checks"]["io"] == {**body["checks"]["io"], "status": "fail", "reason": "not checked yet"}
    assert daemon.health()[0] == 503


def block_the_probe_file(mount: Path) -> None:
    """Puts a directory where the io probe writes its file (its open then fails with EISDIR).
    The daemon's own probe may hold the file at that moment: at load 8-14 a bare mkdir
    failed with FileExistsError (2026-12-01). Take it away and try again."""
    path = mount / ".unitchaos-health-probe"
    for _ in range(200):
        path.unlink(missing_ok=True)
        try:
            return path.mkdir()
        except FileExistsError:
            time.sleep(0.01)
    pytest.fail(f"{path} kept coming back as a file")


def test_configuration_comes_from_the_environment_too(env):
    port = free_port()
    daemon = env.start(env={"UNITCHAOS_HEALTH_PORT": str(port)})
    assert daemon.port == port
    assert daemon.wait_healthy()[0] == 200


def test_no_module_is_imported_after_start_up(env):
    """A lazy import reads the root disk at the worst moment; every module is loaded at start."""
    daemon = env.start("--container-every", "0.3", "--stop-agent-after", "0.3", "--stop-agent-command", "true",
                       python_flags=["-X", "importtime"])
    daemon.wait_healthy()
    time.sleep(0.5)  # a second container test
    env.docker.mode, env.agent.connected = "error", False
    env.set_mount(options="ro")
    block_the_probe_file(env.mount)
    # Last: the kernel's fatal word makes the daemon re-check at once, its write probe too.
    env.kernel(LOG_SHUTDOWN)
    daemon.wait_for(lambda s, b: b["actions"] and b["actions"][0]["result"] == "exit 0"
                    and all(c["status"] == "fail" for n, c in b["checks"].items() if n != "space"))
    assert daemon.get("/metrics")[0] == 200 and daemon.get("/nothing")[0] == 404
    env.agent.close()
    daemon.wait_for(lambda s, b: "cannot reach" in b["checks"]["agent"]["reason"])
    output = daemon.output.read_text().splitlines()
    first_log = next(i for i, line in enumerate(output) if line.startswith("unitchaos-health:"))
    assert any(line.startswith("import time:") for line in output[:first_log]), "no -X importtime output?"
    assert [line for line in output[first_log:] if line.startswith("import time:")] == []


def test_sigterm_exits_0(env):
    daemon = env.healthy()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(3) == 0


# -- volume ----------------------------------------------------------------------------------

VOLUME_FAILURES = {
    "not-mounted": (dict(present=False), "is not mounted"),
    "mounted-ro": (dict(options="ro,relatime"), "mounted read-only (ro)"),
    "emergency-ro": (dict(super_options="rw,emergency_ro,errors=remount-ro"), "read-only (emergency_ro)"),
    "superblock-ro": (dict(super_options="ro,errors=remount-ro"), "read-only (ro)"),
    "other-device": (dict(source="/dev/vda2"), "mounted from /dev/vda2"),
    "other-fstype": (dict(fstype="ext3"), "is ext3, expected xfs or ext4"),
}


@pytest.mark.parametrize("change, expected", VOLUME_FAILURES.values(), ids=VOLUME_FAILURES)
def test_volume_fails_on_a_bad_mount(env, change, expected):
    daemon = env.healthy()
    env.set_mount(**change)
    assert expected in daemon.wait_failing("volume", timeout=2)


def test_volume_fails_when_the_device_has_size_0_or_is_gone(env):
    daemon = env.healthy()
    (env.block / "vdb" / "size").write_text("0\n")
    assert "vdb has size 0" in daemon.wait_failing("volume", timeout=2)
    shutil.rmtree(env.block / "vdb")
    daemon.wait_for(lambda s, b: "vdb is gone" in b["checks"]["volume"]["reason"], timeout=2)


def test_volume_recovers_and_since_marks_the_change(env):
    daemon = env.healthy()
    env.set_mount(options="ro")
    daemon.wait_failing("volume")
    failed_since = daemon.health()[1]["checks"]["volume"]["since"]
    env.set_mount()
    _, body = daemon.wait_healthy()
    assert body["checks"]["volume"]["since"] > failed_since
    assert "volume: ok -> fail: " in daemon.output.read_text()


def test_a_device_given_as_major_minor(env):
    daemon = env.healthy("--device", "254:16")
    env.set_mount(majmin="8:16")
    assert "expected 254:16" in daemon.wait_failing("volume", timeout=2)


def test_fstype_is_configurable(env):
    daemon = env.start("--fstype", "ext4")
    assert "expected ext4" in daemon.wait_failing("volume", timeout=2)


# -- io --------------------------------------------------------------------------------------

def test_io_reports_the_errno_of_a_failed_probe(env):
    daemon = env.healthy()
    block_the_probe_file(env.mount)  # open(O_WRONLY) fails: EISDIR, even as root
    # A probe that was under way when the directory came may fail at its read instead.
    _, body = daemon.wait_for(lambda status, body: body["checks"]["io"]["reason"].startswith("EISDIR at open"),
                              timeout=10)
    assert body["checks"]["io"]["status"] == "fail"
    (env.mount / ".unitchaos-health-probe").rmdir()
    daemon.wait_healthy()


@pytest.mark.parametrize("name, meaning", [("EIO", "dead or its filesystem shut down"),
                                           ("EROFS", "read-only"), ("ENOSPC", "no space left")])
def test_io_explains_the_errnos_that_matter(env, name, meaning):
    probe = f"sh -c 'echo {name} fsync whatever; exit 1'"
    daemon = env.start("--probe-command", probe)
    reason = daemon.wait_failing("io", timeout=10)
    assert reason.startswith(f"{name} at fsync") and meaning in reason


def children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_hung_probe_fails_io_without_blocking_health_or_piling_up(env):
    daemon = env.start("--probe-command", "sleep 60", "--io-timeout", "0.5")
    reason = daemon.wait_failing("io", timeout=10)
    # A poll that comes late (a loaded host) first sees the later words: both say the timeout.
    assert reason.startswith(("timeout: the probe did not finish within 0.5 s", "timeout: a probe has been stuck for"))
    daemon.wait_for(lambda s, b: "a probe has been stuck for" in b["checks"]["io"]["reason"], timeout=3)
    for _ in range(10):
        status, _, seconds = daemon.get("/health")
        assert status == 503 and seconds < 0.5
        time.sleep(0.05)
    assert len(children(daemon.proc.pid)) == 1, "a new probe started while one was stuck"
    (child,) = children(daemon.proc.pid)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(3) == 0
    wait_until(lambda: not alive(child), 3, "the stuck probe to die with the daemon", interval=0.05)


# -- space -----------------------------------------------------------------------------------

def test_space_fails_under_the_thresholds(env):
    st = os.statvfs(env.mount)
    daemon = env.start("--min-free-space", "100")
    assert re.fullmatch(r"free space [\d.]+ % < 100 %", daemon.wait_failing("space", timeout=2))
    if st.f_files:
        daemon = env.start("--min-free-inodes", "100")
        assert re.fullmatch(r"free inodes [\d.]+ % < 100 %", daemon.wait_failing("space", timeout=2))


# -- kernel ----------------------------------------------------------------------------------

@pytest.mark.parametrize("message, pattern", KERNEL_FAILURES, ids=[m[:45] for m, _ in KERNEL_FAILURES])
def test_kernel_fails_on_every_failure_message(env, message, pattern):
    daemon = env.healthy()
    env.kernel(message)
    reason = daemon.wait_failing("kernel", timeout=2)
    assert pattern in reason and message in reason
    _, body = daemon.health()
    assert body["kernel_matches"][pattern]["count"] == 1 and body["kernel_matches"][pattern]["fatal"]


def test_node_problem_detector_misses_the_log_error_shutdown_and_we_do_not(env):
    assert NPD_XFS_SHUTDOWN.search(LOG_SHUTDOWN) is None
    assert NPD_XFS_SHUTDOWN.search(KERNEL_FAILURES[1][0])  # it does catch the old wording
    daemon = env.healthy()
    env.kernel(LOG_SHUTDOWN)
    assert "xfs-shutdown" in daemon.wait_failing("kernel", timeout=2)


def test_kernel_ignores_other_devices_user_space_and_harmless_lines(env):
    daemon = env.healthy()
    env.kernel("XFS (vda): Filesystem has been shut down due to log error (0x2).")
    env.kernel("I/O error, dev vdb, sector 192 op 0x1:(WRITE)", pri=14)  # user.info, not the kernel
    env.kernel("XFS (vdb): Unmounting Filesystem 5d3a2b1c-0000-4000-8000-000000000000",
               continuation="DEVICE=b254:16 I/O error, dev vdb")  # dictionary lines are no records
    env.kernel("XFS (vdb1): log I/O error -5")  # a partition is another device
    status, body = daemon.wait_for(lambda s, b: "(3 records read)" in b["checks"]["kernel"]["reason"], timeout=2)
    assert status == 200, body
    assert body["kernel_matches"]["xfs-log-io-error"]["fatal"] is False
    shutdown = body["kernel_matches"]["xfs-shutdown"]
    assert (shutdown["count"], shutdown["fatal"]) == (1, False) and "(vda)" in shutdown["line"]
    assert "block-io-error" not in body["kernel_matches"]
    assert "(3 records read)" in body["checks"]["kernel"]["reason"]


def test_kernel_reads_only_what_comes_after_start(env):
    env.kernel(LOG_SHUTDOWN)  # logged before the daemon started
    env.healthy()


def test_kernel_fails_when_kmsg_cannot_be_read(env):
    daemon = env.start("--kmsg", str(env.root / "no-kmsg"))
    assert "cannot open" in daemon.wait_failing("kernel", timeout=2)


def test_kmsg_overflow_is_survived():
    """EPIPE from /dev/kmsg means records were lost; reading must go on."""
    module = load_daemon_module()
    records = [b"6,1,1,-;XFS (vdb): log I/O error -5\n", BrokenPipeError(), BrokenPipeError(),
               b"6,9,9,-;" + LOG_SHUTDOWN.encode() + b"\n", OSError(9, "Bad file descriptor")]

    class Watch(module.KernelWatch):
        def read(self, fd):
            item = records.pop(0)
            if isinstance(item, Exception):
                raise item
            return item

    args = module.parse_args(["--kernel-patterns", str(PATTERNS_JSON), "--device", "/dev/vdb"])
    watch = Watch(args)
    watch.read_records(-1)
    assert watch.overflows == 2 and watch.records == 2
    assert set(watch.snapshot()) == {"xfs-log-io-error", "xfs-shutdown"}
    assert "EBADF" in watch.error


def test_the_patterns_file_agrees_with_the_host():
    from harness.kernel_log import PATTERNS
    patterns = json.loads(PATTERNS_JSON.read_text())["patterns"]
    assert {name: p["regex"] for name, p in patterns.items()} == PATTERNS
    assert not patterns["xfs-unmount"]["fatal"]
    assert all(p["fatal"] for name, p in patterns.items() if name != "xfs-unmount")


# -- docker ----------------------------------------------------------------------------------

def test_docker_ping_hang_fails_with_a_timeout_while_health_stays_fast(env):
    daemon = env.healthy()
    env.docker.mode = "hang"
    reason = daemon.wait_failing("docker", timeout=3)
    assert reason.startswith("timeout: GET /v1.41/_ping did not answer within 0.5 s")
    for _ in range(10):
        assert daemon.get("/health")[2] < 0.5
        time.sleep(0.05)


def test_docker_ping_error_and_missing_socket(env):
    daemon = env.healthy()
    env.docker.mode = "error"
    assert "answered 500: daemon is shutting down" in daemon.wait_failing("docker", timeout=2)
    daemon = env.start("--docker-socket", str(env.root / "nosuch.sock"))
    assert "cannot reach Docker" in daemon.wait_failing("docker", timeout=2)


def test_a_stopped_dockerd_is_reported_without_touching_its_socket(env):
    # Touching docker.sock would make systemd socket-activate Docker (and remount its volume).
    daemon = env.healthy()
    env.docker_pidfile.write_text("999999999\n")
    assert "dockerd is not running" in daemon.wait_failing("docker", timeout=2)
    calls_before = len(env.docker.calls)
    time.sleep(0.5)  # several check intervals
    assert len(env.docker.calls) == calls_before


def test_docker_starts_a_container(env):
    daemon = env.healthy("--container-every", "30")
    _, body = daemon.health()
    assert "container test ok" in body["checks"]["docker"]["reason"]
    assert env.docker.stages() == ["create", "start", "wait", "delete"]
    method, path, create = next(c for c in env.docker.calls if c[1].endswith("/containers/create"))
    assert create == {"Image": "amazon/amazon-ecs-agent:latest", "Cmd": ["python3", "-c", "pass"],
                      "HostConfig": {"NetworkMode": "none"}}


def test_docker_fails_when_no_container_can_start(env):
    env.docker.mode = "create_fails"
    daemon = env.start("--container-every", "30")
    _, body = daemon.wait_for(lambda s, b: s == 503 and IO_ERROR in b["checks"]["docker"]["reason"], timeout=3)
    assert body["checks"]["docker"]["reason"].startswith("ping ok; container test failed")
    assert "create: HTTP 500" in body["checks"]["docker"]["reason"]
    assert env.docker.stages() == ["create"]


# -- agent -----------------------------------------------------------------------------------

def test_agent_disconnected_or_broken_fails(env):
    daemon = env.healthy()
    env.agent.connected = False
    assert "not connected" in daemon.wait_failing("agent", timeout=2)
    env.agent.connected, env.agent.metadata_status = True, 500
    daemon.wait_for(lambda s, b: b["checks"]["agent"]["reason"] == "GET /v1/metadata answered 500", timeout=2)
    env.agent.close()
    daemon.wait_for(lambda s, b: "cannot reach the agent" in b["checks"]["agent"]["reason"], timeout=2)


# -- metrics and actions ---------------------------------------------------------------------

SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([a-z_]+)="([^"\\]*)"\})? (-?[0-9.]+(?:e-?\d+)?)')


def parse_metrics(text):
    """{(name, label value or None): value}, checking the exposition format as it goes."""
    assert text.endswith("\n")
    typed, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"gauge", "counter"}
            typed[name] = kind
            continue
        match = SAMPLE.fullmatch(line)
        assert match, f"not a Prometheus sample: {line!r}"
        name, _, label, value = match.groups()
        assert name in typed, f"{name} has no # TYPE before it"
        samples[name, label] = float(value)
    return samples


def test_metrics_are_prometheus_text(env):
    daemon = env.healthy()
    status, text, _ = daemon.get("/metrics")
    samples = parse_metrics(text)
    assert status == 200
    assert samples["unitchaos_health_healthy", None] == 1
    for check in CHECKS:
        assert samples["unitchaos_health_check_ok", check] == 1
        assert samples["unitchaos_health_check_duration_seconds", check] >= 0
    patterns = json.loads(PATTERNS_JSON.read_text())["patterns"]
    assert {label for name, label in samples if name == "unitchaos_health_kernel_matches_total"} == set(patterns)

    env.kernel(LOG_SHUTDOWN)
    daemon.wait_failing("kernel", timeout=2)
    samples = parse_metrics(daemon.get("/metrics")[1])
    assert samples["unitchaos_health_healthy", None] == 0
    assert samples["unitchaos_health_check_ok", "kernel"] == 0
    assert samples["unitchaos_health_check_ok", "volume"] == 1
    assert samples["unitchaos_health_kernel_matches_total", "xfs-shutdown"] == 1


def test_sustained_failure_stops_the_agent_once(env):
    ran = env.root / "stop-agent-ran"
    daemon = env.healthy("--stop-agent-after", "1", "--stop-agent-command", f"sh -c 'echo ran >> {ran}'")
    time.sleep(1.3)
    assert not ran.exists(), "acted while healthy"
    env.agent.connected = False
    failed_at = time.monotonic()
    daemon.wait_failing("agent", timeout=2)
    _, body = daemon.wait_for(lambda s, b: b["actions"] and b["actions"][0]["result"] == "exit 0", timeout=4)
    assert time.monotonic() - failed_at >= 1.0
    assert body["actions"] == [{"action": "stop-agent", "command": f"sh -c 'echo ran >> {ran}'",
                                "at": body["actions"][0]["at"], "result": "exit 0"}]
    time.sleep(1.2)
    assert ran.read_text() == "ran\n"
    assert len(daemon.health()[1]["actions"]) == 1


def test_stop_agent_with_touch(env):
    marker = env.root / "touched"
    env.agent.connected = False
    daemon = env.start("--stop-agent-after", "1", "--stop-agent-command", f"touch {marker}")
    daemon.wait_for(lambda s, b: marker.exists() and b["actions"], timeout=4)


def test_a_fatal_kernel_word_is_acted_on_at_once_and_put_on_the_guests_clock():
    """No waiting for the next interval: the first fatal match re-runs the kernel check
    from the reader's thread; kernel lines are placed on CLOCK_MONOTONIC by our clock mark."""
    module = load_daemon_module()
    args = module.parse_args(["--kernel-patterns", str(PATTERNS_JSON), "--device", "/dev/vdb"])
    watch = module.KernelWatch(args)
    watch.error = None
    fired = []
    watch.on_fatal = lambda: fired.append(watch())
    watch.feed("12,1,5000000,-;unitchaos-health: clock mark 105.000000")  # kmsg 5 s == monotonic 105 s
    watch.feed("6,2,6500000,-;XFS (vdb): Please unmount the filesystem and rectify the problem(s)")
    watch.feed("6,3,6600000,-;" + LOG_SHUTDOWN)
    assert len(fired) == 2 and not fired[0][0]  # once per pattern turning fatal, failing at once
    assert watch.snapshot()["xfs-shutdown"]["first_monotonic"] == 106.6
    # FAN_FS_ERROR arrives with its own monotonic time.
    watch.remember("fan-fs-error", "FAN_FS_ERROR on /var/lib/docker: EIO (1 errors)", True, 106.61)
    assert watch.snapshot()["fan-fs-error"]["first_monotonic"] == 106.61 and len(fired) == 3


def test_the_fs_error_source_says_not_supported_and_the_patterns_remain(monkeypatch):
    module = load_daemon_module()
    args = module.parse_args(["--kernel-patterns", str(PATTERNS_JSON), "--mount-point", "/"])
    watch = module.KernelWatch(args)

    class OldKernel:
        def __init__(self, path):
            pass

        def open(self):
            return False, "FAN_FS_ERROR not supported by kernel 5.10.0-1-amd64 on /: fanotify_mark EINVAL"

    monkeypatch.setattr(module.fserror, "FsErrorWatch", OldKernel)
    source = module.FsErrorSource(args, watch)
    source.run()  # returns: nothing to watch
    assert source.state["supported"] is False
    assert source.state["reason"].startswith("FAN_FS_ERROR not supported by kernel 5.10.0-1-amd64")
    assert watch.on_fatal is None and watch.patterns
