"""Issue 14, item 6: findings that contradicted each other.

- burn-cpu: "can this instance start containers" has one definition and one budget, the
  deep check's container test, and the verdict runs that very code (lab/container_start.py).
- exhaust-inodes: a fault that did not take effect says so (typed), on both filesystems.
- stop-mount: the state at the verdict and what the lab's `docker run` woke afterwards are
  separate facts, in the order they happened."""
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from fake_docker import FakeDockerServer
from harness import cli, faults
from harness.cli import verdict as verdict_cli
from harness.evidence import findings
from harness.evidence.outcome import CheckVerdict, Outcome
from harness.lab import container_start
from harness.runs import experiments, verdict

GUEST_HEALTH = Path(__file__).parents[1] / "vm" / "guest" / "usr" / "local" / "sbin" / "unitchaos-health"
UNITS = ["format-ephemeral.service", "var-lib-docker.mount", "docker.service", "ecs-agent.service"]


# -- burn-cpu: one definition, one budget ---------------------------------------------

class SlowDocker(FakeDockerServer):
    """Docker whose container start takes START_SECONDS (a guest whose CPUs are burning)."""
    start_seconds = 0.0

    def respond(self, req, path, body):
        self.calls.append((req.command, path, body))
        if path.endswith("/containers/create"):
            self.reply(req, 201, {"Id": "c0ffee"})
        elif path.endswith("/start"):
            time.sleep(self.start_seconds)
            self.reply(req, 204, None)
        elif path.endswith("/wait"):
            self.reply(req, 200, {"StatusCode": 0})
        else:
            self.reply(req, 204, None)


@pytest.fixture
def deep_check(tmp_path):
    """A process whose command line is the deep check's, as systemd started it, with a
    budget of 1 s; and a Docker on the socket that line names."""
    docker = SlowDocker(tmp_path / "d.sock")
    pidfile = tmp_path / "docker.pid"
    pidfile.write_text(str(os.getpid()))  # a live "dockerd"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(GUEST_HEALTH),
                             "--docker-socket", str(tmp_path / "d.sock"), "--docker-pidfile", str(pidfile)],
                            env={**os.environ, "UNITCHAOS_HEALTH_CONTAINER_TIMEOUT": "1",
                                 "UNITCHAOS_HEALTH_CONTAINER_IMAGE": "the/task-image"})
    yield proc, docker, pidfile
    proc.kill()
    proc.wait()
    docker.close()


def probe(pid: int) -> dict | None:
    result = subprocess.run([sys.executable, "-", str(pid)], input=container_start.SCRIPT, capture_output=True,
                            text=True, timeout=60)
    return container_start.parse(result.stdout, result.stderr)


def test_the_verdict_takes_the_budget_and_image_from_the_running_deep_check(deep_check):
    proc, docker, _ = deep_check
    docker.start_seconds = 1.6  # within the old host probe's 30 s, over the deep check's 1 s
    answer = probe(proc.pid)
    assert answer["definition"] == str(GUEST_HEALTH)
    assert answer["budget"] == 1.0 and answer["image"] == "the/task-image"
    assert answer["ok"] is False and answer["error"] == "timeout at start after 1 s"
    assert [body["Image"] for _, path, body in docker.calls if path.endswith("/create")] == ["the/task-image"]


def test_a_container_start_within_the_budget_is_a_yes(deep_check):
    proc, docker, _ = deep_check
    answer = probe(proc.pid)
    assert answer["ok"] is True and answer["dockerd"] is True and answer["error"] is None


def test_no_live_dockerd_is_a_no_without_asking_any_socket(deep_check):
    proc, docker, pidfile = deep_check
    pidfile.write_text("999999999")
    answer = probe(proc.pid)
    assert answer["ok"] is False and answer["dockerd"] is False and "dockerd is not running" in answer["error"]
    assert docker.calls == []  # docker.sock would have woken Docker: nothing was asked


def test_no_deep_check_running_means_no_definition_to_take():
    assert probe(0) is None
    assert probe(os.getpid()) is None  # pytest is not the deep check


class FakeInstance:
    """Just what observe() and _after_the_verdict() ask, with docker stopped by the fault."""

    def __init__(self, containers: dict, dockerd_running: bool = True):
        self.chain = experiments.units.incident()
        self.states = dict.fromkeys(UNITS, "active")
        if not dockerd_running:
            self.states.update({"docker.service": "inactive", "ecs-agent.service": "inactive",
                                "var-lib-docker.mount": "inactive"})
        self.listed = dockerd_running
        self.containers = containers
        self.machine = self
        self.running, self.accel, self.guest_versions, self.vcpus = True, "tcg", {}, 2
        self.woken_at = None
        self.asked = []

    # Machine
    def unit_state(self, unit):
        return "plugged"

    def run(self, command, timeout=30):
        return type("R", (), {"stdout": "/dev/vdb\n" if self.listed else "/dev/vda1\n"})()

    # Instance
    def unit_states(self):
        return dict(self.states)

    def mount_listed(self):
        return self.listed

    def mount_options(self):
        return "rw" if self.listed else ""

    def check_answer(self, check):
        return (200 if self.states["ecs-agent.service"] == "active" else None), None

    def metadata_status(self):
        return 200 if self.states["ecs-agent.service"] == "active" else None

    def containers_start(self):
        self.asked.append("deep check's container test")
        return self.containers

    def workload(self):
        # The user's way: docker run through docker.sock. With dockerd stopped, systemd
        # starts docker.service for it, which pulls the mount back in.
        self.asked.append("workload")
        self.woken_at = time.time()
        self.states.update({"docker.service": "active", "var-lib-docker.mount": "active"})
        self.listed = True
        return {"via": "docker", "ok": True, "error": None}  # what a docker run said: see below

    def kernel_events(self):
        return []

    def kernel_lines(self):
        return []

    container_budget = 20.0

    def starts_held_by_a_gone_device(self):
        return None

    def end_container_start(self):
        self.asked.append("end the docker run")


class UnpluggedInstance(FakeInstance):
    """After an unplug: the workload's `docker run` wakes docker.service, whose start waits
    for the mount's, which waits for a device that is gone; it returns only when ended."""

    def __init__(self):
        super().__init__({"via": "deep check's container test", "ok": False, "dockerd": False,
                          "error": "dockerd is not running (no live pid in /var/run/docker.pid)"},
                         dockerd_running=False)
        self.ended = threading.Event()
        self.polls = 0

    def workload(self):
        self.asked.append("workload")
        assert self.ended.wait(10), "the lab waited for the workload's budget"
        return {"via": "docker", "ok": False, "error": "docker run did not finish within 30 s"}

    def starts_held_by_a_gone_device(self):
        self.polls += 1
        return None if self.polls < 2 else {"waiting": ["docker.service", "var-lib-docker.mount"],
                                            "device": "dev-vdb.device", "gives_up_after": "1min 30s"}

    def end_container_start(self):
        super().end_container_start()
        self.ended.set()


@pytest.fixture
def quiet_fs_error(monkeypatch):
    monkeypatch.setattr(experiments.fs_error, "observe", lambda instance: (_Json(), _Json()))


class _Json:
    def to_json(self):
        return {}


def test_the_verdict_says_what_the_deep_checks_own_test_says(quiet_fs_error):
    # burn-cpu: the old probe (the agent's task, 30 s) would have started it; the deep
    # check's test, with its 20 s budget, did not. The verdict is the latter.
    instance = FakeInstance({"via": "deep check's container test", "ok": False, "dockerd": True,
                             "error": "timeout at start after 20 s", "budget": 20.0, "every": 30.0})
    seen = experiments.observe(instance)
    assert instance.asked == ["deep check's container test"]
    assert seen["container_start_ok"] is False and seen["workload_ok"] is False
    assert seen["container_start"]["error"] == "timeout at start after 20 s"


def test_the_deep_check_is_waited_for_until_its_next_container_test(monkeypatch):
    answers = iter([(200, {}), (200, {}), (503, {"checks": {"docker": {"status": "fail", "reason":
                                                                       "ping ok; container test failed 0 s ago: timeout at start after 20 s"},
                                                            "io": {"status": "ok"}}})])
    instance = type("I", (), {"deep_health": lambda self, timeout=5: next(answers)})()
    monkeypatch.setattr(experiments.time, "sleep", lambda s: None)
    caught = experiments.deep_catch_up(instance, {"budget": 20.0, "every": 30.0}, time.time() - 40)
    assert caught["failed"] is True and caught["seconds"] >= 40
    assert caught["reason"] == "docker: ping ok; container test failed 0 s ago: timeout at start after 20 s"


def burn_cpu(deep_seconds, later) -> Outcome:
    out = Outcome.from_json({"experiment": "burn-cpu", "chain": "bindsto", "fs": "xfs", "fault": "burn-cpu",
                             "units": dict.fromkeys(UNITS, "active"), "mount_listed": True, "metadata_status": 200,
                             "container_start_ok": False, "health_check_lies": True,
                             "health": {"deep": {"detected": deep_seconds is not None, "seconds": deep_seconds}},
                             "seconds": {"total": 80}})
    out.deep_after_verdict = later
    return out


def test_a_deep_check_that_fails_on_its_next_container_test_agrees_with_the_verdict():
    from harness.evidence.outcome import DeepCatchUp
    out = burn_cpu(None, DeepCatchUp(failed=True, seconds=41.5, reason="docker: ...", waited=20))
    assert findings.deep_cell(out) == ("failed after 41.5 s (after the window)", "good")
    at_once = burn_cpu(None, DeepCatchUp(failed=True, seconds=82.4, reason="docker: ...", waited=0.0))
    assert findings.deep_cell(at_once) == ("failing when asked at 82.4 s (after the window)", "good")
    still = burn_cpu(None, DeepCatchUp(failed=False, waited=55))
    assert findings.deep_cell(still) == ("passes (still 55 s after the verdict)", "bad")
    again = Outcome.from_json(out.to_json())
    assert again.deep_after_verdict == out.deep_after_verdict
    out.health.stock = CheckVerdict()
    matrix = text_of(verdict_cli.matrix_table([out], None))
    assert "after the window" in matrix and "41.5" in matrix and matrix.count("missed") == 1  # the stock check's


# -- exhaust-inodes: did the fault take effect? ---------------------------------------

EXT4 = {"files_created": 65525, "stopped_by": "ENOSPC", "seconds": 31.2, "time_limit": 120,
        "inodes_total": 65536, "inodes_used": 65536, "inodes_free": 0, "bytes_free": 955252736}
XFS = {"files_created": 212000, "stopped_by": "time-limit", "seconds": 120.0, "time_limit": 120,
       "inodes_total": 524288, "inodes_used": 212067, "inodes_free": 312221, "bytes_free": 880803840}


def test_ext4_runs_out_of_inodes_with_blocks_free():
    took, said = faults.get("exhaust-inodes").took_effect(EXT4)
    assert took is True
    assert said == "inodes exhausted after 65525 files (all 65536), with 911 MiB of blocks still free"


def test_xfs_not_running_out_is_said_as_not_in_effect_not_as_a_miss():
    took, said = faults.get("exhaust-inodes").took_effect(XFS)
    assert took is False
    assert said.startswith("inodes were not exhausted after 212000 files in 120 s")


def test_blocks_running_out_first_is_not_inodes_exhausted():
    took, said = faults.get("exhaust-inodes").took_effect({**XFS, "stopped_by": "ENOSPC", "bytes_free": 0})
    assert not took and "blocks ran out first" in said


def test_the_fault_reads_its_numbers_from_the_guest():
    class Machine:
        mount_point, mount_unit = "/var/lib/docker", "var-lib-docker.mount"

        def run(self, command, timeout):
            assert "< 7:" in command and timeout == 67  # the time limit is the parameter
            return type("R", (), {"stdout": "65525 ENOSPC 31.2\n65536 65536 0 955252736\n"})()
    detail = faults.get("exhaust-inodes").inject(Machine(), seconds=7)
    assert detail == {**EXT4, "time_limit": 7}


def test_the_matrix_runs_exhaust_inodes_on_both_filesystems():
    assert experiments.filesystems("exhaust-inodes", None) == ["ext4", "xfs"]
    assert experiments.filesystems("exhaust-inodes", "xfs") == ["xfs"]
    assert experiments.filesystems("yank", None) == [None]
    assert experiments.filesystems("healthy", None) == [None]


def inodes(fs, detail) -> Outcome:
    took, said = faults.get("exhaust-inodes").took_effect(detail)
    return Outcome.from_json({
        "experiment": "exhaust-inodes", "chain": "bindsto", "fs": fs, "fault": "exhaust-inodes",
        "fault_detail": detail, "fault_effect": {"took_effect": took, "said": said},
        "units": dict.fromkeys(UNITS, "active"), "mount_listed": True, "metadata_status": 200,
        "container_start_ok": True, "health": {"stock": {"detected": False}, "deep": {"detected": False}},
        "seconds": {"total": 150}})


def text_of(table) -> str:
    console = Console(record=True, width=400, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_findings_say_the_fault_did_not_take_effect_rather_than_that_a_check_passed_or_missed():
    xfs, ext4 = inodes("xfs", XFS), inodes("ext4", EXT4)
    assert not xfs.took_effect and ext4.took_effect
    row = dict(zip(findings.columns([xfs]), findings.row(xfs)))
    assert row["deep check"] == findings.NOT_IN_EFFECT and row["stock check"] == findings.NOT_IN_EFFECT
    assert "did not take effect (inodes were not exhausted after 212000 files" in row["experiment"][0]
    assert dict(zip(findings.columns([ext4]), findings.row(ext4)))["deep check"] == ("passes", "good")
    matrix = text_of(verdict_cli.matrix_table([ext4, xfs], None))
    assert "missed" in matrix.split("exhaust-inodes (xfs)")[0]  # ext4: a real miss
    assert "not in effect" in matrix.split("exhaust-inodes (xfs)")[1] and "missed" not in matrix.split("(xfs)")[1]
    assert Outcome.from_json(xfs.to_json()).fault_effect == xfs.fault_effect


def test_the_verdict_table_says_not_in_effect():
    v = verdict.of(inodes("xfs", XFS))
    assert v.not_in_effect.startswith("inodes were not exhausted") and not v.failed
    spec = experiments.units.incident()
    text = text_of(verdict_cli.verdict_table([v], spec))
    assert "did not take effect" in text and "never noticed" not in text


# -- stop-mount: the state at the verdict, then what the lab's docker run woke --------

def stop_mount_outcome(monkeypatch) -> tuple[dict, FakeInstance]:
    instance = FakeInstance({"via": "deep check's container test", "ok": False, "dockerd": False,
                             "error": "dockerd is not running (no live pid in /var/run/docker.pid)"},
                            dockerd_running=False)
    monkeypatch.setattr(experiments.fs_error, "observe", lambda i: (_Json(), _Json()))
    t0 = time.time() - 10
    woke = [{"t": 0.3, "source": "systemd", "event": "Starting docker.service - Docker Application Container Engine..."},
            {"t": 0.1, "source": "systemd", "event": "Mounting var-lib-docker.mount - /var/lib/docker..."},
            {"t": 0.9, "source": "systemd", "event": "var-lib-docker-overlay2-95928e-merged.mount: Deactivated successfully."},
            {"t": 1.2, "source": "systemd", "event": "Started docker-5c1e7a.scope - libcontainer container 5c1e7a"}]
    monkeypatch.setattr(experiments.timeline, "systemd_since", lambda i, since: sorted(woke, key=lambda e: e["t"]))
    outcome = {"timeline": [{"t": 0.0, "source": "fault", "event": "stop-mount injected"}],
               "health": {"deep": {"seconds": 0.8}}, **experiments.observe(instance)}
    experiments._after_the_verdict(instance, outcome, t0, time.time())
    return outcome, instance


def test_the_state_at_the_verdict_is_taken_before_docker_run_wakes_docker(monkeypatch):
    outcome, instance = stop_mount_outcome(monkeypatch)
    assert instance.asked == ["deep check's container test", "workload"]
    assert outcome["units"]["docker.service"] == "inactive" and outcome["mount_listed"] is False
    assert outcome["container_start_ok"] is False
    after = outcome["after_verdict"]
    assert after["action"] == "docker run via docker.sock" and after["ok"] is True
    assert after["changed"] == {"docker.service": "inactive -> active", "var-lib-docker.mount": "inactive -> active"}
    assert after["remounted"] is True


def test_the_timeline_has_the_verdict_first_then_what_the_docker_run_woke_in_order(monkeypatch):
    outcome, _ = stop_mount_outcome(monkeypatch)
    events = [(e["source"], e["event"].split(" ")[0]) for e in sorted(outcome["timeline"], key=lambda e: e["t"])]
    assert events == [("fault", "stop-mount"), ("verdict", "docker"), ("after verdict", "Mounting"),
                      ("after verdict", "Starting")]
    verdict_line = next(e["event"] for e in outcome["timeline"] if e["source"] == "verdict")
    assert "docker inactive" in verdict_line and "mount not listed" in verdict_line
    assert "containers start: no, dockerd is not running" in verdict_line


def test_the_findings_show_both_facts_in_their_own_columns(monkeypatch):
    outcome, _ = stop_mount_outcome(monkeypatch)
    out = Outcome.from_json(experiments._jsonable({"experiment": "stop-mount", "chain": "bindsto", "fs": "xfs",
                                                   "fault": "stop-mount", "seconds": {"total": 60}, **outcome}))
    columns = findings.columns([out])
    row = dict(zip(columns, findings.row(out, findings.AFTER in columns)))
    assert row["docker"][0] == "inactive" and row["container starts"][0] == "no"
    assert row[findings.AFTER][0] == "docker run via docker.sock: docker active again, volume mounted again; a container started"
    assert findings.AFTER not in findings.columns([inodes("ext4", EXT4)])


def test_the_run_command_prints_the_after_the_verdict_column(monkeypatch):
    outcome, _ = stop_mount_outcome(monkeypatch)
    out = Outcome.from_json(experiments._jsonable({"experiment": "stop-mount", "chain": "bindsto", "fs": "xfs",
                                                   "fault": "stop-mount", "seconds": {"total": 60}, **outcome}))
    text = text_of(cli.run.findings_table([out]))
    assert "after the verdict" in text and "volume mounted again" in text


def test_a_failed_docker_run_says_why_even_without_stderr():
    from harness.lab.instance import Instance

    class Machine:
        def run(self, command, timeout):
            return type("R", (), {"ok": False, "status": 125, "stdout": "", "stderr": ""})()
    fake = type("F", (), {"machine": Machine(), "metadata_status": lambda self: None, "container_budget": 20.0})()
    assert Instance.start_container(fake) == {"via": "docker", "ok": False, "error": "exit 125: no output"}


def test_after_an_unplug_the_workload_ends_once_systemd_can_only_wait_for_the_gone_device(monkeypatch):
    instance = UnpluggedInstance()
    monkeypatch.setattr(experiments.timeline, "systemd_since", lambda i, since: [])
    began = time.monotonic()
    after = experiments.aftermath(instance, time.time(), instance.unit_states(), listed=False)
    assert time.monotonic() - began < 5
    assert instance.asked == ["workload", "end the docker run"]
    assert after["ok"] is False and after["changed"] == {} and after["remounted"] is False
    assert after["held_by"]["device"] == "dev-vdb.device"
    assert after["error"] == ("it waits: the start of docker.service, var-lib-docker.mount waits for dev-vdb.device, "
                              "which is gone (systemd gives up after 1min 30s)")
    out = Outcome.from_json(experiments._jsonable({"experiment": "unplug", "chain": "bindsto", "fs": "xfs",
                                                   "fault": "unplug", "after_verdict": after}))
    assert out.after_verdict.held_by == after["held_by"]
    assert findings.after_verdict(out) == "docker run via docker.sock: no container: it waits for dev-vdb.device, which is gone"


def test_a_workload_that_ends_by_itself_is_not_ended_and_nothing_holds_it(monkeypatch):
    outcome, instance = stop_mount_outcome(monkeypatch)
    assert "end the docker run" not in instance.asked
    assert outcome["after_verdict"]["held_by"] is None


class JobsMachine:
    """A guest's command channel with systemctl's answers in a bookworm guest after an
    unplug, once `docker run` woke Docker."""

    def __init__(self, device_state: str, jobs: str):
        self.device_state, self.jobs = device_state, jobs

    def run(self, command, timeout):
        if "list-jobs" in command:
            return 0, self.jobs, ""
        assert command.rstrip().endswith(" dev-vdb.device"), command  # only the device is asked about
        return 0, f"JobRunningTimeoutUSec=1min 30s\nActiveState={self.device_state}\nId=dev-vdb.device\n", ""


UNPLUG_JOBS = ("144 docker.service       start waiting\n180 dev-vdb.device       start running\n"
               "178 var-lib-docker.mount start waiting\n")


@pytest.mark.parametrize("device_state, jobs, held", [
    ("inactive", UNPLUG_JOBS, {"waiting": ["docker.service", "var-lib-docker.mount"], "device": "dev-vdb.device",
                               "gives_up_after": "1min 30s"}),
    ("active", UNPLUG_JOBS, None),          # the device is there: its job can still finish
    ("inactive", "180 dev-vdb.device start running\n", None),  # nothing waits for it
    ("inactive", "", None),
    ("inactive", "144 docker.service start waiting\n", None),  # waiting, but on no device's job
])
def test_start_jobs_are_held_only_by_a_running_device_job_whose_device_is_gone(device_state, jobs, held):
    from harness.lab.guest_questions import GuestQuestions
    from harness.machines.commands import GuestCommands
    questions, machine = GuestQuestions(), GuestCommands()
    machine.channel, machine.run_dir = JobsMachine(device_state, jobs), None
    questions.machine = machine
    assert questions.starts_held_by_a_gone_device() == held


def test_ctrl_c_while_the_workload_waits_does_not_wait_for_its_budget(monkeypatch):
    instance = UnpluggedInstance()

    def interrupted():
        raise KeyboardInterrupt
    instance.starts_held_by_a_gone_device = interrupted
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        experiments.aftermath(instance, time.time(), instance.unit_states(), listed=False)
    assert time.monotonic() - began < 2
    instance.ended.set()  # the guest going away ends the workload's command
