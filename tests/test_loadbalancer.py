"""The load balancer's threshold semantics and the auto scaling group's replacement loop,
with fake probes and a fake lab (no VM)."""
import contextlib
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


def test_a_new_target_is_healthy_after_one_pass_a_recovering_one_after_the_threshold():
    lb = LoadBalancer(HealthCheck(healthy_threshold=3, unhealthy_threshold=2))
    lb.register("i-1", scripted(200, 500, 500, 200))
    assert [lb.check_target("i-1") for _ in range(6)] == [
        "healthy", "healthy", "unhealthy", "unhealthy", "unhealthy", "healthy"]


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


class FakeMachine:
    def __init__(self):
        self.running = True


class FakeInstance:
    def __init__(self, healthy: bool):
        self.healthy = healthy
        self.boot_seconds = 0.5
        self.released = False
        self.machine = FakeMachine()


class FakeLab:
    """Hands out fake instances; the ones listed in FAILING_LAUNCHES raise instead."""
    def __init__(self, failing_launches=()):
        self.launches = 0
        self.failing = set(failing_launches)
        self.made: list[FakeInstance] = []
        self.keep = False

    def acquire(self, chain, fs):
        self.launches += 1
        if self.launches in self.failing:
            raise GuestTimeout("the guest did not boot")
        made = FakeInstance(healthy=True)
        self.made.append(made)
        return made

    def release(self, instance, keep=None):
        instance.released = True
        instance.machine.running = False


def wait_for(condition, timeout=5.0):
    wait_until(condition, timeout, "the condition", interval=0.01)


def make_group(lab, grace_period=0.0, launch_attempts=3, desired=2, **options):
    lb = LoadBalancer(HealthCheck(interval=0.02, timeout=0.02, healthy_threshold=1, unhealthy_threshold=2))
    asg = AutoScalingGroup(lab, "web", desired, lb, probe_for=lambda inst: (lambda t: 200 if inst.healthy else None),
                           grace_period=grace_period, launch_attempts=launch_attempts, **options)
    return asg, lb


@contextlib.contextmanager
def running(asg, lb):
    asg.start()
    lb.start()
    try:
        yield asg
    finally:
        lb.stop()
        asg.stop()


def actions(asg):
    return [(e["action"], e["instance"]) for e in asg.events]


def test_the_group_replaces_an_instance_the_load_balancer_marks_unhealthy():
    lab = FakeLab()
    asg, lb = make_group(lab)
    with running(asg, lb):
        wait_for(lambda: len(asg.in_service()) == 2)
        broken_id = next(iter(asg.instances))
        broken = asg.instances[broken_id]
        broken.healthy = False
        wait_for(lambda: broken_id not in asg.instances and len(asg.in_service()) == 2)
    assert broken.released
    assert ("Terminate", broken_id) in actions(asg)
    assert [a for a, _ in actions(asg)].count("Launch") == 3


def test_an_instance_whose_vm_is_gone_is_replaced_at_once_even_in_its_grace_period():
    lab = FakeLab()
    asg, lb = make_group(lab, grace_period=600)
    with running(asg, lb):
        gone_id = next(iter(asg.instances))
        asg.instances[gone_id].machine.running = False   # ShutdownInstance: QEMU quit
        wait_for(lambda: gone_id not in asg.instances and len(asg.instances) == 2)
    terminate = next(e for e in asg.events if e["action"] == "Terminate")
    assert terminate["instance"] == gone_id and "terminated" in terminate["reason"]
    assert [a for a, _ in actions(asg)] == ["Launch", "Launch", "Terminate", "Launch"]


def test_a_stopped_instance_is_replaced_at_once():
    lab = FakeLab()
    asg, lb = make_group(lab, grace_period=600, desired=1)
    with running(asg, lb):
        (stopped_id,) = asg.instances
        asg.mark_stopped(stopped_id, True)
        assert stopped_id not in asg.running()
        wait_for(lambda: stopped_id not in asg.instances and len(asg.instances) == 1)
    assert "stopped" in next(e for e in asg.events if e["action"] == "Terminate")["reason"]


def test_an_instance_unhealthy_through_its_grace_period_is_replaced_when_it_ends():
    lab = FakeLab()
    asg, lb = make_group(lab, grace_period=0.5, desired=1)
    with running(asg, lb):
        (sick_id,) = asg.instances
        asg.instances[sick_id].healthy = False
        wait_for(lambda: lb.state(sick_id) == "unhealthy")
        time.sleep(0.1)
        assert sick_id in asg.instances, "replaced inside its grace period"
        wait_for(lambda: sick_id not in asg.instances and len(asg.instances) == 1)
        terminated_at = next(e["time"] for e in asg.events if e["action"] == "Terminate")
    assert terminated_at - asg.events[0]["time"] >= 0.5
    assert [a for a, _ in actions(asg)] == ["Launch", "InGracePeriod", "Terminate", "Launch"]


def test_an_instance_that_recovers_within_its_grace_period_stays():
    lab = FakeLab()
    asg, lb = make_group(lab, grace_period=0.6, desired=1)
    with running(asg, lb):
        (instance_id,) = asg.instances
        asg.instances[instance_id].healthy = False
        wait_for(lambda: lb.state(instance_id) == "unhealthy")
        asg.instances[instance_id].healthy = True
        # Back in service needs healthy_threshold passes; here one.
        wait_for(lambda: lb.state(instance_id) == "healthy")
        time.sleep(0.8)
        assert list(asg.instances) == [instance_id]


def test_set_instance_health_unhealthy_replaces_it_respecting_the_grace_period_unless_told():
    lab = FakeLab()
    asg, lb = make_group(lab, grace_period=600, desired=1)
    with running(asg, lb):
        (first,) = asg.instances
        asg.set_instance_health(first, "Unhealthy")
        time.sleep(0.2)
        assert list(asg.instances) == [first]
        asg.set_instance_health(first, "Unhealthy", respect_grace=False)
        wait_for(lambda: first not in asg.instances and len(asg.instances) == 1)
    assert "SetInstanceHealth" in next(e for e in asg.events if e["action"] == "Terminate")["reason"]


def test_terminate_in_the_group_replaces_unless_the_desired_capacity_is_decremented():
    lab = FakeLab()
    asg, lb = make_group(lab, desired=2)
    with running(asg, lb):
        first, second = asg.instances
        asg.terminate_instance(first, decrement_desired=False, reason="TerminateInstanceInAutoScalingGroup")
        wait_for(lambda: len(asg.instances) == 2 and first not in asg.instances)
        asg.terminate_instance(second, decrement_desired=True, reason="TerminateInstanceInAutoScalingGroup")
        time.sleep(0.2)
        assert len(asg.instances) == 1 and asg.desired == 1
        with pytest.raises(UserError, match="not in group web"):
            asg.terminate_instance("i-nope", decrement_desired=False, reason="")


def test_set_desired_scales_out_and_in_within_the_bounds():
    lab = FakeLab()
    asg, lb = make_group(lab, desired=1, max_size=3)
    with running(asg, lb):
        asg.set_desired(3)
        wait_for(lambda: len(asg.instances) == 3)
        newest = max(asg.launched_at, key=asg.launched_at.get)
        asg.set_desired(2)
        wait_for(lambda: len(asg.instances) == 2)
        assert newest not in asg.instances
        with pytest.raises(UserError, match="outside 0..3"):
            asg.set_desired(4)


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


def test_after_giving_up_the_group_tries_again_after_its_backoff():
    lab = FakeLab(failing_launches={2, 3})
    asg, lb = make_group(lab, launch_attempts=2, launch_backoff=0.3)
    with running(asg, lb):
        wait_for(lambda: len(asg.instances) == 2)
    assert [a for a, _ in actions(asg)] == ["Launch", "LaunchFailed", "LaunchFailed", "GaveUp", "Launch"]
