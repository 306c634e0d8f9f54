"""AWS FIS experiment templates (the CreateExperimentTemplate request, as JSON) read as a
plan for the lab: targets resolved against the lab's instances and volumes, actions
mapped to the lab's faults, in startAfter order.

The template's shape is checked with botocore's `fis` service model; what the model
cannot say (action ids, durations, target types, what the lab can do) is checked here.
Nothing here touches a VM: runs/fis_run.py carries the plan out.
"""
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import botocore.session
from botocore.validate import ParamValidator

from ..errors import UserError

ACCOUNT, REGION = "123456789012", "us-east-1"
INSTANCE, VOLUME = "aws:ec2:instance", "aws:ec2:ebs-volume"
GROUP_TAG = "aws:autoscaling:groupName"

# FIS's action states (ExperimentActionStatus), as `aws fis get-experiment` shows them.
PENDING, INITIATING, RUNNING, COMPLETED, CANCELLED, FAILED = (
    "pending", "initiating", "running", "completed", "cancelled", "failed")


@dataclass(frozen=True)
class Step:
    """What the lab does for one action on one target: inject FAULT with PARAMS, hold it
    for SECONDS, then heal it (or, for a fault that ends by itself, nothing)."""
    fault: str | None                  # None: aws:fis:wait
    params: dict = field(default_factory=dict)
    seconds: float = 0.0
    heal: bool = True
    note: str = ""                     # where the lab's fault differs from what FIS does


@dataclass
class Action:
    name: str
    action_id: str
    step: Step
    target_key: str | None             # "Volumes", "Instances" or None
    target_name: str | None            # the template's target this action acts on
    start_after: list[str]
    resources: list[dict] = field(default_factory=list)   # resolved, filled by plan()


@dataclass
class Plan:
    description: str
    actions: list[Action]              # in an order that respects startAfter

    def targets(self) -> dict[str, list[str]]:
        return {a.name: [r["id"] for r in a.resources] for a in self.actions}


# -- durations -----------------------------------------------------------------------------

_DURATION = re.compile(r"P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?")


def seconds(text: str, where: str) -> float:
    """ISO 8601 duration (PT1M, PT30S, PT1H30M, P1D) -> seconds."""
    found = _DURATION.fullmatch(str(text).strip())
    if not found or not any(found.groupdict().values()) or str(text).strip().endswith("T"):
        raise UserError(f"{where}: duration {text!r} is not an ISO 8601 duration",
                        "write it like PT30S, PT1M or PT1H30M")
    parts = {key: float(value or 0) for key, value in found.groupdict().items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


# -- reading -------------------------------------------------------------------------------

def load(path: Path) -> dict:
    """The template at PATH, its shape checked against botocore's fis model."""
    try:
        template = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"no template at {path}", "give the path of a CreateExperimentTemplate JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}", "give a readable JSON file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                        "fix the JSON (aws fis create-experiment-template --generate-cli-skeleton shows the shape)") from None
    validate(template, str(path))
    return template


def _input_shape():
    model = botocore.session.get_session().get_service_model("fis")
    return model.operation_model("CreateExperimentTemplate").input_shape


def validate(template, where: str = "template") -> None:
    if not isinstance(template, dict):
        raise UserError(f"{where} is not a JSON object", "give a CreateExperimentTemplate request: "
                        "{\"description\": ..., \"targets\": ..., \"actions\": ..., \"stopConditions\": ...}")
    # The CLI fills clientToken (an idempotency token) itself; a template file has none.
    report = ParamValidator().validate({"clientToken": "unitchaos", **template}, _input_shape())
    if report.has_errors():
        problems = "; ".join(report.generate_report().splitlines())
        raise UserError(f"{where} is not a CreateExperimentTemplate request: {problems}",
                        "fix those fields (see the FIS API reference, CreateExperimentTemplate)")
    for condition in template["stopConditions"]:
        if condition["source"] != "none":
            raise UserError(f"{where}: stop condition {condition['source']} {condition.get('value', '')}".rstrip()
                            + " cannot be watched: the lab has no CloudWatch alarms",
                            'use "stopConditions": [{"source": "none"}]')
    if not template["actions"]:
        raise UserError(f"{where} has no actions", "add at least one action")


# -- the lab's resources -------------------------------------------------------------------

def instance_arn(instance_id: str) -> str:
    return f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance_id}"


def volume_arn(volume_id: str) -> str:
    return f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/{volume_id}"


def lab_resources(group: str, instance_ids: list[str]) -> list[dict]:
    """Each instance and its two volumes, described as DescribeInstances and DescribeVolumes
    would (FIS filters are paths into those answers). Volumes carry the group's tag, as a
    launch template's tag specification gives them."""
    from .aws_resources import DATA_DEVICE, ROOT_DEVICE, volume_id  # one derivation of volume ids
    tags = [{"Key": GROUP_TAG, "Value": group}]
    out = []
    for iid in instance_ids:
        zone = {"AvailabilityZone": REGION + "a"}
        out.append({"type": INSTANCE, "id": iid, "arn": instance_arn(iid), "instance": iid, "tags": tags,
                    "described": {"InstanceId": iid, "State": {"Name": "running", "Code": 16}, "Placement": zone,
                                  "InstanceType": "t3.micro", "Tags": tags, "RootDeviceName": ROOT_DEVICE}})
        for device in (ROOT_DEVICE, DATA_DEVICE):
            vid = volume_id(iid, device)
            out.append({"type": VOLUME, "id": vid, "arn": volume_arn(vid), "instance": iid, "tags": tags,
                        "root": device == ROOT_DEVICE,
                        "described": {"VolumeId": vid, "State": "in-use", "VolumeType": "gp3", "Tags": tags,
                                      "AvailabilityZone": zone["AvailabilityZone"],
                                      "Attachments": [{"Device": device, "InstanceId": iid,
                                                       "State": "attached"}]}})
    return out


def _path_values(described, path: str) -> list[str]:
    values = [described]
    for part in path.split("."):
        nxt = []
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict) and part in item:
                    nxt.append(item[part])
        values = nxt
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in flat]


def resolve(name: str, target: dict, resources: list[dict], rng: random.Random | None = None) -> list[dict]:
    """The resources TARGET selects: by resourceArns or resourceTags, narrowed by filters,
    then selectionMode ALL, COUNT(n) or PERCENT(n) (FIS picks at random)."""
    kind = target["resourceType"]
    has_arns, has_tags = bool(target.get("resourceArns")), bool(target.get("resourceTags"))
    if has_arns == has_tags:
        raise UserError(f"target {name}: give either resourceArns or resourceTags (FIS needs exactly one)",
                        "name the resources by ARN, or by tag (e.g. aws:autoscaling:groupName)")
    pool = [r for r in resources if r["type"] == kind]
    if has_arns:
        known = {r["arn"]: r for r in pool}
        unknown = [arn for arn in target["resourceArns"] if arn not in known]
        if unknown:
            raise UserError(f"target {name}: {unknown[0]} is not one of the lab's {kind} resources",
                            f"use one of: {', '.join(known) or 'none'}")
        chosen = [known[arn] for arn in target["resourceArns"]]
    else:
        chosen = [r for r in pool if all({"Key": k, "Value": v} in r["tags"] for k, v in target["resourceTags"].items())]
    for each in target.get("filters", []):
        chosen = [r for r in chosen if set(_path_values(r["described"], each["path"])) & set(each["values"])]
    if not chosen:
        tags = ", ".join(f"{k}={v}" for k, v in target.get("resourceTags", {}).items())
        raise UserError(f"target {name}: no {kind} matches ({tags or 'those ARNs'}"
                        + (f", filters {[f['path'] for f in target['filters']]}" if target.get("filters") else "") + ")",
                        f"tag the lab's group as the template does ({GROUP_TAG}=<--group>) or fix the filters")
    return _select(name, target["selectionMode"], chosen, rng or random.Random())


def _select(name: str, mode: str, chosen: list[dict], rng: random.Random) -> list[dict]:
    if mode == "ALL":
        return chosen
    found = re.fullmatch(r"(COUNT|PERCENT)\((\d+)\)", mode)
    if not found or int(found[2]) < 1 or (found[1] == "PERCENT" and int(found[2]) > 100):
        raise UserError(f"target {name}: selectionMode {mode!r} is not valid", "use ALL, COUNT(n) or PERCENT(n)")
    wanted = int(found[2]) if found[1] == "COUNT" else math.ceil(len(chosen) * int(found[2]) / 100)
    if wanted > len(chosen):
        raise UserError(f"target {name}: {mode} asks for {wanted} but {len(chosen)} match",
                        f"ask for at most COUNT({len(chosen)}) or grow the group")
    return rng.sample(chosen, wanted)


# -- actions -------------------------------------------------------------------------------

# SSM documents FIS ships (AWSFIS-Run-*) -> the lab's fault that does the same thing, and
# what differs from the document's own behaviour.
SSM_DOCUMENTS = {
    "AWSFIS-Run-CPU-Stress": ("burn-cpu", "every CPU at 100 % (CPU and LoadPercent are not honoured)"),
    "AWSFIS-Run-IO-Stress": ("burn-io", "a dd loop on the root disk (Workers, Percent not honoured)"),
    "AWSFIS-Run-Disk-Fill": ("fill-root", "the root disk filled to the last block (Percent not honoured)"),
    "AWSFIS-Run-Kill-Process": ("kill-processes", "every java and python process, each second"),
    "AWSFIS-Run-Network-Latency": ("network-latency", "netem delay 1000ms 500ms (DelayMilliseconds not honoured)"),
    "AWSFIS-Run-Network-Packet-Loss": ("network-loss", "netem loss 7% 25% (LossPercent not honoured)"),
}
KNOWN_ACTIONS = ("aws:ebs:pause-volume-io", "aws:ebs:volume-io-latency", "aws:ec2:stop-instances",
                 "aws:ec2:terminate-instances", "aws:ec2:reboot-instances", "aws:ssm:send-command", "aws:fis:wait")
# Which target key and resource type each action takes, as in the FIS actions reference.
_TARGET = {"aws:ebs:pause-volume-io": ("Volumes", VOLUME), "aws:ebs:volume-io-latency": ("Volumes", VOLUME),
           "aws:ec2:stop-instances": ("Instances", INSTANCE), "aws:ec2:terminate-instances": ("Instances", INSTANCE),
           "aws:ec2:reboot-instances": ("Instances", INSTANCE), "aws:ssm:send-command": ("Instances", INSTANCE),
           "aws:fis:wait": (None, None)}


def step_for(name: str, action: dict) -> Step:
    """The lab's fault for one template action; a UserError for one the lab cannot do."""
    action_id = action["actionId"]
    params = dict(action.get("parameters", {}))
    where = f"action {name} ({action_id})"

    def duration(key: str = "duration", required: bool = True) -> float:
        if key not in params:
            if required:
                raise UserError(f"{where} needs parameter {key}", f'add "parameters": {{"{key}": "PT30S"}}')
            return 0.0
        return seconds(params[key], where)

    if action_id == "aws:ebs:pause-volume-io":
        # Held by the runner and healed (the queue drains), so that a failed action can end it early.
        return Step("pause-io", {}, duration())
    if action_id == "aws:ebs:volume-io-latency":
        latency = [_number(where, k, params.get(k, 0)) for k in ("readIOLatencyMilliseconds", "writeIOLatencyMilliseconds")]
        percent = [_number(where, k, params.get(k, 100)) for k in ("readIOPercentage", "writeIOPercentage")]
        if not any(latency):
            raise UserError(f"{where} needs readIOLatencyMilliseconds or writeIOLatencyMilliseconds",
                            'add e.g. "readIOLatencyMilliseconds": "500"')
        note = "every read and write slowed alike (QEMU throttling)" + (
            "; the I/O percentages are not honoured" if any(p < 100 for p in percent) else "")
        return Step("io-latency", {"ms": int(max(latency))}, duration(), note=note)
    if action_id == "aws:ec2:stop-instances":
        if "startInstancesAfterDuration" not in params:
            raise UserError(f"{where}: the lab observes each instance when the experiment ends, "
                            "so a stopped instance must be started again",
                            'add "startInstancesAfterDuration": "PT1M"')
        return Step("stop", {}, duration("startInstancesAfterDuration"))
    if action_id == "aws:ec2:terminate-instances":
        return Step("shutdown", {}, heal=False)
    if action_id == "aws:ec2:reboot-instances":
        return Step("reboot", {}, heal=False)
    if action_id == "aws:fis:wait":
        return Step(None, {}, duration())
    if action_id == "aws:ssm:send-command":
        document = str(params.get("documentArn", "")).rsplit("/", 1)[-1]
        if document not in SSM_DOCUMENTS:
            raise UserError(f"{where}: the lab has no fault for SSM document {document or '(no documentArn)'!r}",
                            f"use one of: {', '.join(SSM_DOCUMENTS)}")
        fault, note = SSM_DOCUMENTS[document]
        try:
            doc_params = json.loads(params.get("documentParameters") or "{}")
        except json.JSONDecodeError:
            raise UserError(f"{where}: documentParameters is not a JSON string",
                            'write it as a string, e.g. "{\\"DurationSeconds\\":\\"60\\"}"') from None
        if document == "AWSFIS-Run-Kill-Process" and doc_params.get("ProcessName") not in ("java", "python", "python3"):
            raise UserError(f"{where}: the lab's kill-processes kills java and python only, "
                            f"not {doc_params.get('ProcessName')!r}", 'use "ProcessName": "java" or "python"')
        held = duration(required=False)
        if not held:
            if "DurationSeconds" not in doc_params:
                raise UserError(f"{where} needs a duration", 'add "duration": "PT1M" (or DurationSeconds)')
            held = _number(where, "DurationSeconds", doc_params["DurationSeconds"])
        return Step(fault, {}, held, note=note)
    raise UserError(f"{where}: the lab has no fault for {action_id}", f"use one of: {', '.join(KNOWN_ACTIONS)}")


def _number(where: str, key: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {key} {value!r} is not a number", f'give {key} as a number, e.g. "100"') from None


def plan(template: dict, resources: list[dict], rng: random.Random | None = None, where: str = "template") -> Plan:
    """The actions in an order that respects startAfter, each with its resolved resources."""
    validate(template, where)
    for name, target in template.get("targets", {}).items():
        if target["resourceType"] not in (INSTANCE, VOLUME):
            raise UserError(f"target {name}: resource type {target['resourceType']!r} is not in the lab",
                            f"use {INSTANCE} or {VOLUME}")
    actions = {}
    for name, action in template["actions"].items():
        step = step_for(name, action)
        key, kind = _TARGET[action["actionId"]]
        targets = action.get("targets", {})
        if key is None:
            if targets:
                raise UserError(f"action {name} ({action['actionId']}) takes no targets", "remove its targets")
            target_name = None
        else:
            if set(targets) != {key}:
                raise UserError(f"action {name} ({action['actionId']}) needs one target called {key}, "
                                f"got {sorted(targets) or 'none'}", f'write "targets": {{"{key}": "<target name>"}}')
            target_name = targets[key]
            if target_name not in template.get("targets", {}):
                raise UserError(f"action {name}: target {target_name!r} is not in the template's targets",
                                f"use one of: {', '.join(template.get('targets', {})) or 'none: add one'}")
            if template["targets"][target_name]["resourceType"] != kind:
                raise UserError(f"action {name} ({action['actionId']}) acts on {kind}, but target {target_name} "
                                f"is {template['targets'][target_name]['resourceType']}", f"point it at a {kind} target")
        for before in action.get("startAfter", []):
            if before not in template["actions"]:
                raise UserError(f"action {name}: startAfter names {before!r}, which is not an action",
                                f"use one of: {', '.join(template['actions'])}")
        actions[name] = Action(name, action["actionId"], step, key, target_name, list(action.get("startAfter", [])))
    resolved = {name: resolve(name, target, resources, rng) for name, target in template.get("targets", {}).items()
                if any(a.target_name == name for a in actions.values())}
    for action in actions.values():
        if action.target_name:
            action.resources = resolved[action.target_name]
            if action.target_key == "Volumes" and any(r.get("root") for r in action.resources):
                raise UserError(f"action {action.name}: target {action.target_name} includes a root volume "
                                "(/dev/xvda); the lab breaks only the chain's data volume",
                                'add the filter {"path": "Attachments.Device", "values": ["/dev/xvdb"]}')
    return Plan(template.get("description", ""), _ordered(actions))


def _ordered(actions: dict[str, Action]) -> list[Action]:
    done, out = set(), []
    while len(out) < len(actions):
        ready = [a for a in actions.values() if a.name not in done and set(a.start_after) <= done]
        if not ready:
            stuck = sorted(set(actions) - done)
            raise UserError(f"actions {', '.join(stuck)} wait for each other (a startAfter cycle)",
                            "remove one startAfter from the cycle")
        for action in ready:
            done.add(action.name)
            out.append(action)
    return out
