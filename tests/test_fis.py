"""FIS templates: shape (botocore's fis model), targets, durations, startAfter order, the
lab's faults for each action, every bad input as one line with exit 2; and the runner's
action states over fake instances."""
import json
import random
import subprocess
import sys

import pytest

from harness import cli
from harness.chaos import fis
from harness.runs import fis_run
from harness.chaos.aws_resources import volume_id
from harness.errors import UserError
from harness.paths import REPO

EXAMPLE = REPO / "examples/fis/pause-volume-io.json"
IDS = ["i-00000000000000001", "i-00000000000000002", "i-00000000000000003", "i-00000000000000004"]


def template(actions=None, targets=None, **extra):
    return {"description": "t", "roleArn": "arn:aws:iam::123456789012:role/fis", "stopConditions": [{"source": "none"}],
            "targets": targets if targets is not None else {
                "Hosts": {"resourceType": fis.INSTANCE, "resourceTags": {fis.GROUP_TAG: "ecs"}, "selectionMode": "ALL"}},
            "actions": actions if actions is not None else {
                "burn": {"actionId": "aws:ssm:send-command", "targets": {"Instances": "Hosts"}, "parameters": {
                    "documentArn": "arn:aws:ssm:us-east-1::document/AWSFIS-Run-CPU-Stress",
                    "documentParameters": "{\"DurationSeconds\":\"60\"}", "duration": "PT1M"}}},
            **extra}


def plan(tmpl, ids=IDS[:1], group="ecs"):
    return fis.plan(tmpl, fis.lab_resources(group, ids), random.Random(1))


def problem(tmpl, **kw) -> str:
    with pytest.raises(UserError) as err:
        plan(tmpl, **kw)
    return str(err.value)


@pytest.mark.parametrize("text, want", [("PT30S", 30), ("PT1M", 60), ("PT1H30M", 5400), ("PT0.5S", 0.5), ("P1D", 86400)])
def test_iso_8601_durations(text, want):
    assert fis.seconds(text, "x") == want


@pytest.mark.parametrize("text", ["30s", "PT", "P", "PT1X", "1 minute", ""])
def test_a_bad_duration_names_it_and_the_fix(text):
    with pytest.raises(UserError, match="is not an ISO 8601 duration.*PT30S"):
        fis.seconds(text, "action a")


def test_the_shipped_template_pauses_the_data_volume_of_every_instance_of_the_group_for_20_s():
    resources = fis.lab_resources("ecs", IDS[:2])
    shipped = fis.plan(json.loads(EXAMPLE.read_text()), resources)
    (action,) = shipped.actions
    assert (action.action_id, action.step.fault, action.step.seconds) == ("aws:ebs:pause-volume-io", "pause-io", 20)
    assert [r["id"] for r in action.resources] == [volume_id(iid, "/dev/xvdb") for iid in IDS[:2]]


def test_targets_by_arn_tags_filters_and_selection_modes():
    resources = fis.lab_resources("ecs", IDS) + fis.lab_resources("other", ["i-0000000000000000f"])
    by_tag = {"resourceType": fis.INSTANCE, "resourceTags": {fis.GROUP_TAG: "ecs"}, "selectionMode": "ALL"}
    assert [r["id"] for r in fis.resolve("t", by_tag, resources)] == IDS
    arns = {**by_tag, "resourceTags": None, "resourceArns": [fis.instance_arn(IDS[2])]}
    del arns["resourceTags"]
    assert [r["id"] for r in fis.resolve("t", arns, resources)] == [IDS[2]]
    running = {**by_tag, "filters": [{"path": "State.Name", "values": ["running"]},
                                     {"path": "Placement.AvailabilityZone", "values": ["us-east-1a"]}]}
    assert len(fis.resolve("t", running, resources)) == 4
    assert len(fis.resolve("t", {**by_tag, "selectionMode": "COUNT(3)"}, resources, random.Random(0))) == 3
    assert len(fis.resolve("t", {**by_tag, "selectionMode": "PERCENT(50)"}, resources, random.Random(0))) == 2
    assert len(fis.resolve("t", {**by_tag, "selectionMode": "PERCENT(1)"}, resources, random.Random(0))) == 1
    roots = {"resourceType": fis.VOLUME, "resourceTags": {fis.GROUP_TAG: "ecs"}, "selectionMode": "ALL",
             "filters": [{"path": "Attachments.Device", "values": ["/dev/xvda"]}]}
    assert [r["id"] for r in fis.resolve("t", roots, resources)] == [volume_id(iid, "/dev/xvda") for iid in IDS]


@pytest.mark.parametrize("target, said", [
    ({"resourceTags": {fis.GROUP_TAG: "web"}}, "no aws:ec2:instance matches"),
    ({"filters": [{"path": "State.Name", "values": ["stopped"]}]}, "no aws:ec2:instance matches"),
    ({"resourceTags": None, "resourceArns": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0dead"]},
     "is not one of the lab's"),
    ({"selectionMode": "COUNT(5)"}, "asks for 5 but 1 match"),
    ({"selectionMode": "SOME"}, "selectionMode 'SOME' is not valid"),
    ({"resourceType": "aws:rds:cluster"}, "'aws:rds:cluster' is not in the lab"),
])
def test_a_target_that_selects_nothing_the_lab_has_is_refused(target, said):
    targets = {"Hosts": {"resourceType": fis.INSTANCE, "resourceTags": {fis.GROUP_TAG: "ecs"}, "selectionMode": "ALL",
                         **target}}
    targets["Hosts"] = {k: v for k, v in targets["Hosts"].items() if v is not None}
    assert said in problem(template(targets=targets))


def test_actions_run_in_start_after_order():
    wait = {"actionId": "aws:fis:wait", "parameters": {"duration": "PT5S"}}
    acts = {"c": {**wait, "startAfter": ["b"]}, "b": {**wait, "startAfter": ["a"]}, "a": wait,
            "d": {**wait, "startAfter": ["a"]}}
    assert [a.name for a in plan(template(actions=acts, targets={})).actions] == ["a", "b", "d", "c"]
    loop = {"a": {**wait, "startAfter": ["b"]}, "b": {**wait, "startAfter": ["a"]}}
    assert "startAfter cycle" in problem(template(actions=loop, targets={}))
    assert "startAfter names 'x'" in problem(template(actions={"a": {**wait, "startAfter": ["x"]}}, targets={}))


def test_each_action_maps_to_the_labs_fault():
    volumes = {"Vols": {"resourceType": fis.VOLUME, "resourceTags": {fis.GROUP_TAG: "ecs"}, "selectionMode": "ALL",
                        "filters": [{"path": "Attachments.Device", "values": ["/dev/xvdb"]}]}}
    hosts = template()["targets"]
    def step(action_id, params, targets=hosts, key="Instances"):
        tmpl = template(actions={"a": {"actionId": action_id, "parameters": params,
                                       "targets": {key: next(iter(targets))}}}, targets=targets)
        return plan(tmpl).actions[0].step
    assert step("aws:ebs:pause-volume-io", {"duration": "PT20S"}, volumes, "Volumes") == fis.Step("pause-io", {}, 20)
    latency = step("aws:ebs:volume-io-latency", {"readIOLatencyMilliseconds": "500", "readIOPercentage": "50",
                                                 "duration": "PT1M"}, volumes, "Volumes")
    assert (latency.fault, latency.params, latency.seconds) == ("io-latency", {"ms": 500}, 60)
    assert "percentages are not honoured" in latency.note
    assert step("aws:ec2:stop-instances", {"startInstancesAfterDuration": "PT30S"}).fault == "stop"
    assert step("aws:ec2:terminate-instances", {}).fault == "shutdown"
    assert step("aws:ec2:reboot-instances", {}).fault == "reboot"
    for document, fault in [("CPU-Stress", "burn-cpu"), ("IO-Stress", "burn-io"), ("Disk-Fill", "fill-root"),
                            ("Network-Latency", "network-latency"), ("Network-Packet-Loss", "network-loss")]:
        ssm = step("aws:ssm:send-command", {"documentArn": f"arn:aws:ssm:us-east-1::document/AWSFIS-Run-{document}",
                                            "documentParameters": '{"DurationSeconds": "90"}'})
        assert (ssm.fault, ssm.seconds) == (fault, 90)
    kill = step("aws:ssm:send-command", {"documentArn": "arn:aws:ssm:us-east-1::document/AWSFIS-Run-Kill-Process",
                                         "documentParameters": '{"ProcessName": "java"}', "duration": "PT10S"})
    assert kill.fault == "kill-processes"


@pytest.mark.parametrize("actions, said", [
    ({"a": {"actionId": "aws:ecs:drain-container-instances"}}, "the lab has no fault for aws:ecs:drain-container-instances"),
    ({"a": {"actionId": "aws:fis:wait", "parameters": {"duration": "5 minutes"}}}, "'5 minutes' is not an ISO 8601"),
    ({"a": {"actionId": "aws:fis:wait"}}, "needs parameter duration"),
    ({"a": {"actionId": "aws:ssm:send-command", "targets": {"Instances": "Hosts"}, "parameters": {
        "documentArn": "arn:aws:ssm:us-east-1::document/AWS-RunShellScript", "duration": "PT1M"}}},
     "no fault for SSM document 'AWS-RunShellScript'"),
    ({"a": {"actionId": "aws:ssm:send-command", "targets": {"Instances": "Hosts"}, "parameters": {
        "documentArn": "arn:aws:ssm:us-east-1::document/AWSFIS-Run-Kill-Process",
        "documentParameters": '{"ProcessName": "nginx"}', "duration": "PT1M"}}}, "java and python only"),
    ({"a": {"actionId": "aws:ec2:stop-instances", "targets": {"Instances": "Hosts"}}}, "startInstancesAfterDuration"),
    ({"a": {"actionId": "aws:ebs:pause-volume-io", "targets": {"Instances": "Hosts"}, "parameters": {"duration": "PT1S"}}},
     "needs one target called Volumes"),
    ({"a": {"actionId": "aws:ec2:reboot-instances", "targets": {"Instances": "Nope"}}}, "target 'Nope' is not in"),
    ({"a": {"actionId": "aws:ebs:volume-io-latency", "targets": {"Volumes": "Hosts"},
            "parameters": {"duration": "PT1S", "readIOLatencyMilliseconds": "9"}}}, "acts on aws:ec2:ebs-volume"),
    ({"a": {"actionId": "aws:ebs:volume-io-latency", "targets": {"Volumes": "Hosts"},
            "parameters": {"duration": "PT1S", "readIOLatencyMilliseconds": "slow"}}}, "'slow' is not a number"),
    ({}, "has no actions"),
])
def test_an_action_the_lab_cannot_do_is_refused_with_the_fix(actions, said):
    message = problem(template(actions=actions))
    assert said in message and "(fix: " in message


def test_a_root_volume_target_is_refused():
    vols = {"V": {"resourceType": fis.VOLUME, "resourceTags": {fis.GROUP_TAG: "ecs"}, "selectionMode": "ALL"}}
    acts = {"a": {"actionId": "aws:ebs:pause-volume-io", "targets": {"Volumes": "V"}, "parameters": {"duration": "PT1S"}}}
    assert "includes a root volume" in problem(template(actions=acts, targets=vols))


def test_the_shape_is_checked_by_botocores_fis_model():
    message = problem({**template(), "roleArn": None, "actions": {"a": {"actionId": 3, "bogus": 1}}} | {"roleArn": 5})
    assert "Unknown parameter in actions.a: \"bogus\"" in message and "Invalid type for parameter roleArn" in message
    assert "\n" not in message
    missing = template()
    del missing["roleArn"]
    assert 'Missing required parameter in input: "roleArn"' in problem(missing)


def test_a_stop_condition_other_than_none_is_refused_naming_it():
    alarm = "arn:aws:cloudwatch:us-east-1:123456789012:alarm:HighErrors"
    message = problem(template(stopConditions=[{"source": "aws:cloudwatch:alarm", "value": alarm}]))
    assert f"stop condition aws:cloudwatch:alarm {alarm} cannot be watched" in message


@pytest.mark.parametrize("content, said", [
    ("{not json", "is not JSON: Expecting property name"),
    ("[1, 2]", "is not a JSON object"),
    (json.dumps(template(actions={"a": {"actionId": "aws:lambda:invocation-error"}})), "no fault for aws:lambda"),
    (json.dumps(template(targets={"Hosts": {"resourceType": fis.INSTANCE, "resourceTags": {fis.GROUP_TAG: "web"},
                                            "selectionMode": "ALL"}})), "no aws:ec2:instance matches"),
])
def test_fis_run_bad_input_is_one_line_and_exit_2_before_any_vm(tmp_path, content, said):
    path = tmp_path / "t.json"
    path.write_text(content)
    done = subprocess.run([sys.executable, "-m", "harness", "fis", "run", str(path), "--group", "ecs"],
                          capture_output=True, text=True, timeout=60, env={"UNITCHAOS_CACHE": str(tmp_path / "c"),
                                                                           "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert said in line and "(fix: " in line and "Traceback" not in done.stderr
    assert not (tmp_path / "c").exists()  # nothing was started or written


def test_fis_run_refuses_a_group_of_more_than_one(tmp_path):
    assert cli.main(["fis", "run", str(EXAMPLE), "--group", "ecs:2"]) == 2


class FakeInstance:
    def __init__(self, fail=None):
        self.log, self.fail = [], fail

    def inject(self, name, **params):
        if name == self.fail:
            raise UserError(f"{name} does not apply", "fix it")
        self.log.append(("inject", name))

    def heal(self, name):
        self.log.append(("heal", name))


def test_the_runner_reports_fis_states_and_heals_what_it_injected():
    acts = {"pause": {"actionId": "aws:ebs:pause-volume-io", "targets": {"Volumes": "V"},
                      "parameters": {"duration": "PT0.2S"}},
            "burn": {"actionId": "aws:ssm:send-command", "targets": {"Instances": "H"}, "startAfter": ["pause"],
                     "parameters": {"documentArn": "arn:aws:ssm:us-east-1::document/AWSFIS-Run-CPU-Stress",
                                    "duration": "PT0.1S"}}}
    targets = {"V": {"resourceType": fis.VOLUME, "resourceTags": {fis.GROUP_TAG: "ecs"}, "selectionMode": "ALL",
                     "filters": [{"path": "Attachments.Device", "values": ["/dev/xvdb"]}]},
               "H": {"resourceType": fis.INSTANCE, "resourceArns": [fis.instance_arn(IDS[0])], "selectionMode": "ALL"}}
    vm = FakeInstance()
    seen = []
    run = fis_run.Experiment(plan(template(actions=acts, targets=targets)), {IDS[0]: vm},
                             lambda a, s, r: seen.append((a, s))).run()
    assert run["state"] == "completed"
    assert [s for a, s in seen if a == "burn"] == ["pending", "initiating", "running", "completed"]
    assert seen.index(("burn", "initiating")) > seen.index(("pause", "completed"))
    assert vm.log == [("inject", "pause-io"), ("heal", "pause-io"), ("inject", "burn-cpu"), ("heal", "burn-cpu")]


def test_a_failed_action_fails_the_experiment_and_cancels_the_rest():
    acts = {"pause": {"actionId": "aws:ebs:pause-volume-io", "targets": {"Volumes": "V"},
                      "parameters": {"duration": "PT5S"}},
            "burn": {"actionId": "aws:ssm:send-command", "targets": {"Instances": "H"},
                     "parameters": {"documentArn": "arn:aws:ssm:us-east-1::document/AWSFIS-Run-CPU-Stress",
                                    "duration": "PT5S"}},
            "later": {"actionId": "aws:fis:wait", "parameters": {"duration": "PT1S"}, "startAfter": ["burn"]}}
    targets = {"V": {"resourceType": fis.VOLUME, "resourceTags": {fis.GROUP_TAG: "ecs"}, "selectionMode": "ALL",
                     "filters": [{"path": "Attachments.Device", "values": ["/dev/xvdb"]}]},
               "H": {"resourceType": fis.INSTANCE, "resourceTags": {fis.GROUP_TAG: "ecs"}, "selectionMode": "ALL"}}
    vm = FakeInstance(fail="burn-cpu")
    run = fis_run.Experiment(plan(template(actions=acts, targets=targets)), {IDS[0]: vm}).run()
    states = {name: action["state"] for name, action in run["actions"].items()}
    assert run["state"] == "failed" and states == {"pause": "cancelled", "burn": "failed", "later": "cancelled"}
    assert run["actions"]["burn"]["reason"] == "burn-cpu does not apply"
    assert vm.log == [("inject", "pause-io"), ("heal", "pause-io")]  # the pause was lifted at once, not after 5 s


def test_the_summary_names_each_action_each_checks_verdict_and_the_recovery():
    from harness.cli.fis import render
    from harness.evidence.outcome import Outcome
    outcome = Outcome.from_json({
        "experiment": "fis:pause-volume-io", "chain": "bindsto", "fs": "xfs", "workload_ok": True,
        "health": {"stock": {"detected": False, "samples": 25}, "deep": {"detected": True, "seconds": 2.85,
                                                                           "lb_seconds": 3.94, "samples": 25}},
        "checks": {"stock": {"detected": False, "now": 200, "lies": False}},
        "fault_detail": {"instance_id": "i-1", "group": "ecs", "state": "completed", "deep_200_after_s": 2.8,
                         "actions": {"PauseDataVolume": {"actionId": "aws:ebs:pause-volume-io", "state": "completed",
                                                         "fault": "pause-io", "params": {}, "seconds": 20.0}}}})
    assert render(outcome).splitlines() == [
        "experiment fis:pause-volume-io on i-1 (ecs): completed",
        "  PauseDataVolume      aws:ebs:pause-volume-io      completed  lab: pause-io 20 s",
        "  stock check: never unhealthy; answers 200 at the end",
        "  deep check: failed after 2.9 s, unhealthy after 3.9 s",
        "  deep check 200 again 2.8 s after the last action ended",
        "  workload at the end: works"]
