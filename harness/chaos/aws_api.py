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

Operations live in aws_ec2 and aws_scaling; this module answers the wire and says what
instances there are.
"""
import logging
import threading
import time
import uuid
from urllib.parse import parse_qsl

from . import aws_auth, aws_ec2, aws_scaling, aws_wire
from .autoscaling import AutoScalingGroup
from .aws_resources import DATA_DEVICE, ROOT_DEVICE, View, volume_id
from .aws_wire import AwsError
from ..errors import UserError

log = logging.getLogger(__name__)


class AwsApi:
    """EC2, Auto Scaling and ELBv2 over GROUPS: `handle` answers one query request."""

    def __init__(self, groups: dict[str, AutoScalingGroup], credentials: tuple[str, str] | None = None,
                 default_region: str = "us-east-1"):
        self.groups = groups
        self.credentials = credentials
        self.default_region = default_region
        self.calls: list[dict] = []          # what was asked, for the server's log and the report
        self.on_call = None                  # called with each call's record as it is answered
        self.detached: dict[str, str] = {}   # volume id -> "yank" | "unplug"
        self.tags: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()         # one detach at a time
        self.created = time.time()
        self._operations = {**aws_ec2.OPERATIONS, **aws_scaling.OPERATIONS}

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
            output = self._operations[request.operation.name](self, request.params, region)
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

    def views(self) -> list[View]:
        """Every instance the groups ever launched, terminated ones too, as EC2 would list them."""
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

    def view(self, instance_id: str) -> View:
        """INSTANCE_ID's view; InvalidInstanceID.NotFound if there is none."""
        for view in self.views():
            if view.instance_id == instance_id:
                return view
        raise AwsError("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")

    def views_for(self, ids: list[str] | None) -> list[View]:
        """The views of IDS, or of every instance when IDS is empty."""
        if not ids:
            return self.views()
        return [self.view(iid) for iid in ids]

    def volumes(self, view: View) -> list[dict]:
        """VIEW's root and data volumes (none once terminated)."""
        if view.state == "terminated":
            return []   # DeleteOnTermination: both go with the instance
        return [{"device": device, "id": volume_id(view.instance_id, device), "root": device == ROOT_DEVICE,
                 "size": 3 if device == ROOT_DEVICE else 1}
                for device in (ROOT_DEVICE, DATA_DEVICE)]

    def tag_list(self, resource: str, group: str | None = None) -> list[dict]:
        """RESOURCE's tags as EC2 lists them, with the group's tag when GROUP is given."""
        tags = {"aws:autoscaling:groupName": group} if group else {}
        tags.update(self.tags.get(resource, {}))
        return [{"Key": key, "Value": value} for key, value in tags.items()]
