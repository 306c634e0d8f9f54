"""`unitchaos chaos`: a client for the Chaos Monkey REST API (harness/chaos/chaos_api.py or a
real SimianArmy) that takes the Go `chaosmonkey` CLI's single-dash flags, so the
incident's own command lines run unchanged:

    unitchaos chaos -endpoint URL -username U -password P -group NAME -strategy S

With -group it triggers chaos (-count times, -interval seconds apart, each with
-probability); without it, it lists past events. Every failure is one line on stderr and
exit code 2, never a traceback.
"""
import argparse
import base64
import http.client
import json
import math
import os
import random
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from urllib.parse import urlencode, urlsplit

from .chaos_api import API_PATH, DEFAULT_STRATEGY, STRATEGIES, canonical_strategy
from ..errors import UserError

PROG = "unitchaos chaos"

# Generous: the server answers only once the chaos is done, and a shutdown can take a while.
TIMEOUT_SECONDS = 30

# What to do about each error status, for the `(fix: ...)` part of the error line.
_FIXES = {
    400: "check -group and -strategy",
    401: "pass -username and -password, or set CHAOSMONKEY_USERNAME and CHAOSMONKEY_PASSWORD",
    404: "check -group and -endpoint",
    409: "start an instance in the group, or pick another -group",
}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect becomes an error: the client talks to the given endpoint and nowhere else."""

    def redirect_request(self, *args, **kwargs):
        return None


# No proxy from the environment either, for the same reason.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def main(argv: list[str] | None = None) -> int:
    """The command on its own: parse argv, run, return the exit code (argparse's too)."""
    parser = _Parser(prog=PROG, description="Trigger or list Chaos Monkey events "
                     "(the flags of the Go chaosmonkey CLI).")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # -h and bad flags make argparse exit; callers of main() get the code instead.
        return int(exc.code or 0)
    return run(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The chaosmonkey flags; the double-dash spellings work too, as with Go's flag package."""
    parser.add_argument("-endpoint", "--endpoint", metavar="URL",
                        help="the Chaos Monkey API, e.g. http://127.0.0.1:8080 (default $CHAOSMONKEY_ENDPOINT)")
    parser.add_argument("-username", "--username", metavar="U",
                        help="HTTP basic auth user (default $CHAOSMONKEY_USERNAME)")
    parser.add_argument("-password", "--password", metavar="P",
                        help="HTTP basic auth password (default $CHAOSMONKEY_PASSWORD, "
                        "which keeps it out of the process list)")
    parser.add_argument("-group", "--group", metavar="NAME",
                        help="the group to break an instance of; without it, list past events")
    parser.add_argument("-strategy", "--strategy", metavar="S", type=_strategy, default=DEFAULT_STRATEGY,
                        help=f"the chaos type (default {DEFAULT_STRATEGY}; see -list-strategies)")
    parser.add_argument("-count", "--count", metavar="N", type=_count, default=1,
                        help="how many chaos events to trigger (default 1)")
    parser.add_argument("-interval", "--interval", metavar="SECONDS", type=_seconds, default=5.0,
                        help="seconds between two events (default 5)")
    parser.add_argument("-probability", "--probability", metavar="P", type=_probability, default=1.0,
                        help="chance, 0 to 1, that each of the -count events happens (default 1)")
    parser.add_argument("-since", "--since", metavar="MS", type=_milliseconds,
                        help="when listing: only events at or after this time, in ms since the epoch")
    parser.add_argument("-list-strategies", "--list-strategies", action="store_true",
                        help="print the chaos types and exit")


def run(args: argparse.Namespace) -> int:
    """Do what the parsed flags ask; errors become one line on stderr and exit code 2."""
    try:
        return _run(args)
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.list_strategies:
        print("\n".join(STRATEGIES))
        return 0
    api = _Api(_endpoint(args.endpoint or os.environ.get("CHAOSMONKEY_ENDPOINT")),
               args.username or os.environ.get("CHAOSMONKEY_USERNAME"),
               args.password or os.environ.get("CHAOSMONKEY_PASSWORD"))
    if args.group:
        _trigger(api, args)
    else:
        _print_events(api.events(args.since), args.since)
    return 0


def _trigger(api: "_Api", args: argparse.Namespace) -> None:
    for number in range(1, args.count + 1):
        if number > 1:
            time.sleep(args.interval)
        # random() is below 1.0 always and below 0.0 never: the extremes are exact.
        if random.random() < args.probability:
            event = api.trigger(args.group, args.strategy)
            print(f"triggered {event.get('chaosType')} on {_instance(event)} in {event.get('groupName')} "
                  f"(event {event.get('eventId')})", flush=True)
        else:
            print(f"skipped event {number} of {args.count} (probability {args.probability:g})", flush=True)


def _print_events(events: list[dict], since: int | None) -> None:
    if not events:
        print("no chaos events" + (f" since {_time(since)}" if since is not None else ""))
        return
    columns = [("time (UTC)", lambda event: _time(event.get("eventTime"))),
               ("instance", _instance),
               ("group", lambda event: event.get("groupName", "?")),
               ("strategy", lambda event: event.get("chaosType", "?")),
               ("region", lambda event: event.get("region", "?"))]
    rows = [[name for name, _ in columns]] + [[str(cell(event)) for _, cell in columns] for event in events]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip())


def _instance(event: dict) -> str:
    # A real SimianArmy carries the instance only as eventId.
    return event.get("instanceId") or event.get("eventId") or "?"


def _time(milliseconds: object) -> str:
    if not isinstance(milliseconds, int):
        return "?"
    return datetime.fromtimestamp(milliseconds / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Api:
    """The two calls of the REST API, with basic auth, a timeout and one-line errors."""

    def __init__(self, endpoint: str, username: str | None, password: str | None):
        if bool(username) != bool(password):
            raise UserError("a username without a password (or the reverse)",
                            "pass both -username and -password, or neither")
        self.endpoint = endpoint
        self._headers = {"Content-Type": "application/json", "User-Agent": "unitchaos-chaos"}
        if username:
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    def trigger(self, group: str, strategy: str) -> dict:
        event = self._call("POST", API_PATH, {"eventType": "CHAOS_TERMINATION", "groupType": "ASG",
                                              "groupName": group, "chaosType": strategy})
        if not isinstance(event, dict):
            raise self._not_the_api()
        return event

    def events(self, since: int | None) -> list[dict]:
        query = f"?{urlencode({'since': since})}" if since is not None else ""
        events = self._call("GET", API_PATH + query)
        if not isinstance(events, list) or not all(isinstance(event, dict) for event in events):
            raise self._not_the_api()
        return events

    def _call(self, method: str, path: str, payload: dict | None = None) -> object:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.endpoint + path, data=data, method=method, headers=self._headers)
        try:
            with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except (OSError, http.client.HTTPException) as exc:
            # URLError and timeouts are OSErrors; a server that does not speak HTTP
            # raises HTTPException.
            reason = getattr(exc, "reason", exc)
            raise UserError(f"cannot reach {self.endpoint}: {str(reason) or type(reason).__name__}",
                            "check -endpoint and that the chaos server is running") from None
        try:
            return json.loads(body)
        except ValueError:
            raise self._not_the_api() from None

    def _refused(self, exc: urllib.error.HTTPError) -> UserError:
        message = _server_message(exc)
        # A backend's own UserError arrives with its fix already in the message.
        fix = "" if "(fix:" in message else _fix_for(exc.code)
        return UserError(f"{self.endpoint} answered {exc.code}: {message}", fix)

    def _not_the_api(self) -> UserError:
        return UserError(f"{self.endpoint} did not answer like a Chaos Monkey API",
                         "point -endpoint at the server's base URL, e.g. http://127.0.0.1:8080")


def _fix_for(status: int) -> str:
    if status >= 500:
        return "see the chaos server's log"
    return _FIXES.get(status, "see the server's message")


def _server_message(exc: urllib.error.HTTPError) -> str:
    """The `message` of a JSON error body, else the HTTP reason; always one line."""
    try:
        message = json.loads(exc.read()).get("message")
    except (OSError, ValueError, AttributeError):
        message = None
    return " ".join(str(message or exc.reason).split())


def _endpoint(value: str | None) -> str:
    if not value:
        raise UserError("no endpoint given", "pass -endpoint URL or set CHAOSMONKEY_ENDPOINT")
    url = urlsplit(value)
    try:
        valid = url.scheme in ("http", "https") and bool(url.hostname) and (url.port is None or url.port > 0)
    except ValueError:  # a port that is not a number
        valid = False
    if not valid:
        raise UserError(f"-endpoint {value!r} is not an http(s) URL", "pass e.g. -endpoint http://127.0.0.1:8080")
    return value.rstrip("/")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line and exit 2, like every other unitchaos error.
        print(f"{PROG}: error: {message} (fix: see '{PROG} -h')", file=sys.stderr)
        sys.exit(2)


def _strategy(value: str) -> str:
    strategy = canonical_strategy(value)
    if strategy is None:
        raise argparse.ArgumentTypeError(f"unknown strategy {value!r}; one of: {', '.join(STRATEGIES)}")
    return strategy


def _checked(convert, acceptable, what: str):
    """An argparse type: `convert` the flag's text, and refuse it unless `acceptable`."""
    def parse(value: str):
        try:
            number = convert(value)
        except ValueError:
            number = None
        if number is None or not acceptable(number):
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
        return number
    return parse


_count = _checked(int, lambda count: count >= 1, "a number of events (1 or more)")
_seconds = _checked(float, lambda seconds: math.isfinite(seconds) and seconds >= 0,
                    "a number of seconds (0 or more)")
# NaN fails the comparison, so it is refused too.
_probability = _checked(float, lambda probability: 0 <= probability <= 1, "a probability from 0 to 1")
_milliseconds = _checked(int, lambda milliseconds: milliseconds >= 0, "a time in milliseconds since the epoch")
