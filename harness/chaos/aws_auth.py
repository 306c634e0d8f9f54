"""SigV4 for the lab's AWS endpoint. Without credentials configured any request passes
(clients sign with whatever keys they have). With a username and password, only the access
key id equal to the username passes, and the signature is computed again with the
password as the secret key, by botocore's own signer, over the headers the client signed.
"""
import hmac
import re
from dataclasses import dataclass

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .aws_wire import AwsError

_AUTHORIZATION = re.compile(r"AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
                            r"(?P<service>[^/]+)/aws4_request,\s*SignedHeaders=(?P<signed>[^,\s]+),\s*"
                            r"Signature=(?P<signature>[0-9a-f]{64})")


@dataclass(frozen=True)
class Scope:
    access_key: str | None
    region: str | None
    service: str | None


def scope(headers) -> Scope:
    """Who signed and for which region and service (all None for an unsigned request)."""
    match = _AUTHORIZATION.match(headers.get("Authorization", ""))
    if not match:
        return Scope(None, None, None)
    return Scope(match["key"], match["region"], match["service"])


def verify(method: str, path: str, headers, body: bytes, credentials: tuple[str, str] | None, ec2: bool) -> Scope:
    """The request's scope; AwsError unless it is signed by CREDENTIALS (when configured)."""
    given = scope(headers)
    if credentials is None:
        return given
    match = _AUTHORIZATION.match(headers.get("Authorization", ""))
    if match is None:
        raise AwsError("MissingAuthenticationToken" if not ec2 else "AuthFailure",
                       "Request is missing Authentication Token", status=401 if ec2 else 403)
    username, password = credentials
    if not hmac.compare_digest(match["key"].encode(), username.encode()):
        raise AwsError("AuthFailure" if ec2 else "InvalidClientTokenId",
                       "AWS was not able to validate the provided access credentials" if ec2
                       else "The security token included in the request is invalid.", status=401 if ec2 else 403)
    signed = match["signed"].split(";")
    request = AWSRequest(method=method, url=f"http://{headers.get('Host', '')}{path}", data=body,
                         headers={name: headers.get(name, "") for name in signed})
    timestamp = headers.get("X-Amz-Date", "")
    if not timestamp.startswith(match["date"]):
        raise AwsError("SignatureDoesNotMatch", "The request's X-Amz-Date does not match its credential scope",
                       status=403)
    request.context["timestamp"] = timestamp
    signer = SigV4Auth(Credentials(username, password), match["service"], match["region"])
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise AwsError("SignatureDoesNotMatch", "The request signature we calculated does not match the signature "
                       "you provided. Check your AWS Secret Access Key and signing method.", status=403)
    return given
