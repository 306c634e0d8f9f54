"""The interactive lab end to end, each step its own `unitchaos` process, as a person
would type them: up, status, inject yank, status (the deep check fails, the stock one
still says 200), down, and nothing of the instance left."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.runs import interactive
from harness.lab.lab import qemu_of, sweep_stale_runs
from harness.paths import cache_dir
from harness.errors import GuestTimeout
from harness.waiting import wait_until

pytestmark = pytest.mark.vm


def unitchaos(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ})


def status_once_the_deep_check_fails(name: str, timeout: float = 90) -> tuple[dict, list]:
    """`unitchaos status` once the deep check answers 503 (or at the deadline), and the
    deep check's answers until then. A 200 means its probes have not run since the fault;
    no answer (None) is not a verdict either: in one CI run the first status after a yank
    got none within 5 s while the guest was busy with the dead disk."""
    answers, seen = [], {}

    def status() -> dict:
        seen.update(json.loads(unitchaos("status", "--name", name, "--json").stdout))
        answers.append((seen["deep"]["status"], seen["deep"]["ms"], seen["deep"]["failing"]))
        return seen
    try:
        wait_until(status, timeout, "the deep check to answer 503", done=lambda now: now["deep"]["status"] == 503,
                   interval=2)
    except GuestTimeout:
        pass  # the caller asserts on what was seen last
    return dict(seen), answers


def test_up_status_inject_yank_status_down(lab):  # `lab`: the fixture's QEMU check (and the sweep)
    name = f"scenario-{os.getpid()}"
    started = unitchaos("up", "--name", name)
    assert started.returncode == 0, started.stderr
    state = interactive.load(name)
    run_dir = Path(state["run_dir"])
    try:
        assert "ssh -i " in started.stdout and f"unitchaos status --name {name}" in started.stdout
        # The CLI that started it has exited; QEMU has not, and the sweep leaves it alone.
        assert qemu_of(run_dir) == state["pid"]
        sweep_stale_runs()
        assert qemu_of(run_dir) == state["pid"]

        before = json.loads(unitchaos("status", "--name", name, "--json").stdout)
        assert set(before["units"].values()) == {"active"}
        assert before["stock"]["status"] == 200 and before["deep"]["status"] == 200

        ran = unitchaos("shell", "--name", name, "systemctl", "is-active", "ecs-agent.service", timeout=120)
        assert ran.returncode == 0 and ran.stdout.strip() == "active", ran.stderr

        injected = unitchaos("inject", "yank", "--name", name, "--json")
        assert injected.returncode == 0, injected.stderr
        assert "Filesystem has been shut down" in json.loads(injected.stdout)["kernel_word"]

        after, answers = status_once_the_deep_check_fails(name)
        assert after["deep"]["status"] == 503, f"the deep check's answers since the yank: {answers}"
        assert "io" in after["deep"]["failing"]
        assert after["stock"]["status"] == 200  # the incident: the stock check still says healthy
        assert after["mount_listed"] and after["faults"] == ["yank"]
    finally:
        stopped = unitchaos("down", "--name", name)
    assert stopped.returncode == 0, stopped.stderr
    assert qemu_of(run_dir) is None and not run_dir.exists()
    leftover = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout
    assert leftover == ""
    assert name not in interactive.names()


pytest_plugins = ["pytester"]
CACHE = cache_dir()  # Now, before pytester moves HOME.

FAILING_TEST = '''
def test_the_stock_check_notices_a_yank(lab):
    vm = lab.acquire()
    vm.inject("yank")
    vm.wait_until_settled()
    assert vm.metadata_status() != 200, "the stock check still says 200"
'''


def test_keep_on_failure_leaves_the_failed_tests_vm_up_and_says_how_to_reach_it(lab, pytester, monkeypatch):
    # pytester gives the inner run a HOME of its own: keep it on the real cache (image,
    # snapshots), and with short socket paths.
    monkeypatch.setenv("UNITCHAOS_CACHE", str(CACHE))
    pytester.makepyfile(test_kept=FAILING_TEST)
    result = pytester.runpytest_subprocess("--keep-on-failure", "-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(failed=1)
    name = "test_the_stock_check_notices_a_yank"
    output = result.stdout.str()
    assert f"unitchaos status --name {name}" in output and f"unitchaos down --name {name}" in output
    state = interactive.load(name)
    run_dir = Path(state["run_dir"])
    try:
        assert qemu_of(run_dir) == state["pid"]  # pytest has exited; the VM has not
        seen, answers = status_once_the_deep_check_fails(name)
        assert seen["deep"]["status"] == 503, f"the deep check's answers: {answers}"
        assert seen["faults"] == ["yank"] and seen["stock"]["status"] == 200
        assert Path(state["artifacts"], "console.log").exists()
    finally:
        assert unitchaos("down", "--name", name).returncode == 0
        shutil.rmtree(state["artifacts"], ignore_errors=True)  # kept for a person, not for this test
    assert qemu_of(run_dir) is None and not run_dir.exists()
