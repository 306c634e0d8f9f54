"""serve --aws without a VM: the AWS query API over auto scaling groups of fake instances,
driven by boto3 and the AWS CLI (the real clients), SigV4, and bad input."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from harness.chaos.autoscaling import AutoScalingGroup
from harness.chaos.aws_api import AwsApi, DATA_DEVICE, ROOT_DEVICE, volume_id
from harness.chaos.chaos_api import ChaosServer
from harness.evidence.loadbalancer import HealthCheck, LoadBalancer

from test_loadbalancer import FakeInstance, FakeLab, wait_for

pytestmark = pytest.mark.timeout(120)


class Monitor:
    def __init__(self):
        self.commands = []

    def command(self, name, **args):
        self.commands.append(name)


class LabInstance(FakeInstance):
    """A fake instance that records faults and monitor commands."""
    def __init__(self, healthy=True):
        super().__init__(healthy)
        self.faults = []
        self.machine.monitor = Monitor()

    def inject(self, name, **params):
        self.faults.append(name)
        if name in ("yank", "unplug"):
            self.healthy = self.healthy and name == "unplug"   # the deep check fails after a yank
        return {"fault": name}


class Lab(FakeLab):
    def acquire(self, chain, fs):
        made = LabInstance()
        self.made.append(made)
        return made


class NoChaos:
    def groups(self):
        return {}


@pytest.fixture
def lab_groups():
    lab = Lab()
    groups = {}
    for name, size in (("web", 2), ("db", 1)):
        check = HealthCheck(interval=0.02, timeout=0.02, healthy_threshold=1, unhealthy_threshold=2)
        lb, watcher = LoadBalancer(check), LoadBalancer(check)
        groups[name] = AutoScalingGroup(lab, name, size, lb, lambda i: (lambda t: 200), grace_period=0,
                                        max_size=3, check_name="stock",
                                        watchers={"deep": (watcher, lambda i: (lambda t: 200 if i.healthy else 503))})
        groups[name].start()
        lb.start(), watcher.start()
    yield groups
    for group in groups.values():
        group.lb.stop()
        group.stop()


@pytest.fixture
def endpoint(lab_groups):
    api = AwsApi(lab_groups)
    with ChaosServer(NoChaos(), aws=api) as server:
        server.api = api
        yield server


@pytest.fixture
def signed_endpoint(lab_groups):
    api = AwsApi(lab_groups, credentials=("monkey", "banana"))
    with ChaosServer(NoChaos(), aws=api) as server:
        yield server


def client(server, service, key="AKIDEXAMPLE", secret="secret"):
    return boto3.client(service, endpoint_url=server.url, region_name="eu-west-1", aws_access_key_id=key,
                        aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))


def error_of(call, *args, **kwargs):
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call(*args, **kwargs)
    return caught.value.response["Error"]["Code"], caught.value.response["Error"]["Message"]


def test_describe_instances_with_the_filters_chaosaws_and_the_cli_send(endpoint, lab_groups):
    ec2 = client(endpoint, "ec2")
    answer = ec2.describe_instances(Filters=[{"Name": "tag:aws:autoscaling:groupName", "Values": ["web"]},
                                             {"Name": "instance-state-name", "Values": ["running"]}])
    instances = [i for r in answer["Reservations"] for i in r["Instances"]]
    assert sorted(i["InstanceId"] for i in instances) == sorted(lab_groups["web"].instances)
    first = instances[0]
    assert first["InstanceId"].startswith("i-") and len(first["InstanceId"]) == 19
    assert first["State"] == {"Code": 16, "Name": "running"}
    assert {"Key": "aws:autoscaling:groupName", "Value": "web"} in first["Tags"]
    assert [(b["DeviceName"], b["Ebs"]["VolumeId"]) for b in first["BlockDeviceMappings"]] == [
        (ROOT_DEVICE, volume_id(first["InstanceId"], ROOT_DEVICE)), (DATA_DEVICE, volume_id(first["InstanceId"], DATA_DEVICE))]
    assert first["Placement"]["AvailabilityZone"] == "eu-west-1a"
    by_id = ec2.describe_instances(InstanceIds=[first["InstanceId"]])["Reservations"]
    assert len(by_id) == 1
    wildcard = ec2.describe_instances(Filters=[{"Name": "tag:aws:autoscaling:groupName", "Values": ["d*"]}])
    assert len(wildcard["Reservations"]) == 1
    assert error_of(ec2.describe_instances, InstanceIds=["i-00000000000000000"])[0] == "InvalidInstanceID.NotFound"
    assert error_of(ec2.describe_instances, Filters=[{"Name": "flavour", "Values": ["x"]}]) == (
        "InvalidParameterValue", "The filter 'flavour' is invalid")


def test_detach_volume_force_yanks_plain_unplugs_and_the_root_volume_stays(endpoint, lab_groups):
    ec2 = client(endpoint, "ec2")
    (one, two) = lab_groups["web"].instances
    data = volume_id(one, DATA_DEVICE)
    answer = ec2.detach_volume(VolumeId=data, Force=True)
    assert answer["State"] == "detaching" and answer["InstanceId"] == one and answer["Device"] == DATA_DEVICE
    assert lab_groups["web"].instances[one].faults == ["yank"]
    (volume,) = ec2.describe_volumes(VolumeIds=[data])["Volumes"]
    assert volume["State"] == "available" and volume["Attachments"] == []
    assert error_of(ec2.detach_volume, VolumeId=data) == ("IncorrectState", f"Volume '{data}' is in the 'available' state.")
    ec2.detach_volume(VolumeId=volume_id(two, DATA_DEVICE), InstanceId=two, Device=DATA_DEVICE)
    assert lab_groups["web"].instances[two].faults == ["unplug"]
    root = volume_id(one, ROOT_DEVICE)
    assert error_of(ec2.detach_volume, VolumeId=root, Force=True) == (
        "IncorrectState", f"Unable to detach root volume '{root}' from instance '{one}'")
    assert error_of(ec2.detach_volume, VolumeId="vol-0123456789abcdef0")[0] == "InvalidVolume.NotFound"
    assert error_of(ec2.attach_volume, VolumeId=data, InstanceId=one, Device=DATA_DEVICE)[0] == "UnsupportedOperation"
    in_use = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [one]}])["Volumes"]
    assert [v["VolumeId"] for v in in_use] == [root]


def test_chaosaws_tags_what_it_detached(endpoint, lab_groups):
    ec2 = client(endpoint, "ec2")
    vid = volume_id(next(iter(lab_groups["db"].instances)), DATA_DEVICE)
    ec2.create_tags(Resources=[vid], Tags=[{"Key": "ChaosToolkitDetached", "Value": "DeviceName=/dev/xvdb"}])
    (volume,) = ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["ChaosToolkitDetached"]}])["Volumes"]
    assert volume["VolumeId"] == vid
    assert error_of(ec2.create_tags, Resources=["vol-0000"], Tags=[{"Key": "a", "Value": "b"}])[0] == "InvalidVolume.NotFound"


def test_terminate_stop_and_reboot_act_and_the_group_replaces(endpoint, lab_groups):
    ec2 = client(endpoint, "ec2")
    web = lab_groups["web"]
    (one, two) = web.instances
    machine_two = web.instances[two].machine
    answer = ec2.terminate_instances(InstanceIds=[one])["TerminatingInstances"][0]
    assert answer["PreviousState"]["Name"] == "running" and answer["CurrentState"]["Name"] == "shutting-down"
    ec2.reboot_instances(InstanceIds=[two])
    assert machine_two.monitor.commands == ["system_reset"]
    stopped = ec2.stop_instances(InstanceIds=[two])["StoppingInstances"][0]
    assert stopped["CurrentState"]["Name"] == "stopping" and "stop" in machine_two.monitor.commands
    wait_for(lambda: len(web.instances) == 2 and not {one, two} & set(web.instances))
    states = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert states[one] == states[two] == "terminated"
    assert error_of(ec2.stop_instances, InstanceIds=[one])[0] == "IncorrectState"
    assert error_of(ec2.start_instances, InstanceIds=[one])[0] == "IncorrectState"
    statuses = ec2.describe_instance_status()["InstanceStatuses"]
    assert len(statuses) == 3 and all(s["InstanceStatus"]["Status"] == "ok" for s in statuses)
    everything = ec2.describe_instance_status(IncludeAllInstances=True)["InstanceStatuses"]
    assert {s["InstanceState"]["Name"] for s in everything} == {"running", "terminated"}


def test_auto_scaling_describe_set_health_terminate_and_desired(endpoint, lab_groups):
    asg = client(endpoint, "autoscaling")
    (web,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])["AutoScalingGroups"]
    assert web["DesiredCapacity"] == 2 and web["MaxSize"] == 3 and web["HealthCheckType"] == "ELB"
    assert {i["InstanceId"] for i in web["Instances"]} == set(lab_groups["web"].instances)
    assert all(i["LifecycleState"] == "InService" and i["HealthStatus"] == "Healthy" for i in web["Instances"])
    one, two = lab_groups["web"].instances
    asg.set_instance_health(InstanceId=one, HealthStatus="Unhealthy", ShouldRespectGracePeriod=False)
    wait_for(lambda: one not in lab_groups["web"].instances and len(lab_groups["web"].instances) == 2)
    activity = asg.terminate_instance_in_auto_scaling_group(InstanceId=two, ShouldDecrementDesiredCapacity=False)
    assert activity["Activity"]["Description"] == f"Terminating EC2 instance: {two}"
    wait_for(lambda: two not in lab_groups["web"].instances and len(lab_groups["web"].instances) == 2)
    listed = asg.describe_auto_scaling_instances()["AutoScalingInstances"]
    assert {i["AutoScalingGroupName"] for i in listed} == {"web", "db"} and len(listed) == 3
    asg.set_desired_capacity(AutoScalingGroupName="db", DesiredCapacity=2)
    wait_for(lambda: len(lab_groups["db"].instances) == 2)
    assert error_of(asg.set_desired_capacity, AutoScalingGroupName="db", DesiredCapacity=9) == (
        "ValidationError", "New SetDesiredCapacity value 9 is above max value 3 for the AutoScalingGroup.")
    assert error_of(asg.set_instance_health, InstanceId="i-0nope", HealthStatus="Unhealthy") == (
        "ValidationError", "Instance Id not found - No managed instance found for instance ID: i-0nope")


def test_target_health_shows_each_checks_verdict_with_awss_reason(endpoint, lab_groups):
    elb, ec2 = client(endpoint, "elbv2"), client(endpoint, "ec2")
    groups = {g["TargetGroupName"]: g for g in elb.describe_target_groups()["TargetGroups"]}
    assert set(groups) == {"web-stock", "web-deep", "db-stock", "db-deep"}
    (db_id,) = lab_groups["db"].instances
    ec2.detach_volume(VolumeId=volume_id(db_id, DATA_DEVICE), Force=True)

    def health(name):
        return elb.describe_target_health(TargetGroupArn=groups[name]["TargetGroupArn"])["TargetHealthDescriptions"]
    wait_for(lambda: health("db-deep")[0]["TargetHealth"]["State"] == "unhealthy")
    assert health("db-deep")[0]["TargetHealth"] == {"State": "unhealthy", "Reason": "Target.ResponseCodeMismatch",
                                                   "Description": "Health checks failed with these codes: [503]"}
    assert health("db-stock")[0]["TargetHealth"] == {"State": "healthy"}
    assert health("db-stock")[0]["Target"]["Id"] == db_id
    assert error_of(elb.describe_target_health, TargetGroupArn="arn:aws:elasticloadbalancing:x:1:targetgroup/no/1")[0] == \
        "TargetGroupNotFound"


def test_with_credentials_only_the_username_key_and_a_password_signature_pass(signed_endpoint):
    assert client(signed_endpoint, "ec2", "monkey", "banana").describe_instances()["Reservations"]
    assert error_of(client(signed_endpoint, "ec2", "gorilla", "banana").describe_instances)[0] == "AuthFailure"
    assert error_of(client(signed_endpoint, "ec2", "monkey", "apple").describe_instances)[0] == "SignatureDoesNotMatch"
    assert error_of(client(signed_endpoint, "autoscaling", "gorilla", "x").describe_auto_scaling_groups)[0] == \
        "InvalidClientTokenId"
    status, body = post(signed_endpoint, b"Action=DescribeInstances&Version=2016-11-15")
    assert status == 401 and b"<Code>AuthFailure</Code>" in body


def post(server, body: bytes, headers: str = "") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     + headers.encode() + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


@pytest.mark.parametrize("body, status, code", [
    (b"\xff\xfe\x00garbage", 400, "MalformedQueryString"),
    (b"Action=DescribeInstances", 400, "MissingParameter"),
    (b"Action=DescribeInstances&Version=1999-01-01", 400, "NoSuchVersion"),
    (b"Version=2016-11-15", 400, "MissingAction"),
    (b"Action=RunInstances&Version=2016-11-15", 400, "InvalidAction"),
    (b"Action=DetachVolume&Version=2016-11-15", 400, "MissingParameter"),
    (b"Action=DetachVolume&Version=2016-11-15&VolumeId=vol-1&Force=perhaps", 400, "InvalidParameterValue"),
    (b"Action=SetDesiredCapacity&Version=2011-01-01&AutoScalingGroupName=web&DesiredCapacity=lots", 400,
     "InvalidParameterValue"),
    (b"Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag:x&Filter.1.Value.1=%ZZ", 200, None),
    (b"<xml>not a form</xml>", 400, "MalformedQueryString"),
])
def test_malformed_bodies_get_aws_errors_and_the_server_keeps_serving(endpoint, body, status, code):
    got, payload = post(endpoint, body)
    assert got == status, payload
    if code:
        assert f"<Code>{code}</Code>".encode() in payload
    assert post(endpoint, b"Action=DescribeInstances&Version=2016-11-15")[0] == 200


def test_the_aws_cli_drives_the_endpoint_unchanged(endpoint, lab_groups):
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint.url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "AWS_DEFAULT_REGION": "us-east-1"}
    aws = str(Path(sys.executable).parent / "aws")
    (db_id,) = lab_groups["db"].instances
    vid = volume_id(db_id, DATA_DEVICE)
    out = subprocess.run([aws, "ec2", "detach-volume", "--volume-id", vid, "--force"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["State"] == "detaching" and lab_groups["db"].instances[db_id].faults == ["yank"]
    # AWS CLI v1 exits 255 on a service error (v2: 254).
    out = subprocess.run([aws, "ec2", "detach-volume", "--volume-id", volume_id(db_id, ROOT_DEVICE)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 255 and "(IncorrectState)" in out.stderr and "Unable to detach root volume" in out.stderr
    out = subprocess.run([aws, "autoscaling", "describe-auto-scaling-groups", "--query",
                          "AutoScalingGroups[].AutoScalingGroupName", "--output", "text"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["web", "db"]
    calls = [c["action"] for c in endpoint.api.calls]
    assert calls == ["DetachVolume", "DetachVolume -> IncorrectState", "DescribeAutoScalingGroups"]
    assert all(c["agent"].startswith("aws-cli/") for c in endpoint.api.calls)


def test_chaos_run_with_chaosaws_detaches_a_volume_of_the_group(endpoint, lab_groups, tmp_path):
    """The shipped experiment under the real `chaos run`, with checks served from the fake
    instance's state: the stock probe passes after the detach, the deep one fails."""
    import http.server
    import threading
    (db,) = lab_groups["db"].instances.values()

    class Checks(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/stock" or db.healthy else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass
    checks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Checks)
    threading.Thread(target=checks.serve_forever, daemon=True).start()
    experiment = json.loads((Path(__file__).parent.parent / "examples/chaostoolkit/detach-volume.json").read_text())
    experiment["method"][0]["pauses"] = {}
    (tmp_path / "experiment.json").write_text(json.dumps(experiment))
    base = f"http://127.0.0.1:{checks.server_address[1]}"
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint.url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "AWS_REGION": "us-east-1", "GROUP": "db", "STOCK_URL": base + "/stock", "DEEP_URL": base + "/deep"}
    try:
        subprocess.run([str(Path(sys.executable).parent / "chaos"), "--no-version-check", "run", "--journal-path",
                        str(tmp_path / "journal.json"), str(tmp_path / "experiment.json")],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    finally:
        checks.shutdown()
    run = json.loads((tmp_path / "journal.json").read_text())
    after = {p["activity"]["name"]: p["tolerance_met"] for p in run["steady_states"]["after"]["probes"]}
    assert run["deviated"] and after == {"stock-health-check": True, "deep-health-check": False}
    assert db.faults == ["yank"]
    assert [c["action"] for c in endpoint.api.calls] == ["DescribeInstances", "DetachVolume", "CreateTags"]
    assert endpoint.api.calls[0]["agent"].startswith("Boto3/")
