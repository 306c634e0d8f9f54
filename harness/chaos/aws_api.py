"""`unitchaos serve --aws`: the subset of EC2, Auto Scaling and ELBv2 that the AWS CLI,
boto3 and Chaos Toolkit's chaosaws call, over the lab's auto scaling groups, so that the
experiment a team would run against AWS runs unchanged against real machines whose XFS
really shuts down.

The wire format is aws_wire (botocore's models); this module only maps operations onto
the groups. What each id means:
- instances i-… are the groups' members (terminated ones stay visible, as on EC2);
- each instance has a root volume (/dev/xvda, never detachable) and the chain's data
  volume (/dev/xvdb, the guest's vdb); volume ids are derived from the instance id;
- each group carries the tag aws:autoscaling:groupName and has one target group per health
  check, NAME-stock and NAME-deep; the group's own check decides replacements.
"""
import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import parse_qsl

from . import aws_auth, aws_wire
from .autoscaling import AutoScalingGroup
from .aws_wire import AwsError
from ..errors import UserError
from ..evidence.health_watch import CHECKS
from ..evidence.loadbalancer import LoadBalancer

log = logging.getLogger(__name__)

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


class AwsApi:
    def __init__(self, groups: dict[str, AutoScalingGroup], credentials: tuple[str, str] | None = None,
                 default_region: str = "us-east-1"):
        self.groups = groups
        self.credentials = credentials
        self.default_region = default_region
        self.calls: list[dict] = []          # what was asked, for the server's log and the report
        self.on_call = None                  # called with each call's record as it is answered
        self.detached: dict[str, str] = {}   # volume id -> "yank" | "unplug"
        self.tags: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self.created = time.time()
        self._operations = {
            "DescribeInstances": self._describe_instances, "DescribeInstanceStatus": self._describe_instance_status,
            "DescribeVolumes": self._describe_volumes, "DetachVolume": self._detach_volume,
            "StopInstances": self._stop_instances, "StartInstances": self._start_instances,
            "RebootInstances": self._reboot_instances, "TerminateInstances": self._terminate_instances,
            "CreateTags": self._create_tags, "AttachVolume": self._attach_volume,
            "DescribeAutoScalingGroups": self._describe_groups, "DescribeAutoScalingInstances": self._describe_asg_instances,
            "SetInstanceHealth": self._set_instance_health, "SetDesiredCapacity": self._set_desired_capacity,
            "TerminateInstanceInAutoScalingGroup": self._terminate_in_group,
            "DescribeTargetGroups": self._describe_target_groups, "DescribeTargetHealth": self._describe_target_health,
        }

    # -- the wire ------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, bytes]:
        """(status, XML) for one POST / request; never raises."""
        request_id = str(uuid.uuid4())
        signed = aws_auth.scope(headers)
        protocol, namespace, action = "query", None, "?"
        try:
            try:
                form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)))
            except (UnicodeDecodeError, ValueError):
                raise AwsError("MalformedQueryString", "The request body is not a form-encoded query string") from None
            action = form.get("Action", "?")
            service = aws_wire.service_for_version(form.get("Version"))
            model = aws_wire.service_model(service)
            protocol, namespace = model.protocol, model.metadata.get("xmlNamespace")
            signed = aws_auth.verify(method, path, headers, body, self.credentials, protocol == "ec2")
            request = aws_wire.parse(form, set(self._operations))
            request.request_id = request_id
            region = signed.region or self.default_region
            output = self._operations[request.operation.name](request.params, region)
            status, data = 200, aws_wire.answer(request, output)
        except AwsError as err:
            status, data = err.status, aws_wire.error(err, protocol, namespace, request_id)
            action = f"{action} -> {err.code}"
        except UserError as err:
            status, data = 400, aws_wire.error(AwsError("InvalidParameterValue", err.problem), protocol, namespace,
                                               request_id)
            action = f"{action} -> InvalidParameterValue"
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and the lab keeps running
            log.exception("AWS request failed")
            status, data = 500, aws_wire.error(AwsError("InternalError", f"{type(exc).__name__}: {exc}", 500, False),
                                               protocol, namespace, request_id)
            action = f"{action} -> InternalError"
        call = {"time": time.time(), "action": action, "status": status,
                "agent": headers.get("User-Agent", "").split(" ")[0], "key": signed.access_key}
        self.calls.append(call)
        log.info("AWS %s %s (%s)", call["action"], status, call["agent"])
        if self.on_call:
            self.on_call(call)
        return status, data

    # -- what there is -------------------------------------------------------------------

    def _views(self) -> list[View]:
        views = []
        for name, asg in self.groups.items():
            members = dict(asg.members)
            ended = {e["instance"] for e in list(asg.events) if e["action"] == "Terminate"}
            for event in list(asg.events):
                if event["action"] != "Launch":
                    continue
                iid, member = event["instance"], members.get(event["instance"])
                if member is None or iid in ended:
                    state = "terminated"
                elif member.stopped:
                    state = "stopped"
                elif not member.instance.machine.running:
                    state = "shutting-down"
                else:
                    state = "running"
                views.append(View(iid, name, asg, event["time"], state, member))
        return views

    def _view(self, instance_id: str) -> View:
        for view in self._views():
            if view.instance_id == instance_id:
                return view
        raise AwsError("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")

    def _views_for(self, ids: list[str] | None) -> list[View]:
        if not ids:
            return self._views()
        return [self._view(iid) for iid in ids]

    def _volumes(self, view: View) -> list[dict]:
        if view.state == "terminated":
            return []   # DeleteOnTermination: both go with the instance
        return [{"device": device, "id": volume_id(view.instance_id, device), "root": device == ROOT_DEVICE,
                 "size": 3 if device == ROOT_DEVICE else 1}
                for device in (ROOT_DEVICE, DATA_DEVICE)]

    def _tags(self, resource: str, group: str | None = None) -> list[dict]:
        tags = {"aws:autoscaling:groupName": group} if group else {}
        tags.update(self.tags.get(resource, {}))
        return [{"Key": key, "Value": value} for key, value in tags.items()]

    # -- EC2 ------------------------------------------------------------------------------

    def _instance(self, view: View, region: str) -> dict:
        out = {"InstanceId": view.instance_id, "ImageId": "ami-0unitchaos0000000", "InstanceType": INSTANCE_TYPE,
               "State": _state(view.state), "LaunchTime": view.launched, "Placement": {"AvailabilityZone": region + "a"},
               "RootDeviceName": ROOT_DEVICE, "RootDeviceType": "ebs", "Architecture": "x86_64",
               "Hypervisor": "xen", "VirtualizationType": "hvm", "Tags": self._tags(view.instance_id, view.group),
               "BlockDeviceMappings": [{"DeviceName": v["device"], "Ebs": {
                   "VolumeId": v["id"], "Status": "attached", "AttachTime": view.launched, "DeleteOnTermination": True}}
                   for v in self._volumes(view) if v["id"] not in self.detached]}
        if view.state == "running":
            out["PrivateIpAddress"] = "10.0.2.15"
        return out

    def _describe_instances(self, params: dict, region: str) -> dict:
        views = _filtered(self._views_for(params.get("InstanceIds")), params.get("Filters", []),
                          lambda view, name: _instance_field(self, view, name, region))
        return {"Reservations": [{"ReservationId": "r-" + view.instance_id[2:], "OwnerId": ACCOUNT,
                                  "Instances": [self._instance(view, region)]} for view in views]}

    def _describe_instance_status(self, params: dict, region: str) -> dict:
        views = self._views_for(params.get("InstanceIds"))
        if not params.get("IncludeAllInstances"):
            views = [view for view in views if view.state == "running"]
        views = _filtered(views, params.get("Filters", []), lambda view, name: _instance_field(self, view, name, region))
        statuses = []
        for view in views:
            ok = view.state == "running"
            check = {"Status": "ok" if ok else "not-applicable",
                     "Details": [{"Name": "reachability", "Status": "passed" if ok else "failed"}]}
            statuses.append({"InstanceId": view.instance_id, "AvailabilityZone": region + "a",
                             "InstanceState": _state(view.state), "SystemStatus": check, "InstanceStatus": check})
        return {"InstanceStatuses": statuses}

    def _all_volumes(self) -> list[tuple[View, dict]]:
        return [(view, volume) for view in self._views() for volume in self._volumes(view)]

    def _find_volume(self, vid: str) -> tuple[View, dict]:
        for view, volume in self._all_volumes():
            if volume["id"] == vid:
                return view, volume
        raise AwsError("InvalidVolume.NotFound", f"The volume '{vid}' does not exist.")

    def _describe_volumes(self, params: dict, region: str) -> dict:
        pairs = ([self._find_volume(vid) for vid in params["VolumeIds"]] if params.get("VolumeIds")
                 else self._all_volumes())
        pairs = _filtered(pairs, params.get("Filters", []), lambda pair, name: self._volume_field(pair, name, region))
        return {"Volumes": [self._volume(view, volume, region) for view, volume in pairs]}

    def _volume(self, view: View, volume: dict, region: str) -> dict:
        attached = volume["id"] not in self.detached
        return {"VolumeId": volume["id"], "Size": volume["size"], "AvailabilityZone": region + "a",
                "State": "in-use" if attached else "available", "CreateTime": view.launched, "VolumeType": "gp3",
                "Encrypted": False, "Tags": self._tags(volume["id"]),
                "Attachments": [{"AttachTime": view.launched, "Device": volume["device"], "InstanceId": view.instance_id,
                                 "State": "attached", "VolumeId": volume["id"], "DeleteOnTermination": True}]
                if attached else []}

    def _volume_field(self, pair, name: str, region: str) -> list[str]:
        view, volume = pair
        attached = volume["id"] not in self.detached
        fields = {"volume-id": [volume["id"]], "status": ["in-use" if attached else "available"],
                  "availability-zone": [region + "a"], "size": [str(volume["size"])], "volume-type": ["gp3"],
                  "attachment.instance-id": [view.instance_id] if attached else [],
                  "attachment.device": [volume["device"]] if attached else [],
                  "attachment.status": ["attached"] if attached else [],
                  "attachment.delete-on-termination": ["true"] if attached else []}
        return _tag_field(self._tags(volume["id"]), name, fields)

    def _detach_volume(self, params: dict, region: str) -> dict:
        vid = params["VolumeId"]
        view, volume = self._find_volume(vid)
        if vid in self.detached:
            raise AwsError("IncorrectState", f"Volume '{vid}' is in the 'available' state.")
        if params.get("InstanceId") not in (None, view.instance_id) or params.get("Device") not in (None, volume["device"]):
            raise AwsError("InvalidAttachment.NotFound",
                           f"The volume '{vid}' is not attached to instance '{params.get('InstanceId')}'"
                           + (f" as device '{params['Device']}'" if params.get("Device") else "") + ".")
        if volume["root"]:
            raise AwsError("IncorrectState", f"Unable to detach root volume '{vid}' from instance '{view.instance_id}'")
        if view.state != "running":
            raise AwsError("IncorrectState", f"The instance '{view.instance_id}' is not in the 'running' state.")
        fault = "yank" if params.get("Force") else "unplug"
        with self._lock:
            view.member.instance.inject(fault)
            self.detached[vid] = fault
        return {"AttachTime": view.launched, "Device": volume["device"], "InstanceId": view.instance_id,
                "State": "detaching", "VolumeId": vid}

    def _attach_volume(self, params: dict, region: str) -> dict:
        self._find_volume(params["VolumeId"])
        self._view(params["InstanceId"])
        # Not yet: after a yank the guest keeps the dead device (a new one would be vdc, not
        # the chain's vdb), and QEMU deletes an unplugged -drive with its device.
        raise AwsError("UnsupportedOperation", "The lab cannot attach volumes yet: replace the instance instead "
                       "(TerminateInstanceInAutoScalingGroup).")

    def _create_tags(self, params: dict, region: str) -> dict:
        for resource in params["Resources"]:
            if resource.startswith("vol-"):
                self._find_volume(resource)
            elif resource.startswith("i-"):
                self._view(resource)
            else:
                raise AwsError("InvalidID", f"The ID '{resource}' is not valid")
            for tag in params["Tags"]:
                self.tags.setdefault(resource, {})[tag["Key"]] = tag.get("Value", "")
        return {}

    def _state_change(self, view: View, new: str) -> dict:
        return {"InstanceId": view.instance_id, "PreviousState": _state(view.state), "CurrentState": _state(new)}

    def _stop_instances(self, params: dict, region: str) -> dict:
        views = [self._view(iid) for iid in params["InstanceIds"]]
        changes = []
        for view in views:
            if view.state in ("terminated", "shutting-down"):
                raise AwsError("IncorrectState", f"This instance '{view.instance_id}' is not in a state from which it can be stopped.")
        for view in views:
            if view.state == "running":
                view.member.instance.machine.monitor.command("stop")  # vCPUs halt, memory and disks stay
                view.asg.mark_stopped(view.instance_id, True)
            changes.append(self._state_change(view, "stopping" if view.state == "running" else view.state))
        return {"StoppingInstances": changes}

    def _start_instances(self, params: dict, region: str) -> dict:
        views = [self._view(iid) for iid in params["InstanceIds"]]
        for view in views:
            if view.state not in ("stopped", "running"):
                raise AwsError("IncorrectState", f"The instance '{view.instance_id}' is not in a state from which it can be started.")
        changes = []
        for view in views:
            if view.state == "stopped":
                view.member.instance.machine.monitor.command("cont")
                view.member.instance.machine.channel.set_clock(time.time())
                view.asg.mark_stopped(view.instance_id, False)
            changes.append(self._state_change(view, "pending" if view.state == "stopped" else "running"))
        return {"StartingInstances": changes}

    def _reboot_instances(self, params: dict, region: str) -> dict:
        views = [self._view(iid) for iid in params["InstanceIds"]]
        for view in views:
            if view.state != "running":
                raise AwsError("IncorrectState", f"The instance '{view.instance_id}' is not in a state from which it can be rebooted.")
        for view in views:
            view.member.instance.machine.monitor.command("system_reset")
        return {}

    def _terminate_instances(self, params: dict, region: str) -> dict:
        changes = []
        for view in [self._view(iid) for iid in params["InstanceIds"]]:
            if view.state != "terminated":
                view.asg.terminate_instance(view.instance_id, decrement_desired=False, reason="TerminateInstances")
            changes.append(self._state_change(view, "shutting-down" if view.state != "terminated" else "terminated"))
        return {"TerminatingInstances": changes}

    # -- Auto Scaling ------------------------------------------------------------------------

    def _arn(self, name: str, region: str) -> str:
        return (f"arn:aws:autoscaling:{region}:{ACCOUNT}:autoScalingGroup:"
                f"{uuid.uuid5(uuid.NAMESPACE_URL, name)}:autoScalingGroupName/{name}")

    def _asg_instance(self, view: View, region: str, with_group: bool) -> dict:
        member = view.member
        unhealthy = member.health == "Unhealthy" or (view.asg.lb.targets.get(view.instance_id) is not None
                                                     and view.asg.lb.state(view.instance_id) == "unhealthy")
        out = {"InstanceId": view.instance_id, "InstanceType": INSTANCE_TYPE, "AvailabilityZone": region + "a",
               "LifecycleState": "InService" if view.state == "running" else "Terminating",
               "HealthStatus": "Unhealthy" if unhealthy or view.state != "running" else "Healthy",
               "ProtectedFromScaleIn": False}
        if with_group:
            out["AutoScalingGroupName"] = view.group
        return out

    def _group(self, name: str) -> AutoScalingGroup:
        if name not in self.groups:
            raise AwsError("ValidationError", f"AutoScalingGroup name not found - AutoScalingGroup '{name}' not found")
        return self.groups[name]

    def _describe_groups(self, params: dict, region: str) -> dict:
        names = params.get("AutoScalingGroupNames") or list(self.groups)
        live = [view for view in self._views() if view.member is not None and view.state != "terminated"]
        out = []
        for name in names:
            if name not in self.groups:
                continue   # as on AWS: unknown names are left out, not an error
            asg = self.groups[name]
            out.append({"AutoScalingGroupName": name, "AutoScalingGroupARN": self._arn(name, region),
                        "MinSize": asg.min_size, "MaxSize": asg.max_size, "DesiredCapacity": asg.desired,
                        "DefaultCooldown": 300, "AvailabilityZones": [region + "a"], "HealthCheckType": "ELB",
                        "HealthCheckGracePeriod": int(asg.grace_period), "CreatedTime": self.created,
                        "TargetGroupARNs": [self._target_group_arn(name, asg.check_name, region)],
                        "Instances": [self._asg_instance(v, region, False) for v in live if v.group == name],
                        "Tags": [{"ResourceId": name, "ResourceType": "auto-scaling-group", "Key": "Name",
                                  "Value": name, "PropagateAtLaunch": True}]})
        return {"AutoScalingGroups": out}

    def _describe_asg_instances(self, params: dict, region: str) -> dict:
        ids = params.get("InstanceIds")
        views = [view for view in self._views() if view.member is not None and view.state != "terminated"
                 and (not ids or view.instance_id in ids)]
        return {"AutoScalingInstances": [self._asg_instance(view, region, True) for view in views]}

    def _managed(self, instance_id: str) -> View:
        for view in self._views():
            if view.instance_id == instance_id and view.member is not None and view.state != "terminated":
                return view
        raise AwsError("ValidationError", f"Instance Id not found - No managed instance found for instance ID: {instance_id}")

    def _set_instance_health(self, params: dict, region: str) -> dict:
        view = self._managed(params["InstanceId"])
        if params["HealthStatus"] not in ("Healthy", "Unhealthy"):
            raise AwsError("ValidationError", "Valid instance health states are: [Healthy, Unhealthy].")
        view.asg.set_instance_health(view.instance_id, params["HealthStatus"],
                                     respect_grace=params.get("ShouldRespectGracePeriod", True))
        return {}

    def _set_desired_capacity(self, params: dict, region: str) -> dict:
        asg = self._group(params["AutoScalingGroupName"])
        wanted = params["DesiredCapacity"]
        if wanted > asg.max_size:
            raise AwsError("ValidationError", f"New SetDesiredCapacity value {wanted} is above max value "
                           f"{asg.max_size} for the AutoScalingGroup.")
        if wanted < asg.min_size:
            raise AwsError("ValidationError", f"New SetDesiredCapacity value {wanted} is below min value "
                           f"{asg.min_size} for the AutoScalingGroup.")
        asg.set_desired(wanted)
        return {}

    def _terminate_in_group(self, params: dict, region: str) -> dict:
        view = self._managed(params["InstanceId"])
        decrement = params["ShouldDecrementDesiredCapacity"]
        if decrement and view.asg.desired - 1 < view.asg.min_size:
            raise AwsError("ValidationError", "Currently, desiredSize equals minSize "
                           f"({view.asg.min_size}). Terminating instance without replacement will violate group's min size constraint. "
                           "Either set shouldDecrementDesiredCapacity flag to false or lower group's min size.")
        view.asg.terminate_instance(view.instance_id, decrement_desired=decrement,
                                    reason="TerminateInstanceInAutoScalingGroup")
        cause = ("At %s an instance was taken out of service in response to a user request%s." %
                 (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  ", shrinking the capacity" if decrement else ""))
        return {"Activity": {"ActivityId": str(uuid.uuid4()), "AutoScalingGroupName": view.group,
                             "Description": f"Terminating EC2 instance: {view.instance_id}", "Cause": cause,
                             "StartTime": time.time(), "StatusCode": "InProgress", "Progress": 0}}

    # -- ELBv2 -------------------------------------------------------------------------------

    def _target_groups(self) -> dict[str, tuple[str, str, LoadBalancer]]:
        """Target group name -> (group, check, load balancer)."""
        out = {}
        for name, asg in self.groups.items():
            lbs = {asg.check_name: asg.lb, **{check: lb for check, (lb, _) in asg.watchers.items()}}
            for check, lb in lbs.items():
                out[f"{name}-{check}"] = (name, check, lb)
        return out

    def _target_group_arn(self, group: str, check: str, region: str) -> str:
        name = f"{group}-{check}"
        return (f"arn:aws:elasticloadbalancing:{region}:{ACCOUNT}:targetgroup/{name}/"
                f"{hashlib.sha256(name.encode()).hexdigest()[:16]}")

    def _describe_target_groups(self, params: dict, region: str) -> dict:
        groups = self._target_groups()
        names = params.get("Names")
        arns = params.get("TargetGroupArns")
        out = []
        for name, (group, check, lb) in groups.items():
            arn = self._target_group_arn(group, check, region)
            if (names and name not in names) or (arns and arn not in arns):
                continue
            port, path = CHECKS.get(check, (0, "/"))
            out.append({"TargetGroupArn": arn, "TargetGroupName": name, "Protocol": "HTTP", "Port": port,
                        "HealthCheckProtocol": "HTTP", "HealthCheckPort": str(port), "HealthCheckPath": path,
                        "HealthCheckEnabled": True, "HealthCheckIntervalSeconds": max(5, round(lb.check.interval)),
                        "HealthCheckTimeoutSeconds": max(2, round(lb.check.timeout)),
                        "HealthyThresholdCount": lb.check.healthy_threshold,
                        "UnhealthyThresholdCount": lb.check.unhealthy_threshold,
                        "Matcher": {"HttpCode": "200"}, "TargetType": "instance"})
        for name in names or []:
            if name not in groups:
                raise AwsError("TargetGroupNotFound", "One or more target groups not found")
        if arns and not out:
            raise AwsError("TargetGroupNotFound", f"Target groups '{', '.join(arns)}' not found")
        return {"TargetGroups": out}

    def _describe_target_health(self, params: dict, region: str) -> dict:
        arn = params["TargetGroupArn"]
        found = [(check, lb) for name, (group, check, lb) in self._target_groups().items()
                 if self._target_group_arn(group, check, region) == arn or name == arn.rsplit("/", 2)[-2:][0]]
        if not found:
            raise AwsError("TargetGroupNotFound", f"Target groups '{arn}' not found")
        check, lb = found[0]
        port = CHECKS.get(check, (0, "/"))[0]
        wanted = [target["Id"] for target in params.get("Targets", [])]
        out = []
        for target_id, target in list(lb.targets.items()):
            if wanted and target_id not in wanted:
                continue
            out.append({"Target": {"Id": target_id, "Port": port}, "HealthCheckPort": str(port),
                        "TargetHealth": _target_health(target)})
        for target_id in wanted:
            if target_id not in lb.targets:
                out.append({"Target": {"Id": target_id, "Port": port}, "TargetHealth": {
                    "State": "unused", "Reason": "Target.NotRegistered",
                    "Description": "Target is not registered to the target group"}})
        return {"TargetHealthDescriptions": out}


def _target_health(target) -> dict:
    if target.state == "healthy":
        return {"State": "healthy"}
    if target.state == "initial":
        return {"State": "initial", "Reason": "Elb.InitialHealthChecking", "Description": "Initial health checks in progress"}
    status = target.samples[-1][1] if target.samples else None
    if status is None:
        return {"State": "unhealthy", "Reason": "Target.Timeout", "Description": "Request timed out"}
    return {"State": "unhealthy", "Reason": "Target.ResponseCodeMismatch",
            "Description": f"Health checks failed with these codes: [{status}]"}


def _state(name: str) -> dict:
    return {"Code": STATES[name], "Name": name}


def _instance_field(api: AwsApi, view: View, name: str, region: str) -> list[str]:
    volumes = [v for v in api._volumes(view) if v["id"] not in api.detached]
    fields = {"instance-id": [view.instance_id], "instance-state-name": [view.state],
              "instance-state-code": [str(STATES[view.state])], "instance-type": [INSTANCE_TYPE],
              "availability-zone": [region + "a"], "image-id": ["ami-0unitchaos0000000"],
              "block-device-mapping.volume-id": [v["id"] for v in volumes],
              "block-device-mapping.device-name": [v["device"] for v in volumes],
              "root-device-name": [ROOT_DEVICE], "root-device-type": ["ebs"],
              "reservation-id": ["r-" + view.instance_id[2:]], "owner-id": [ACCOUNT],
              "private-ip-address": ["10.0.2.15"] if view.state == "running" else []}
    return _tag_field(api._tags(view.instance_id, view.group), name, fields)


def _tag_field(tags: list[dict], name: str, fields: dict[str, list[str]]) -> list[str]:
    if name.startswith("tag:"):
        return [tag["Value"] for tag in tags if tag["Key"] == name[4:]]
    if name == "tag-key":
        return [tag["Key"] for tag in tags]
    if name == "tag-value":
        return [tag["Value"] for tag in tags]
    if name not in fields:
        raise AwsError("InvalidParameterValue", f"The filter '{name}' is invalid")
    return fields[name]


def _filtered(items: list, filters: list[dict], field) -> list:
    """EC2's filter semantics: every filter must match (AND), any of its values (OR),
    with * and ? as wildcards."""
    out = []
    for item in items:
        if all(any(fnmatchcase(have, want) for have in field(item, f.get("Name", "")) for want in f.get("Values", []))
               for f in filters):
            out.append(item)
    return out
