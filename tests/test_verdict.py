"""Tests for harness/runs/verdict.py: what makes `unitchaos verdict` exit 1 (a check that lies,
a must_stop unit that keeps running, an experiment that did not finish)."""
import pytest

from harness.evidence.outcome import Outcome
from harness.runs import verdict
from harness.errors import UserError


def outcome(lies=False, must_stop="inactive", stopped=True, workload_ok=False):
    return Outcome.from_json({"experiment": "yank", "chain": "bindsto", "fs": "xfs", "chain_file": "redis",
                             "must_stop": {"redis-server.service": must_stop}, "must_stop_ok": stopped,
            "checks": {"tcp:6379": {"detected": not lies, "seconds": None if lies else 1.5,
                                    "lb_seconds": None if lies else 2.5, "lies": lies}},
            "workload_ok": workload_ok, "workload": {"ok": workload_ok, "error": None if workload_ok else "MISCONF"},
            "workload_traffic": {"first_failure": 3.9}, "kernel_events": [], "kernel": "6.1", "systemd": "252"})


def test_a_truthful_check_and_a_stopped_unit_pass():
    v = verdict.of(outcome())
    assert not v.failed and v.workload_failed and v.workload_seconds == 3.9
    assert v.checks[0].noticed and v.checks[0].seconds == 1.5


def test_a_lying_check_fails_the_verdict():
    assert verdict.of(outcome(lies=True)).failed


def test_a_must_stop_unit_that_keeps_running_fails_the_verdict():
    assert verdict.of(outcome(must_stop="deactivating", stopped=False)).failed


def test_an_experiment_that_did_not_finish_fails_the_verdict():
    assert verdict.FaultVerdict("unplug", {}, False, [], True, None, None, "-", {}, error="timeout").failed


def test_the_default_is_every_volume_fault_and_a_non_fault_is_refused():
    assert verdict.check_faults([]) == verdict.VOLUME_FAULTS
    with pytest.raises(UserError, match="healthy is not a fault"):
        verdict.check_faults(["healthy"])
