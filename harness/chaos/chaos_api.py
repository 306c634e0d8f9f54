"""A Chaos Monkey (Netflix SimianArmy) REST API in front of the lab, so the tooling the
incident's author used -- the Go `chaosmonkey` CLI, scripts that POST to
/simianarmy/api/v1/chaos -- can break lab instances unchanged.

Standard library only: the server runs beside the VMs and must not need anything the
harness does not already have.

Where SimianArmy is tied to AWS or answers oddly, this server differs on purpose:
- eventId is the instance id, as in SimianArmy (its recorder keys events by instance and
  the Go client reads the instance from eventId); instanceId repeats it for readers who
  do not know that.
- GET without `since` returns every event (SimianArmy: the last 24 hours) and `since`
  is inclusive (SimianArmy: exclusive).
- A group without a running instance answers 409 Conflict (SimianArmy: 410 Gone): the
  group exists, its state forbids the request, and it may change when an instance starts.
- An unknown chaos type answers 400 listing the valid ones (SimianArmy: a 500 page).
"""
import base64
import binascii
import errno
import hmac
import json
import logging
import random
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from ..errors import GuestError, UserError

log = logging.getLogger(__name__)

API_PATH = "/simianarmy/api/v1/chaos"

# SimianArmy's chaos types, in the order its wiki lists them.
STRATEGIES = (
    "ShutdownInstance", "BlockAllNetworkTraffic", "DetachVolumes", "BurnCpu", "BurnIo",
    "KillProcesses", "NullRoute", "FailEc2", "FailDns", "FailDynamoDb", "FailS3", "FillDisk",
    "NetworkCorruption", "NetworkLatency", "NetworkLoss",
)
DEFAULT_STRATEGY = "ShutdownInstance"

# A chaos request is a few dozen bytes; anything bigger is a mistake, not a request.
MAX_BODY_BYTES = 64 * 1024

_POLL_SECONDS = 0.05


class Backend(Protocol):
    """What the server needs from whatever owns the instances: the lab, or a test's fake."""

    def groups(self) -> dict[str, list[str]]:
        """Group name -> ids of its RUNNING instances; a known group may have none."""

    def apply(self, group: str, instance_id: str, strategy: str) -> dict:
        """Do `strategy` to the instance and return what was done, for the server's log.

        Raises UserError when the strategy cannot apply to that instance: the client
        gets 400 with its message and no event is recorded.
        """


class ApiError(Exception):
    """An answer other than 200: its status and the one-line message the client shows."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class ChaosServer:
    """SimianArmy's chaos endpoints over a Backend, served from daemon threads.

    Binds at construction so a busy port fails before anything else starts and `port`
    is known (port=0 picks a free one).
    """

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0,
                 username: str | None = None, password: str | None = None, region: str = "lab",
                 rng: random.Random | None = None, aws=None):
        """AWS: something with handle(method, path, headers, body) -> (status, XML), which
        then answers the AWS query requests (POST /) on the same port (see aws_api.py)."""
        if bool(username) != bool(password):
            # Half a credential would leave the API open while its owner thinks it is guarded.
            raise UserError("a username without a password (or the reverse) guards nothing",
                            "give both a username and a password, or neither")
        self._credentials = (username, password) if username else None
        self.region = region
        self._backend = backend
        self.aws = aws
        self._rng = rng or random.Random()
        self._events: list[dict] = []
        self._events_lock = threading.Lock()
        self._group_locks: dict[str, threading.Lock] = {}
        self._group_locks_lock = threading.Lock()
        self._serving = False
        self._thread: threading.Thread | None = None
        self._httpd = _listen(host, port)
        self._httpd.chaos = self

    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ChaosServer":
        """Serve in a background daemon thread, so a forgotten server never blocks exit."""
        self._serving = True
        self._thread = threading.Thread(target=self.serve_forever, name="chaos-api", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until stop() from another thread, or Ctrl-C."""
        self._serving = True
        # stop() takes up to one poll interval: the default half second would make every
        # stop (and every test's teardown) that slow.
        self._httpd.serve_forever(poll_interval=_POLL_SECONDS)

    def stop(self) -> None:
        # shutdown() waits for a serve loop to end: called on a server that never
        # served, it would wait forever.
        if self._serving:
            self._httpd.shutdown()
        if self._thread:
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> "ChaosServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def trigger(self, group: str, strategy: str) -> dict:
        """Break one running instance of `group`, picked at random, and record the event."""
        if group not in self._backend.groups():
            raise ApiError(HTTPStatus.NOT_FOUND, f"group {group!r} not found")
        # One chaos at a time per group: the instance is picked and broken under the
        # lock, so two requests never pick the same instance nor race on its state.
        with self._lock_for(group):
            # Sorted: the pick depends only on the seed, not on the backend's ordering.
            running = sorted(self._backend.groups().get(group, []))
            if not running:
                raise ApiError(HTTPStatus.CONFLICT, f"group {group!r} has no running instance to break")
            instance = self._rng.choice(running)
            details = self._backend.apply(group, instance, strategy)
        log.info("%s on %s in %s: %s", strategy, instance, group, details)
        return self._record(group, strategy, instance)

    def events(self, since: int | None = None, filters: dict[str, str] | None = None) -> list[dict]:
        """Recorded events, newest first, with eventTime >= since and fields equal to filters."""
        with self._events_lock:
            recorded = list(self._events)
        filters = filters or {}
        return [dict(event) for event in reversed(recorded)
                if (since is None or event["eventTime"] >= since)
                and all(key in event and str(event[key]) == value for key, value in filters.items())]

    def _lock_for(self, group: str) -> threading.Lock:
        with self._group_locks_lock:
            return self._group_locks.setdefault(group, threading.Lock())

    def _record(self, group: str, strategy: str, instance: str) -> dict:
        # The time is taken under the lock, so list order is eventTime order.
        with self._events_lock:
            event = {"eventId": instance, "eventTime": _now_ms(), "eventType": "CHAOS_TERMINATION",
                     "groupName": group, "groupType": "ASG", "chaosType": strategy,
                     "monkeyType": "CHAOS", "region": self.region, "instanceId": instance}
            self._events.append(event)
            return dict(event)


def canonical_strategy(name: str) -> str | None:
    """The STRATEGIES spelling of `name`, or None; like SimianArmy, case does not matter."""
    return {strategy.lower(): strategy for strategy in STRATEGIES}.get(name.lower())


def _parse_trigger(body: object) -> tuple[str, str]:
    """The (group, strategy) a POST body asks for, or ApiError(400) saying what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, 'the body must be a JSON object like {"eventType": '
                       '"CHAOS_TERMINATION", "groupType": "ASG", "groupName": "..."}')
    event_type, group_type, group = (body.get(key) for key in ("eventType", "groupType", "groupName"))
    if not all(isinstance(value, str) and value for value in (event_type, group_type, group)):
        raise ApiError(HTTPStatus.BAD_REQUEST, "eventType, groupType, and groupName parameters are all required")
    if event_type != "CHAOS_TERMINATION":
        raise ApiError(HTTPStatus.BAD_REQUEST,
                       f"Unrecognized event type: {event_type} (only CHAOS_TERMINATION is supported)")
    if group_type != "ASG":
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Unrecognized group type: {group_type} (only ASG is supported)")
    return group, _parse_strategy(body.get("chaosType"))


def _parse_strategy(name: object) -> str:
    # Absent means ShutdownInstance, as in SimianArmy.
    if name is None or name == "":
        return DEFAULT_STRATEGY
    strategy = canonical_strategy(name) if isinstance(name, str) else None
    if strategy is None:
        raise ApiError(HTTPStatus.BAD_REQUEST,
                       f"Unknown chaos type value: {name} (valid: {', '.join(STRATEGIES)})")
    return strategy


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _listen(host: str, port: int) -> "_HTTPServer":
    try:
        return _HTTPServer((host, port), _Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use", "pick another with --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                        "pick another host or port") from None


class _HTTPServer(ThreadingHTTPServer):
    chaos: ChaosServer

    def handle_error(self, request, client_address):
        # The default prints a traceback to stderr, e.g. whenever a client hangs up early.
        log.debug("request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "unitchaos-chaos/1"

    def do_GET(self):
        self._answer(self._list)

    def do_POST(self):
        if self.server.chaos.aws is not None and urlsplit(self.path).path == "/":
            self._answer_aws()
            return
        self._answer(self._trigger)

    def _answer_aws(self) -> None:
        try:
            body = self._read_body()
        except ApiError as exc:
            body, self.close_connection = None, True
            status, data = exc.status, exc.message.encode()
        if body is not None:
            status, data = self.server.chaos.aws.handle("POST", self.path, self.headers, body)
        self._send(status, data, content_type="text/xml")

    def do_PUT(self):
        self._answer(self._not_allowed)

    do_DELETE = do_PATCH = do_PUT

    def log_message(self, format, *args):
        log.debug("%s " + format, self.address_string(), *args)

    def _answer(self, action) -> None:
        """Run `action(query, body)` and send its result, or the error, as JSON."""
        headers: dict[str, str] = {}
        try:
            # Read the body before anything answers: closing a socket with unread data
            # resets the connection, and the client may lose the answer (e.g. a 401).
            body = self._read_body()
            self._authorize()
            status, payload = HTTPStatus.OK, action(self._query(), body)
        except ApiError as exc:
            status, payload, headers = exc.status, {"message": exc.message}, exc.headers
        except (UserError, GuestError) as exc:  # the guest would not: the client's request cannot apply
            status, payload = HTTPStatus.BAD_REQUEST, {"message": _one_line(str(exc))}
        except Exception as exc:
            # A bug in the backend: the traceback is for whoever runs the server, not the client.
            log.exception("chaos request failed")
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {
                "message": _one_line(f"the chaos backend failed: {type(exc).__name__}: {exc}")}
        self._send(status, json.dumps(payload).encode(), headers)

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _authorize(self) -> None:
        expected = self.server.chaos._credentials
        if expected is None:
            return
        given = _basic_credentials(self.headers.get("Authorization", ""))
        if given is None or not _same_credentials(given, expected):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "a valid username and password are required",
                           {"WWW-Authenticate": 'Basic realm="simianarmy"'})

    def _query(self) -> dict[str, str]:
        url = urlsplit(self.path)
        if url.path.rstrip("/") != API_PATH:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint {url.path}; the API is at {API_PATH}")
        # Like SimianArmy: the first value of each parameter, blank ones ignored.
        return {key: values[0] for key, values in parse_qs(url.query).items()}

    def _list(self, query: dict[str, str], body: bytes) -> list[dict]:
        since = query.pop("since", None)
        if since is not None:
            try:
                since = int(since)
            except ValueError:
                raise ApiError(HTTPStatus.BAD_REQUEST,
                               f"since must be milliseconds since the epoch, not {since!r}") from None
        # Every other parameter filters on the event field of that name, as in SimianArmy.
        return self.server.chaos.events(since, query)

    def _trigger(self, query: dict[str, str], body: bytes) -> dict:
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, _one_line(f"the body is not JSON: {exc}")) from None
        return self.server.chaos.trigger(*_parse_trigger(request))

    def _not_allowed(self, query: dict[str, str], body: bytes):
        raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported; use GET or POST",
                       {"Allow": "GET, POST"})

    def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """(username, password) from an `Authorization: Basic ...` header, or None if malformed."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None


def _same_credentials(given: tuple[str, str], expected: tuple[str, str]) -> bool:
    # Both compared in constant time, and `&` rather than `and`, so the timing says
    # nothing about which half was wrong.
    same_user = hmac.compare_digest(given[0].encode(), expected[0].encode())
    same_password = hmac.compare_digest(given[1].encode(), expected[1].encode())
    return same_user & same_password


def _one_line(text: str) -> str:
    return " ".join(text.split())
