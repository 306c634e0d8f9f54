"""The AWS query wire format, server side, driven by botocore's own service models: a
form-encoded request becomes the operation's input (typed by its shapes), an output
becomes the XML a real endpoint sends (namespace, result wrapper, request id), and an
error becomes the XML botocore parses into ClientError.Code. Nothing here knows an
operation: the models describe every shape.

Three protocols share the format: "query" (Auto Scaling, ELBv2: lists as Name.member.N,
answers wrapped in <OpResult> and <ResponseMetadata>) and "ec2" (lists as Name.N under
the member's queryName, answers flat with <requestId>, errors in <Response><Errors>).
"""
import datetime
import functools
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape

# The services the lab answers, by the Version parameter every query request carries.
SERVICES = {"ec2": "2016-11-15", "autoscaling": "2011-01-01", "elbv2": "2015-12-01"}


class AwsError(Exception):
    """An answer other than 200, with the code and message a real endpoint gives."""

    def __init__(self, code: str, message: str, status: int = 400, sender: bool = True):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status, self.sender = code, message, status, sender


@functools.cache
def _session() -> botocore.session.Session:
    return botocore.session.get_session()


@functools.cache
def service_model(name: str) -> ServiceModel:
    return _session().get_service_model(name)


def service_for_version(version: str | None) -> str:
    for name, api_version in SERVICES.items():
        if version == api_version:
            return name
    if not version:
        raise AwsError("MissingParameter", "The request must contain the parameter Version")
    raise AwsError("NoSuchVersion", f"The requested version ({version}) is not valid.")


@dataclass
class Request:
    service: str
    operation: OperationModel
    params: dict
    request_id: str

    @property
    def ec2(self) -> bool:
        return self.operation.service_model.protocol == "ec2"


def parse(form: dict[str, str], known_operations: set[str]) -> Request:
    """The operation and its typed input from a query request's form fields."""
    service = service_for_version(form.get("Version"))
    model = service_model(service)
    action = form.get("Action")
    if not action:
        raise AwsError("MissingAction", "The request must contain the parameter Action")
    if action not in model.operation_names or action not in known_operations:
        raise AwsError("InvalidAction", f"The action {action} is not valid for this web service.")
    operation = model.operation_model(action)
    ec2 = model.protocol == "ec2"
    params = _read(operation.input_shape, form, "", ec2) if operation.input_shape else {}
    return Request(service, operation, params or {}, str(uuid.uuid4()))


def _key(member_name: str, shape: Shape, ec2: bool) -> str:
    if ec2:
        if "queryName" in shape.serialization:
            return shape.serialization["queryName"]
        name = shape.serialization.get("name")
        return name[0].upper() + name[1:] if name else member_name
    return shape.serialization.get("name", member_name)


def _read(shape: Shape, form: dict[str, str], prefix: str, ec2: bool):
    kind = shape.type_name
    if kind == "structure":
        out = {}
        for name, member in shape.members.items():
            key = _key(name, member, ec2)
            value = _read(member, form, f"{prefix}.{key}" if prefix else key, ec2)
            if value is not None:
                out[name] = value
        missing = [name for name in shape.required_members if name not in out]
        if missing and (out or not prefix):
            where = f"{prefix}." if prefix else ""
            raise AwsError("MissingParameter" if ec2 else "ValidationError",
                           f"The request must contain the parameter {where}{_key(missing[0], shape.members[missing[0]], ec2)}")
        return out if out or not prefix else None
    if kind == "list":
        if ec2 or shape.serialization.get("flattened"):
            item_prefix = prefix
        else:
            item_prefix = f"{prefix}.{shape.member.serialization.get('name', 'member')}"
        items = []
        while True:
            item_key = f"{item_prefix}.{len(items) + 1}"
            if not any(key == item_key or key.startswith(item_key + ".") for key in form):
                # An empty list is sent as the bare name with an empty value.
                return items if items or prefix in form else None
            items.append(_read(shape.member, form, item_key, ec2))
    if kind == "map":
        entries = {}
        for index in range(1, len(form) + 1):
            base = f"{prefix}.entry.{index}"
            if f"{base}.key" not in form:
                break
            entries[form[f"{base}.key"]] = _read(shape.value, form, f"{base}.value", ec2)
        return entries or None
    if prefix not in form:
        return None
    return _scalar(shape, form[prefix], prefix)


def _scalar(shape: Shape, text: str, name: str):
    try:
        if shape.type_name in ("integer", "long"):
            return int(text)
        if shape.type_name in ("float", "double"):
            return float(text)
        if shape.type_name == "boolean":
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if shape.type_name == "timestamp":
            return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AwsError("InvalidParameterValue", f"Value ({text}) for parameter {name} is invalid.") from None
    if shape.enum and text not in shape.enum:
        raise AwsError("InvalidParameterValue", f"Value ({text}) for parameter {name} is invalid. "
                       f"Valid values: {', '.join(shape.enum)}")
    return text


# -- answers -----------------------------------------------------------------------------

def answer(request: Request, output: dict | None) -> bytes:
    """The XML a real endpoint sends for OUTPUT (keys: the output shape's member names)."""
    operation = request.operation
    namespace = operation.service_model.metadata["xmlNamespace"]
    root = ET.Element(f"{operation.name}Response", xmlns=namespace)
    shape = operation.output_shape
    if request.ec2:
        ET.SubElement(root, "requestId").text = request.request_id
        if shape is not None:
            _write(root, shape, output or {})
    else:
        if shape is not None:
            _write(ET.SubElement(root, shape.serialization.get("resultWrapper", f"{operation.name}Result")),
                   shape, output or {})
        ET.SubElement(ET.SubElement(root, "ResponseMetadata"), "RequestId").text = request.request_id
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def error(err: AwsError, protocol: str, namespace: str | None, request_id: str) -> bytes:
    if protocol == "ec2":
        root = ET.Element("Response")
        item = ET.SubElement(ET.SubElement(root, "Errors"), "Error")
        ET.SubElement(item, "Code").text = err.code
        ET.SubElement(item, "Message").text = err.message
        ET.SubElement(root, "RequestID").text = request_id
    else:
        root = ET.Element("ErrorResponse", **({"xmlns": namespace} if namespace else {}))
        item = ET.SubElement(root, "Error")
        ET.SubElement(item, "Type").text = "Sender" if err.sender else "Receiver"
        ET.SubElement(item, "Code").text = err.code
        ET.SubElement(item, "Message").text = err.message
        ET.SubElement(root, "RequestId").text = request_id
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _write(parent: ET.Element, shape: Shape, value) -> None:
    kind = shape.type_name
    if kind == "structure":
        for name, member in shape.members.items():
            if value.get(name) is None:
                continue
            tag = member.serialization.get("name", name)
            if member.type_name == "list" and member.serialization.get("flattened"):
                for item in value[name]:
                    _write(ET.SubElement(parent, tag), member.member, item)
            else:
                _write(ET.SubElement(parent, tag), member, value[name])
    elif kind == "list":
        tag = shape.member.serialization.get("name", "member")
        for item in value:
            _write(ET.SubElement(parent, tag), shape.member, item)
    elif kind == "map":
        for key, item in value.items():
            entry = ET.SubElement(parent, "entry")
            ET.SubElement(entry, "key").text = str(key)
            _write(ET.SubElement(entry, "value"), shape.value, item)
    elif kind == "boolean":
        parent.text = "true" if value else "false"
    elif kind == "timestamp":
        moment = value if isinstance(value, datetime.datetime) else datetime.datetime.fromtimestamp(value, datetime.UTC)
        parent.text = moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    else:
        parent.text = str(value)
