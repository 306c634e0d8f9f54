"""The incident's other failures, and Chaos Monkey's: what systemd, the kernel and the
load balancer's health check say for each. Measured on Debian bookworm (kernel 6.1,
systemd 252) under TCG."""
import time

import pytest

from harness import ALL_ACTIVE



@pytest.mark.parametrize("fs, word", [("xfs", r"XFS \(vdb\):.*shut"), ("ext4", r"EXT4-fs \(vdb\): shut down")])
def test_a_deliberate_shutdown_is_invisible_to_systemd_and_the_health_check(lab, fs, word):
    vm = lab.acquire(fs=fs)
    vm.inject("xfs-shutdown")
    vm.wait_for_kernel_message(word)
    assert vm.mount_listed()
    assert vm.unit_states() == ALL_ACTIVE
    assert vm.metadata_status() == 200
    assert not vm.can_start_container()


def test_a_full_volume_keeps_the_agent_healthy_until_space_is_freed(lab):
    vm = lab.acquire()
    vm.inject("fill-volume")
    assert vm.metadata_status() == 200
    result = vm.start_container()
    assert not result["ok"] and "no space left on device" in result["error"].lower()
    vm.heal("fill-volume")
    assert vm.can_start_container()


def test_a_frozen_docker_daemon_cannot_start_containers_but_metadata_answers(lab):
    vm = lab.acquire()
    vm.inject("hang-docker")
    assert vm.metadata_status() == 200
    assert not vm.start_container(timeout=10)["ok"]
    vm.heal("hang-docker")
    # Thawed, Docker first works off the starts it stalled (the agent's, the probe's).
    vm.wait_until_containers_start(timeout=120)


def test_a_disconnected_agent_still_answers_200(lab):
    vm = lab.acquire()
    vm.inject("agent-disconnect")
    assert vm.metadata_status() == 200
    assert vm.machine.http_get(51678, "/unitchaos/agent")[1]["connected"] is False
    vm.heal("agent-disconnect")
    assert vm.machine.http_get(51678, "/unitchaos/agent")[1]["connected"] is True


def test_a_link_down_makes_the_health_check_fail_and_heals(lab):
    vm = lab.acquire()
    vm.inject("link-down")
    assert vm.metadata_status(timeout=3) is None
    vm.heal("link-down")
    vm.wait_for_metadata(200, timeout=30)


def test_network_latency_slows_the_health_check_without_failing_it(lab):
    vm = lab.acquire()
    vm.inject("network-latency")
    started = time.monotonic()
    assert vm.metadata_status(timeout=10) == 200
    assert time.monotonic() - started >= 0.4
    vm.heal("network-latency")


def test_shutdown_terminates_the_instance(lab):
    vm = lab.acquire()
    vm.inject("shutdown")
    assert not vm.machine.running
    assert vm.metadata_status(timeout=2) is None
