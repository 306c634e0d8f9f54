"""The EC2 operations of `unitchaos serve --aws` (see aws_api.py): instances and their
volumes, as the groups' members are. DetachVolume injects the yank (Force) or the unplug."""
import time

from .aws_resources import (ACCOUNT, INSTANCE_TYPE, ROOT_DEVICE, STATES, View, filtered, state,
                            tag_field)
from .aws_wire import AwsError


def _instance(api, view: View, region: str) -> dict:
    out = {"InstanceId": view.instance_id, "ImageId": "ami-0unitchaos0000000", "InstanceType": INSTANCE_TYPE,
           "State": state(view.state), "LaunchTime": view.launched, "Placement": {"AvailabilityZone": region + "a"},
           "RootDeviceName": ROOT_DEVICE, "RootDeviceType": "ebs", "Architecture": "x86_64",
           "Hypervisor": "xen", "VirtualizationType": "hvm", "Tags": api.tag_list(view.instance_id, view.group),
           "BlockDeviceMappings": [{"DeviceName": v["device"], "Ebs": {
               "VolumeId": v["id"], "Status": "attached", "AttachTime": view.launched, "DeleteOnTermination": True}}
               for v in api.volumes(view) if v["id"] not in api.detached]}
    if view.state == "running":
        out["PrivateIpAddress"] = "10.0.2.15"
    return out


def describe_instances(api, params: dict, region: str) -> dict:
    views = filtered(api.views_for(params.get("InstanceIds")), params.get("Filters", []),
                      lambda view, name: _instance_field(api, view, name, region))
    return {"Reservations": [{"ReservationId": "r-" + view.instance_id[2:], "OwnerId": ACCOUNT,
                              "Instances": [_instance(api, view, region)]} for view in views]}


def describe_instance_status(api, params: dict, region: str) -> dict:
    views = api.views_for(params.get("InstanceIds"))
    if not params.get("IncludeAllInstances"):
        views = [view for view in views if view.state == "running"]
    views = filtered(views, params.get("Filters", []), lambda view, name: _instance_field(api, view, name, region))
    statuses = []
    for view in views:
        ok = view.state == "running"
        check = {"Status": "ok" if ok else "not-applicable",
                 "Details": [{"Name": "reachability", "Status": "passed" if ok else "failed"}]}
        statuses.append({"InstanceId": view.instance_id, "AvailabilityZone": region + "a",
                         "InstanceState": state(view.state), "SystemStatus": check, "InstanceStatus": check})
    return {"InstanceStatuses": statuses}


def _all_volumes(api) -> list[tuple[View, dict]]:
    return [(view, volume) for view in api.views() for volume in api.volumes(view)]


def _find_volume(api, vid: str) -> tuple[View, dict]:
    for view, volume in _all_volumes(api):
        if volume["id"] == vid:
            return view, volume
    raise AwsError("InvalidVolume.NotFound", f"The volume '{vid}' does not exist.")


def describe_volumes(api, params: dict, region: str) -> dict:
    pairs = ([_find_volume(api, vid) for vid in params["VolumeIds"]] if params.get("VolumeIds")
             else _all_volumes(api))
    pairs = filtered(pairs, params.get("Filters", []), lambda pair, name: _volume_field(api, pair, name, region))
    return {"Volumes": [_volume(api, view, volume, region) for view, volume in pairs]}


def _volume(api, view: View, volume: dict, region: str) -> dict:
    attached = volume["id"] not in api.detached
    return {"VolumeId": volume["id"], "Size": volume["size"], "AvailabilityZone": region + "a",
            "State": "in-use" if attached else "available", "CreateTime": view.launched, "VolumeType": "gp3",
            "Encrypted": False, "Tags": api.tag_list(volume["id"]),
            "Attachments": [{"AttachTime": view.launched, "Device": volume["device"], "InstanceId": view.instance_id,
                             "State": "attached", "VolumeId": volume["id"], "DeleteOnTermination": True}]
            if attached else []}


def _volume_field(api, pair, name: str, region: str) -> list[str]:
    view, volume = pair
    attached = volume["id"] not in api.detached
    fields = {"volume-id": [volume["id"]], "status": ["in-use" if attached else "available"],
              "availability-zone": [region + "a"], "size": [str(volume["size"])], "volume-type": ["gp3"],
              "attachment.instance-id": [view.instance_id] if attached else [],
              "attachment.device": [volume["device"]] if attached else [],
              "attachment.status": ["attached"] if attached else [],
              "attachment.delete-on-termination": ["true"] if attached else []}
    return tag_field(api.tag_list(volume["id"]), name, fields)


def detach_volume(api, params: dict, region: str) -> dict:
    vid = params["VolumeId"]
    view, volume = _find_volume(api, vid)
    if vid in api.detached:
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
    with api.lock:
        view.member.instance.inject(fault)
        api.detached[vid] = fault
    return {"AttachTime": view.launched, "Device": volume["device"], "InstanceId": view.instance_id,
            "State": "detaching", "VolumeId": vid}


def attach_volume(api, params: dict, region: str) -> dict:
    _find_volume(api, params["VolumeId"])
    api.view(params["InstanceId"])
    # Not yet: after a yank the guest keeps the dead device (a new one would be vdc, not
    # the chain's vdb), and QEMU deletes an unplugged -drive with its device.
    raise AwsError("UnsupportedOperation", "The lab cannot attach volumes yet: replace the instance instead "
                   "(TerminateInstanceInAutoScalingGroup).")


def create_tags(api, params: dict, region: str) -> dict:
    for resource in params["Resources"]:
        if resource.startswith("vol-"):
            _find_volume(api, resource)
        elif resource.startswith("i-"):
            api.view(resource)
        else:
            raise AwsError("InvalidID", f"The ID '{resource}' is not valid")
        for tag in params["Tags"]:
            api.tags.setdefault(resource, {})[tag["Key"]] = tag.get("Value", "")
    return {}


def _state_change(view: View, new: str) -> dict:
    return {"InstanceId": view.instance_id, "PreviousState": state(view.state), "CurrentState": state(new)}


def stop_instances(api, params: dict, region: str) -> dict:
    views = [api.view(iid) for iid in params["InstanceIds"]]
    changes = []
    for view in views:
        if view.state in ("terminated", "shutting-down"):
            raise AwsError("IncorrectState", f"This instance '{view.instance_id}' is not in a state from which it can be stopped.")
    for view in views:
        if view.state == "running":
            view.member.instance.machine.monitor.command("stop")  # vCPUs halt, memory and disks stay
            view.asg.mark_stopped(view.instance_id, True)
        changes.append(_state_change(view, "stopping" if view.state == "running" else view.state))
    return {"StoppingInstances": changes}


def start_instances(api, params: dict, region: str) -> dict:
    views = [api.view(iid) for iid in params["InstanceIds"]]
    for view in views:
        if view.state not in ("stopped", "running"):
            raise AwsError("IncorrectState", f"The instance '{view.instance_id}' is not in a state from which it can be started.")
    changes = []
    for view in views:
        if view.state == "stopped":
            view.member.instance.machine.monitor.command("cont")
            view.member.instance.machine.channel.set_clock(time.time())
            view.asg.mark_stopped(view.instance_id, False)
        changes.append(_state_change(view, "pending" if view.state == "stopped" else "running"))
    return {"StartingInstances": changes}


def reboot_instances(api, params: dict, region: str) -> dict:
    views = [api.view(iid) for iid in params["InstanceIds"]]
    for view in views:
        if view.state != "running":
            raise AwsError("IncorrectState", f"The instance '{view.instance_id}' is not in a state from which it can be rebooted.")
    for view in views:
        view.member.instance.machine.monitor.command("system_reset")
    return {}


def terminate_instances(api, params: dict, region: str) -> dict:
    changes = []
    for view in [api.view(iid) for iid in params["InstanceIds"]]:
        if view.state != "terminated":
            view.asg.terminate_instance(view.instance_id, decrement_desired=False, reason="TerminateInstances")
        changes.append(_state_change(view, "shutting-down" if view.state != "terminated" else "terminated"))
    return {"TerminatingInstances": changes}


def _instance_field(api, view: View, name: str, region: str) -> list[str]:
    volumes = [v for v in api.volumes(view) if v["id"] not in api.detached]
    fields = {"instance-id": [view.instance_id], "instance-state-name": [view.state],
              "instance-state-code": [str(STATES[view.state])], "instance-type": [INSTANCE_TYPE],
              "availability-zone": [region + "a"], "image-id": ["ami-0unitchaos0000000"],
              "block-device-mapping.volume-id": [v["id"] for v in volumes],
              "block-device-mapping.device-name": [v["device"] for v in volumes],
              "root-device-name": [ROOT_DEVICE], "root-device-type": ["ebs"],
              "reservation-id": ["r-" + view.instance_id[2:]], "owner-id": [ACCOUNT],
              "private-ip-address": ["10.0.2.15"] if view.state == "running" else []}
    return tag_field(api.tag_list(view.instance_id, view.group), name, fields)


OPERATIONS = {
    "DescribeInstances": describe_instances, "DescribeInstanceStatus": describe_instance_status,
    "DescribeVolumes": describe_volumes, "DetachVolume": detach_volume,
    "StopInstances": stop_instances, "StartInstances": start_instances,
    "RebootInstances": reboot_instances, "TerminateInstances": terminate_instances,
    "CreateTags": create_tags, "AttachVolume": attach_volume,
}
