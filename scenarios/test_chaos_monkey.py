"""The story's own tool: a Chaos Monkey client asks the API to detach a volume from an
instance of the group, and the instance ends up as in the incident."""
import json
import urllib.request

from harness import faults
from harness.chaos import chaos_client
from harness.chaos.chaos_api import API_PATH, ChaosServer
from harness.chaos.groups import Group, LabBackend, start_groups
from harness.waiting import wait_until


def test_the_chaosmonkey_cli_detaches_a_volume_and_the_health_check_keeps_lying(lab, capsys):
    group = Group("ecs-cluster", 1)
    group.start(lab)
    with ChaosServer(LabBackend({"ecs-cluster": group}), username="monkey", password="banana") as server:
        assert chaos_client.main(["-endpoint", server.url, "-username", "monkey", "-password", "banana",
                                  "-group", "ecs-cluster", "-strategy", "DetachVolumes"]) == 0
        (instance_id, vm), = group.instances.items()
        assert f"triggered DetachVolumes on {instance_id}" in capsys.readouterr().out
        vm.wait_for_kernel_message(faults.XFS_SHUTDOWN)
        assert vm.mount_listed()
        assert vm.metadata_status() == 200
        assert not vm.can_start_container()

        request = urllib.request.Request(server.url + API_PATH, headers={"Authorization": "Basic bW9ua2V5OmJhbmFuYQ=="})
        (event,) = json.load(urllib.request.urlopen(request, timeout=10))
        assert event["chaosType"] == "DetachVolumes" and event["groupName"] == "ecs-cluster"


def test_shutdown_instance_leaves_the_group_without_running_instances(lab):
    group = Group("web", 1)
    group.start(lab)
    with ChaosServer(LabBackend({"web": group})) as server:
        server.trigger("web", "ShutdownInstance")
        assert group.running() == []
        assert chaos_client.main(["-endpoint", server.url, "-group", "web", "-strategy", "BurnCpu"]) == 2


def test_chaos_monkey_breaks_an_instance_and_the_auto_scaling_group_replaces_it(lab):
    groups = start_groups(lab, ["ecs:1"], chain="bindsto", fs="xfs", check="deep", grace_period=0)
    asg = groups["ecs"]
    try:
        wait_until(lambda: len(asg.in_service()) == 1, 90, "the first instance to come into service", interval=0.5)
        (broken_id,) = asg.instances
        with ChaosServer(LabBackend(groups)) as server:
            assert chaos_client.main(["-endpoint", server.url, "-group", "ecs", "-strategy", "DetachVolumes"]) == 0
        wait_until(lambda: broken_id not in asg.instances and len(asg.in_service()) == 1, 120,
                   "a healthy replacement", interval=0.5, last_seen=lambda _: str(asg.events))
        (replacement,) = asg.instances.values()
        assert replacement.metadata_status() == 200
        assert [e["action"] for e in asg.events] == ["Launch", "Terminate", "Launch"]
    finally:
        asg.lb.stop()
        asg.stop()


