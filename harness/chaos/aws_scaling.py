"""The Auto Scaling and ELBv2 operations of `unitchaos serve --aws` (see aws_api.py): each
lab group is an auto scaling group with one target group per health check, NAME-stock and
NAME-deep; the group's own check decides replacements."""
import hashlib
import time
import uuid

from .autoscaling import AutoScalingGroup
from .aws_resources import ACCOUNT, INSTANCE_TYPE, View
from .aws_wire import AwsError
from ..evidence.health_watch import CHECKS
from ..evidence.loadbalancer import LoadBalancer


def _arn(name: str, region: str) -> str:
    return (f"arn:aws:autoscaling:{region}:{ACCOUNT}:autoScalingGroup:"
            f"{uuid.uuid5(uuid.NAMESPACE_URL, name)}:autoScalingGroupName/{name}")


def _asg_instance(view: View, region: str, with_group: bool) -> dict:
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


def _group(api, name: str) -> AutoScalingGroup:
    if name not in api.groups:
        raise AwsError("ValidationError", f"AutoScalingGroup name not found - AutoScalingGroup '{name}' not found")
    return api.groups[name]


def describe_groups(api, params: dict, region: str) -> dict:
    names = params.get("AutoScalingGroupNames") or list(api.groups)
    live = [view for view in api.views() if view.member is not None and view.state != "terminated"]
    out = []
    for name in names:
        if name not in api.groups:
            continue   # as on AWS: unknown names are left out, not an error
        asg = api.groups[name]
        out.append({"AutoScalingGroupName": name, "AutoScalingGroupARN": _arn(name, region),
                    "MinSize": asg.min_size, "MaxSize": asg.max_size, "DesiredCapacity": asg.desired,
                    "DefaultCooldown": 300, "AvailabilityZones": [region + "a"], "HealthCheckType": "ELB",
                    "HealthCheckGracePeriod": int(asg.grace_period), "CreatedTime": api.created,
                    "TargetGroupARNs": [_target_group_arn(name, asg.check_name, region)],
                    "Instances": [_asg_instance(v, region, False) for v in live if v.group == name],
                    "Tags": [{"ResourceId": name, "ResourceType": "auto-scaling-group", "Key": "Name",
                              "Value": name, "PropagateAtLaunch": True}]})
    return {"AutoScalingGroups": out}


def describe_asg_instances(api, params: dict, region: str) -> dict:
    ids = params.get("InstanceIds")
    views = [view for view in api.views() if view.member is not None and view.state != "terminated"
             and (not ids or view.instance_id in ids)]
    return {"AutoScalingInstances": [_asg_instance(view, region, True) for view in views]}


def _managed(api, instance_id: str) -> View:
    for view in api.views():
        if view.instance_id == instance_id and view.member is not None and view.state != "terminated":
            return view
    raise AwsError("ValidationError", f"Instance Id not found - No managed instance found for instance ID: {instance_id}")


def set_instance_health(api, params: dict, region: str) -> dict:
    view = _managed(api, params["InstanceId"])
    if params["HealthStatus"] not in ("Healthy", "Unhealthy"):
        raise AwsError("ValidationError", "Valid instance health states are: [Healthy, Unhealthy].")
    view.asg.set_instance_health(view.instance_id, params["HealthStatus"],
                                 respect_grace=params.get("ShouldRespectGracePeriod", True))
    return {}


def set_desired_capacity(api, params: dict, region: str) -> dict:
    asg = _group(api, params["AutoScalingGroupName"])
    wanted = params["DesiredCapacity"]
    if wanted > asg.max_size:
        raise AwsError("ValidationError", f"New SetDesiredCapacity value {wanted} is above max value "
                       f"{asg.max_size} for the AutoScalingGroup.")
    if wanted < asg.min_size:
        raise AwsError("ValidationError", f"New SetDesiredCapacity value {wanted} is below min value "
                       f"{asg.min_size} for the AutoScalingGroup.")
    asg.set_desired(wanted)
    return {}


def terminate_in_group(api, params: dict, region: str) -> dict:
    view = _managed(api, params["InstanceId"])
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


def _target_groups(api) -> dict[str, tuple[str, str, LoadBalancer]]:
    """Target group name -> (group, check, load balancer)."""
    out = {}
    for name, asg in api.groups.items():
        lbs = {asg.check_name: asg.lb, **{check: lb for check, (lb, _) in asg.watchers.items()}}
        for check, lb in lbs.items():
            out[f"{name}-{check}"] = (name, check, lb)
    return out


def _target_group_arn(group: str, check: str, region: str) -> str:
    name = f"{group}-{check}"
    return (f"arn:aws:elasticloadbalancing:{region}:{ACCOUNT}:targetgroup/{name}/"
            f"{hashlib.sha256(name.encode()).hexdigest()[:16]}")


def describe_target_groups(api, params: dict, region: str) -> dict:
    groups = _target_groups(api)
    names = params.get("Names")
    arns = params.get("TargetGroupArns")
    out = []
    for name, (group, check, lb) in groups.items():
        arn = _target_group_arn(group, check, region)
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


def describe_target_health(api, params: dict, region: str) -> dict:
    arn = params["TargetGroupArn"]
    found = [(check, lb) for name, (group, check, lb) in _target_groups(api).items()
             if _target_group_arn(group, check, region) == arn or name == arn.rsplit("/", 2)[-2:][0]]
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


OPERATIONS = {
    "DescribeAutoScalingGroups": describe_groups, "DescribeAutoScalingInstances": describe_asg_instances,
    "SetInstanceHealth": set_instance_health, "SetDesiredCapacity": set_desired_capacity,
    "TerminateInstanceInAutoScalingGroup": terminate_in_group,
    "DescribeTargetGroups": describe_target_groups, "DescribeTargetHealth": describe_target_health,
}
