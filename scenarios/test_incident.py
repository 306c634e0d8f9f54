"""The incident, one experiment at a time: break the volume, wait for the kernel's word,
then assert what systemd, the mount table and the load balancer's health check say."""
import pytest

ALL_ACTIVE = {"format-ephemeral.service": "active", "var-lib-docker.mount": "active",
              "docker.service": "active", "ecs-agent.service": "active"}


def test_healthy_chain_serves_metadata_and_starts_containers(lab):
    vm = lab.instance(chain="bindsto", fs="xfs")
    assert vm.unit_states() == ALL_ACTIVE
    assert vm.host.mount_point("/var/lib/docker").filesystem == "xfs"
    assert vm.metadata_status() == 200
    assert vm.can_start_container()


def test_requires_does_not_stop_the_agent_when_the_volume_is_unmounted(lab):
    vm = lab.instance(chain="requires")
    vm.inject("umount")
    vm.wait_until_settled()
    assert not vm.mount_listed()
    assert vm.host.service("ecs-agent").is_running
    assert vm.metadata_status() == 200


@pytest.mark.parametrize("fault", ["umount", "stop-mount"])
def test_bindsto_stops_the_agent_when_the_volume_goes(lab, fault):
    vm = lab.instance(chain="bindsto")
    vm.inject(fault)
    vm.wait_until_settled()
    assert not vm.mount_listed()
    assert vm.unit_states()["ecs-agent.service"] == "inactive"
    assert vm.metadata_status() is None


def test_yank_leaves_xfs_shut_down_but_mounted_and_the_agent_answering_200(lab):
    vm = lab.instance(chain="bindsto", fs="xfs")
    vm.inject("yank")
    vm.wait_for_kernel_message(r"XFS \(vdb\): Filesystem has been shut down")
    vm.wait_until_settled()
    assert vm.mount_listed()
    assert vm.unit_states() == ALL_ACTIVE
    assert "Input/output error" in vm.machine.fail("stat /var/lib/docker/")
    assert vm.metadata_status() == 200
    assert not vm.can_start_container()


def test_unplug_on_xfs_makes_systemd_stop_the_chain_and_unmount(lab):
    vm = lab.instance(chain="bindsto", fs="xfs")
    vm.inject("unplug")
    vm.wait_until_settled()
    assert vm.machine.unit_state("dev-vdb.device") == "inactive"
    assert not vm.mount_listed()
    states = vm.unit_states()
    assert states["docker.service"] == states["ecs-agent.service"] == "inactive"
    assert vm.metadata_status() is None
