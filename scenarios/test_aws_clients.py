"""The AWS tools people use drive a lab group through `serve --aws`, unchanged: the AWS CLI
force-detaches a volume and the incident follows; `chaos run` with chaosaws runs the
shipped experiment and its journal shows the deviation where the incident hides it; Auto
Scaling's own calls make the group replace an instance."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import timeouts, waiting
from harness.chaos.aws_api import AwsApi
from harness.chaos.chaos_api import ChaosServer
from harness.faults import XFS_SHUTDOWN
from harness.chaos.groups import LabBackend, start_groups
from harness.lab.instance import AGENT_PORT, HEALTH_PORT
from harness.paths import REPO

BIN = Path(sys.executable).parent


@pytest.fixture
def endpoint(lab):
    """One group of one instance whose load balancer uses the stock check (as in the
    incident), behind the Chaos Monkey API and the AWS endpoint on one port."""
    groups = start_groups(lab, ["ecs:1"], chain="bindsto", fs="xfs", check="stock")
    api = AwsApi(groups)
    server = ChaosServer(LabBackend(groups), aws=api).start()
    server.api, server.group = api, groups["ecs"]
    try:
        waiting.wait_until(lambda: len(groups["ecs"].in_service()) == 1, 60, "the instance to come into service")
        yield server
    finally:
        server.stop()
        groups["ecs"].lb.stop()
        groups["ecs"].stop()


def aws(server, *args: str) -> dict:
    env = {**os.environ, "AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "lab", "AWS_SECRET_ACCESS_KEY": "lab",
           "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run([str(BIN / "aws"), *args, "--output", "json"], env=env, capture_output=True, text=True,
                          timeout=timeouts.scaled(120))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "{}")


def target_state(server, check: str, instance_id: str) -> str:
    (group,) = aws(server, "elbv2", "describe-target-groups", "--names", f"ecs-{check}")["TargetGroups"]
    answer = aws(server, "elbv2", "describe-target-health", "--target-group-arn", group["TargetGroupArn"])
    return {t["Target"]["Id"]: t["TargetHealth"]["State"] for t in answer["TargetHealthDescriptions"]}[instance_id]


def replaced_and_serving(server, gone: str) -> float:
    started = time.monotonic()
    group = server.group
    waiting.wait_until(lambda: gone not in group.instances and len(group.in_service()) == 1, 120, f"a replacement for {gone}", last_seen=lambda _: str(group.events))
    (replacement,) = group.instances.values()
    assert replacement.metadata_status() == 200
    return time.monotonic() - started


def test_aws_cli_force_detach_yanks_the_volume_and_only_the_deep_target_group_notices(endpoint):
    (reservation,) = aws(endpoint, "ec2", "describe-instances", "--filters",
                         "Name=tag:aws:autoscaling:groupName,Values=ecs", "Name=instance-state-name,Values=running")["Reservations"]
    (instance,) = reservation["Instances"]
    (data,) = [b["Ebs"]["VolumeId"] for b in instance["BlockDeviceMappings"] if b["DeviceName"] != instance["RootDeviceName"]]
    vm = endpoint.group.instances[instance["InstanceId"]]

    detached_at = time.monotonic()
    assert aws(endpoint, "ec2", "detach-volume", "--volume-id", data, "--force")["State"] == "detaching"
    vm.wait_for_kernel_message(XFS_SHUTDOWN)
    assert vm.mount_listed() and vm.metadata_status() == 200
    waiting.wait_until(lambda: target_state(endpoint, "deep", instance["InstanceId"]) == "unhealthy", 60,
                        "the deep target group to call it unhealthy")
    deep_verdict = time.monotonic() - detached_at
    assert target_state(endpoint, "stock", instance["InstanceId"]) == "healthy"
    assert instance["InstanceId"] in endpoint.group.instances, "the stock check must keep the broken instance in service"
    print(f"detach-volume -> deep check unhealthy: {deep_verdict:.1f} s")

    # Auto Scaling's own calls take it out of service; each replacement serves 200.
    aws(endpoint, "autoscaling", "set-instance-health", "--instance-id", instance["InstanceId"],
        "--health-status", "Unhealthy")
    healed = replaced_and_serving(endpoint, instance["InstanceId"])
    print(f"set-instance-health Unhealthy -> replacement serving 200: {healed:.1f} s "
          f"(detach-volume -> replacement: {time.monotonic() - detached_at:.1f} s)")
    (second,) = endpoint.group.instances
    activity = aws(endpoint, "autoscaling", "terminate-instance-in-auto-scaling-group", "--instance-id", second,
                   "--no-should-decrement-desired-capacity")["Activity"]
    assert activity["Description"] == f"Terminating EC2 instance: {second}"
    print(f"terminate-instance-in-auto-scaling-group -> replacement serving 200: "
          f"{replaced_and_serving(endpoint, second):.1f} s")
    calls = [call["action"] for call in endpoint.api.calls]
    print("AWS CLI calls:", calls)
    assert {"DescribeInstances", "DetachVolume", "DescribeTargetGroups", "DescribeTargetHealth", "SetInstanceHealth",
            "TerminateInstanceInAutoScalingGroup"} <= set(calls)


def test_chaos_run_detach_random_volume_the_stock_probe_passes_the_deep_one_fails(endpoint, tmp_path):
    (vm,) = endpoint.group.instances.values()
    host, stock_port = vm.machine.endpoint(AGENT_PORT)
    _, deep_port = vm.machine.endpoint(HEALTH_PORT)
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint.url, "AWS_ACCESS_KEY_ID": "lab", "AWS_SECRET_ACCESS_KEY": "lab",
           "AWS_REGION": "us-east-1", "GROUP": "ecs", "STOCK_URL": f"http://{host}:{stock_port}/v1/metadata",
           "DEEP_URL": f"http://{host}:{deep_port}/health"}
    journal = tmp_path / "journal.json"
    done = subprocess.run([str(BIN / "chaos"), "--no-version-check", "run", "--journal-path", str(journal),
                           str(REPO / "examples/chaostoolkit/detach-volume.json")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeouts.scaled(300))
    run = json.loads(journal.read_text())
    # chaostoolkit-lib 1.44 ends a run whose hypothesis deviated as "completed" + deviated.
    assert run["deviated"], done.stderr[-2000:]
    before = {p["activity"]["name"]: p["tolerance_met"] for p in run["steady_states"]["before"]["probes"]}
    after = {p["activity"]["name"]: p["tolerance_met"] for p in run["steady_states"]["after"]["probes"]}
    assert before == {"stock-health-check": True, "deep-health-check": True}
    assert after == {"stock-health-check": True, "deep-health-check": False}
    (action,) = run["run"]
    assert action["status"] == "succeeded" and action["output"][0]["State"] == "detaching"
    vm.wait_for_kernel_message(XFS_SHUTDOWN)
    calls = [call["action"] for call in endpoint.api.calls]
    print("chaos run calls:", calls, [c["agent"] for c in endpoint.api.calls][:1])
    assert calls == ["DescribeInstances", "DetachVolume", "CreateTags"]
