"""What `unitchaos serve --aws` describes, shared by its EC2, Auto Scaling and ELBv2
operations: one instance's view, its volume ids, its states, and EC2's filters."""
import hashlib
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .autoscaling import AutoScalingGroup
from .aws_wire import AwsError

ACCOUNT = "123456789012"
ROOT_DEVICE, DATA_DEVICE = "/dev/xvda", "/dev/xvdb"
INSTANCE_TYPE = "t3.micro"
STATES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}


def volume_id(instance_id: str, device: str) -> str:
    return "vol-" + hashlib.sha256(f"{instance_id}{device}".encode()).hexdigest()[:17]


@dataclass
class View:
    """One instance as EC2 describes it, taken at the start of a request."""
    instance_id: str
    group: str
    asg: AutoScalingGroup
    launched: float
    state: str
    member: object | None


def state(name: str) -> dict:
    """EC2's InstanceState for state NAME: {"Code": 16, "Name": "running"}."""
    return {"Code": STATES[name], "Name": name}


def tag_field(tags: list[dict], name: str, fields: dict[str, list[str]]) -> list[str]:
    if name.startswith("tag:"):
        return [tag["Value"] for tag in tags if tag["Key"] == name[4:]]
    if name == "tag-key":
        return [tag["Key"] for tag in tags]
    if name == "tag-value":
        return [tag["Value"] for tag in tags]
    if name not in fields:
        raise AwsError("InvalidParameterValue", f"The filter '{name}' is invalid")
    return fields[name]


def filtered(items: list, filters: list[dict], field) -> list:
    """EC2's filter semantics: every filter must match (AND), any of its values (OR),
    with * and ? as wildcards."""
    out = []
    for item in items:
        if all(any(fnmatchcase(have, want) for have in field(item, f.get("Name", "")) for want in f.get("Values", []))
               for f in filters):
            out.append(item)
    return out
