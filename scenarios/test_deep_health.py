"""The deep health check the incident called for, against the stock one, and the self-
healing loop around it: load balancer verdict, auto scaling replacement."""

import pytest

from harness.runs import experiments
from harness.chaos.autoscaling import AutoScalingGroup
from harness.evidence.health_watch import EXPERIMENT_CHECK, probe
from harness.evidence.loadbalancer import LoadBalancer
from harness.lab.instance import HEALTH_PORT
from harness.waiting import wait_until


def test_yank_goes_unnoticed_by_the_stock_check_and_the_deep_check_fails_within_5_s(lab):
    outcome = experiments.run(lab, "yank", chain="bindsto", fs="xfs")
    stock, deep = outcome.health.stock, outcome.health.deep
    assert not stock.detected and stock.seconds is None
    assert deep.detected and deep.seconds <= 5.0
    assert deep.lb_seconds is not None


@pytest.mark.parametrize("fault, fs", [("xfs-shutdown", "xfs"), ("xfs-shutdown", "ext4"), ("yank", "ext4"),
                                       ("fill-volume", "xfs"), ("hang-docker", "xfs"),
                                       ("agent-disconnect", "xfs"), ("exhaust-inodes", "ext4")])
def test_the_deep_check_notices_what_the_stock_check_misses(lab, fault, fs):
    outcome = experiments.run(lab, fault, fs=fs)
    assert outcome.metadata_status == 200
    assert not outcome.health.stock.detected
    assert outcome.health.deep.detected


def test_the_deep_check_explains_why(lab):
    vm = lab.acquire()
    vm.inject("yank")
    vm.wait_for_kernel_message(r"XFS \(vdb\): Filesystem has been shut down")
    status, body = wait_until(vm.deep_health, 15, "the deep check to see the kernel's word", interval=0.5,
                              done=lambda answer: "xfs-shutdown" in answer[1]["kernel_matches"])
    assert status == 503 and body["healthy"] is False
    checks = body["checks"]
    assert checks["kernel"]["status"] == "fail"
    assert checks["io"]["status"] == "fail" and "EIO" in checks["io"]["reason"]
    assert checks["volume"]["status"] == "ok"  # still mounted, as systemd believes


def test_the_group_replaces_the_broken_instance_and_the_replacement_serves_200(lab):
    lb = LoadBalancer(EXPERIMENT_CHECK)
    group = AutoScalingGroup(lab, "ecs", 1, lb, probe_for=lambda vm: probe(vm, HEALTH_PORT, "/health"),
                             grace_period=0)
    group.start()
    lb.start()
    try:
        wait_until(lambda: group.in_service(), 60, "the first instance to come into service", interval=0.5)
        (broken_id, broken), = group.instances.items()
        broken.inject("yank")
        wait_until(lambda: broken_id not in group.instances and group.in_service(), 150,
                   "a healthy replacement", interval=0.5, last_seen=lambda _: str(group.events))
        (replacement,) = group.instances.values()
        assert replacement.metadata_status() == 200
        assert replacement.machine.http_get(HEALTH_PORT, "/health")[0] == 200
        assert [e["action"] for e in group.events] == ["Launch", "Terminate", "Launch"]
    finally:
        lb.stop()
        group.stop()
