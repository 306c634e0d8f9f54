"""The load balancer's threshold semantics and the auto scaling group's replacement loop,
with fake probes and a fake lab (no VM)."""
import itertools
import time

import pytest

from harness.chaos.autoscaling import AutoScalingGroup
from harness.errors import GuestTimeout, UserError
from harness.evidence.loadbalancer import PRESETS, HealthCheck, LoadBalancer, preset
from harness.waiting import wait_until


def scripted(*statuses):
    """A probe answering STATUSES in turn, then the last one forever."""
    answers = itertools.chain(statuses, itertools.repeat(statuses[-1]))
    return lambda timeout: next(answers)


def test_presets_are_awss_defaults():
    assert PRESETS["alb"] == HealthCheck(interval=30, timeout=5, healthy_threshold=5, unhealthy_threshold=2)
    assert PRESETS["elb"] == HealthCheck(interval=30, timeout=5, healthy_threshold=10, unhealthy_threshold=2)
    assert preset("alb", scale=0.1).interval == pytest.approx(3.0)
    with pytest.raises(UserError, match="unknown load balancer 'nlb'"):
        preset("nlb")


def test_a_target_becomes_healthy_only_after_the_healthy_threshold():
    lb = LoadBalancer(HealthCheck(healthy_threshold=3, unhealthy_threshold=2))
    lb.register("i-1", scripted(200))
    assert [lb.check_target("i-1") for _ in range(3)] == ["initial", "initial", "healthy"]


def test_only_a_200_counts_and_two_failures_in_a_row_make_it_unhealthy():
    lb = LoadBalancer(HealthCheck(healthy_threshold=1, unhealthy_threshold=2))
    lb.register("i-1", scripted(200, 503, 200, 301, None))
    assert [lb.check_target("i-1") for _ in range(5)] == ["healthy", "healthy", "healthy", "healthy", "unhealthy"]


def test_a_probe_that_raises_counts_as_a_failure_not_a_crash():
    def unreachable(timeout):
        raise ConnectionRefusedError("no route")
    lb = LoadBalancer(HealthCheck(unhealthy_threshold=1))
    lb.register("i-1", unreachable)
    assert lb.check_target("i-1") == "unhealthy"


def test_first_failure_and_verdict_times_are_measured_from_the_fault():
    clock = itertools.count(100.0, 1.0)
    lb = LoadBalancer(HealthCheck(healthy_threshold=1, unhealthy_threshold=2), clock=lambda: next(clock))
    lb.register("i-1", scripted(200, 200, 500, 500, 500))
    for _ in range(5):
        lb.check_target("i-1")
    assert lb.first_failure("i-1", since=100.5) == pytest.approx(1.5)     # the sample at 102
    assert lb.unhealthy_after("i-1", since=100.5) == pytest.approx(2.5)   # the second failure, at 103


def test_the_background_checker_runs_every_interval_and_stops():
    calls = []
    lb = LoadBalancer(HealthCheck(interval=0.05, timeout=0.05, healthy_threshold=2))
    lb.register("i-1", lambda timeout: calls.append(timeout) or 200)
    lb.start()
    time.sleep(0.4)
    lb.stop()
    count = len(calls)
    assert 4 <= count <= 10 and lb.state("i-1") == "healthy"
    time.sleep(0.15)
    assert len(calls) == count


class FakeInstance:
    def __init__(self, healthy: bool):
        self.healthy = healthy
        self.boot_seconds = 0.5
        self.released = False


class FakeLab:
    """Hands out fake instances; the ones listed in FAILING_LAUNCHES raise instead."""
    def __init__(self, failing_launches=()):
        self.launches = 0
        self.failing = set(failing_launches)
        self.made: list[FakeInstance] = []

    def instance(self, chain, fs):
        self.launches += 1
        if self.launches in self.failing:
            raise GuestTimeout("the guest did not boot")
        made = FakeInstance(healthy=True)
        self.made.append(made)
        return made

    def release_instance(self, instance):
        instance.released = True


def wait_for(condition, timeout=5.0):
    wait_until(condition, timeout, "the condition", interval=0.01)


def make_group(lab, grace_period=0.0, launch_attempts=3):
    lb = LoadBalancer(HealthCheck(interval=0.02, timeout=0.02, healthy_threshold=1, unhealthy_threshold=2))
    asg = AutoScalingGroup(lab, "web", 2, lb, probe_for=lambda inst: (lambda t: 200 if inst.healthy else None),
                           grace_period=grace_period, launch_attempts=launch_attempts)
    return asg, lb


def test_the_group_replaces_an_instance_the_load_balancer_marks_unhealthy():
    lab = FakeLab()
    asg, lb = make_group(lab)
    asg.start()
    lb.start()
    try:
        wait_for(lambda: len(asg.in_service()) == 2)
        broken_id = next(iter(asg.instances))
        broken = asg.instances[broken_id]
        broken.healthy = False
        wait_for(lambda: broken_id not in asg.instances and len(asg.in_service()) == 2)
    finally:
        lb.stop()
        asg.stop()
    assert broken.released
    actions = [(e["action"], e["instance"]) for e in asg.events]
    assert ("Terminate", broken_id) in actions
    assert [a for a, _ in actions].count("Launch") == 3


def test_an_instance_in_its_grace_period_is_not_replaced():
    lab = FakeLab()
    asg, lb = make_group(lab, grace_period=60)
    asg.start()
    for instance in asg.instances.values():
        instance.healthy = False
    for instance_id in list(asg.instances):
        lb.check_target(instance_id)
        lb.check_target(instance_id)
    wait_for(lambda: sum(e["action"] == "Ignored" for e in asg.events) == 2)
    asg.stop()
    assert len(asg.instances) == 2 and lab.launches == 2


def test_a_replacement_that_fails_to_boot_is_retried_then_reported():
    lab = FakeLab(failing_launches={2, 3, 4})
    asg, lb = make_group(lab, launch_attempts=3)
    asg.desired = 2
    asg.start()
    asg.stop()
    failures = [e for e in asg.events if e["action"] == "LaunchFailed"]
    assert len(failures) == 3 and "did not boot" in failures[0]["error"]
    assert asg.events[-1]["action"] == "GaveUp"
    assert len(asg.instances) == 1
