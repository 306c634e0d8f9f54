"""The group heals as Chaos Monkey assumes (issue 15): an instance it shuts down is
replaced, an instance unhealthy through its grace period is replaced when the period ends,
and every SimianArmy strategy can hit the same instance twice."""
import json
import time
import urllib.error
import urllib.request

from harness import faults, timeouts, waiting
from harness.chaos.chaos_api import API_PATH, STRATEGIES, ChaosServer
from harness.chaos.groups import Group, LabBackend, start_groups


def chaos(server, group: str, strategy: str) -> int:
    body = json.dumps({"eventType": "CHAOS_TERMINATION", "groupType": "ASG", "groupName": group,
                       "chaosType": strategy}).encode()
    request = urllib.request.Request(server.url + API_PATH, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeouts.scaled(180)) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read().decode()}"


def test_shutdown_instance_in_a_group_of_two_is_replaced_within_restore_plus_two_intervals(lab):
    groups = start_groups(lab, ["g:2"], chain="bindsto", fs="xfs", check="stock")
    asg = groups["g"]
    interval = asg.lb.check.interval
    try:
        waiting.wait_until(lambda: len(asg.in_service()) == 2, 60, "both instances to come into service")
        with ChaosServer(LabBackend(groups)) as server:
            assert chaos(server, "g", "ShutdownInstance") == 200
            shut_at = time.monotonic()
            (event,) = server.events()
        gone = event["instanceId"]
        waiting.wait_until(lambda: gone not in asg.instances and len(asg.in_service()) == 2, 120, "a replacement in service", last_seen=lambda _: str(asg.events))
        healed = time.monotonic() - shut_at
        life = [(e["action"], e["instance"]) for e in asg.events if e["action"] in ("Launch", "Terminate")]
        assert [action for action, _ in life] == ["Launch", "Launch", "Terminate", "Launch"]
        assert life[2] == ("Terminate", gone)
        replacement = asg.instances[life[3][1]]
        assert replacement.metadata_status() == 200
        print(f"ShutdownInstance -> replacement in service: {healed:.1f} s "
              f"(restore {replacement.boot_seconds:.1f} s, interval {interval:.1f} s)")
        assert healed <= replacement.boot_seconds + timeouts.scaled(2 * interval) + 1.0
    finally:
        asg.lb.stop()
        asg.stop()


def test_an_instance_unhealthy_through_its_grace_period_is_replaced_when_it_ends(lab):
    grace = 30.0
    groups = start_groups(lab, ["g:1"], chain="bindsto", fs="xfs", check="stock", grace_period=grace)
    asg = groups["g"]
    try:
        (sick_id,) = asg.instances
        with ChaosServer(LabBackend(groups)) as server:
            assert chaos(server, "g", "BlockAllNetworkTraffic") == 200
        waiting.wait_until(lambda: asg.lb.state(sick_id) == "unhealthy", 20, "the load balancer to notice the link-down")
        assert time.time() - asg.launched_at[sick_id] < grace, "noticed too late to test the grace period"
        waiting.wait_until(lambda: sick_id not in asg.instances and len(asg.in_service()) == 1, grace + 90, "the grace period to end and a replacement to serve", last_seen=lambda _: str(asg.events))
        actions = [e["action"] for e in asg.events]
        assert actions == ["Launch", "InGracePeriod", "Terminate", "Launch"]
        terminated = asg.events[2]["time"] - asg.events[0]["time"]
        print(f"unhealthy at once, terminated {terminated:.1f} s after launch (grace {grace:.0f} s)")
        assert grace <= terminated <= grace + timeouts.scaled(2 * asg.lb.check.interval) + 1.0
        (replacement,) = asg.instances.values()
        assert replacement.metadata_status() == 200
    finally:
        asg.lb.stop()
        asg.stop()


# Healable strategies first; DetachVolumes cannot be undone, ShutdownInstance ends the instance.
ORDER = [s for s in STRATEGIES if s not in ("DetachVolumes", "ShutdownInstance")] + ["DetachVolumes", "ShutdownInstance"]


def test_every_strategy_twice_in_a_row_on_one_instance_answers_200_twice(lab):
    group = Group("g", 1)
    group.start(lab)
    (instance_id, vm), = group.instances.items()
    backend = LabBackend({"g": group})
    with ChaosServer(backend) as server:
        for strategy in ORDER[:-1]:
            assert [chaos(server, "g", strategy), chaos(server, "g", strategy)] == [200, 200], strategy
            second = vm.last_fault["detail"]
            if strategy == "BurnCpu":
                burners = vm.units_matching("chaos-burncpu-*")
                assert len(burners) == vm.cpus(), "a second BurnCpu must not add burners"
            if strategy in ("BurnCpu", "BurnIo", "KillProcesses", "FailDns", "FailEc2", "DetachVolumes"):
                assert faults.ALREADY in str(second), f"{strategy}: the second did not say it was in effect"
            if strategy != "DetachVolumes":
                vm.heal(backend.strategies[strategy])
        assert chaos(server, "g", "ShutdownInstance") == 200
        # The instance is gone, so the API has nothing to pick: ask the backend as the API would.
        assert faults.ALREADY in str(backend.apply("g", instance_id, "ShutdownInstance"))
        assert len(server.events()) == 2 * len(ORDER) - 1
