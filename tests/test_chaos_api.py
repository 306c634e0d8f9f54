"""Tests for harness/chaos/chaos_api.py and harness/chaos/chaos_client.py: the SimianArmy Chaos Monkey
REST API over a fake backend, and the chaosmonkey-flag client against it.

No VM: the backend is a fake that records what it was asked to break. Everything talks
to 127.0.0.1 only.
"""
import base64
import http.client
import json
import random
import socket
import subprocess
import sys
import threading
import time

import pytest

from harness.chaos import chaos_api, chaos_client
from harness.chaos.chaos_api import API_PATH, STRATEGIES, ChaosServer
from harness.errors import UserError
from harness.paths import REPO

pytestmark = pytest.mark.timeout(60)

TRIGGER = {"eventType": "CHAOS_TERMINATION", "groupType": "ASG", "groupName": "web"}


class FakeBackend:
    """Three groups (one with nothing running); records apply() calls and notices overlaps."""

    def __init__(self):
        self.running = {"web": ["i-web-3", "i-web-1", "i-web-2"], "db": ["i-db-1"], "empty": []}
        self.calls: list[tuple[str, str, str]] = []
        self.fail_with: Exception | None = None
        self.apply_seconds = 0.0
        self.overlapped = False
        self._busy: set[str] = set()
        self._guard = threading.Lock()

    def groups(self) -> dict[str, list[str]]:
        return {group: list(ids) for group, ids in self.running.items()}

    def apply(self, group: str, instance_id: str, strategy: str) -> dict:
        with self._guard:
            self.overlapped |= group in self._busy
            self._busy.add(group)
        try:
            time.sleep(self.apply_seconds)
            self.calls.append((group, instance_id, strategy))
            if self.fail_with:
                raise self.fail_with
            return {"broke": instance_id}
        finally:
            with self._guard:
                self._busy.discard(group)


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def server(backend):
    with ChaosServer(backend, rng=random.Random(7)) as server:
        yield server


@pytest.fixture(autouse=True)
def no_chaosmonkey_env(monkeypatch):
    for name in ("CHAOSMONKEY_ENDPOINT", "CHAOSMONKEY_USERNAME", "CHAOSMONKEY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def call(server, method: str, body=None, path: str = API_PATH, headers: dict | None = None):
    """(status, headers, decoded JSON) of one request; http.client so no proxy is involved."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        connection.close()


def basic(username: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the server -------------------------------------------------------------------------

def test_post_breaks_a_running_instance_and_answers_the_event(server, backend):
    before = time.time() * 1000
    status, _, event = call(server, "POST", {**TRIGGER, "chaosType": "DetachVolumes"})
    assert status == 200
    assert set(event) == {"eventId", "eventTime", "eventType", "groupName", "groupType", "chaosType",
                          "monkeyType", "region", "instanceId"}
    assert event["instanceId"] in backend.running["web"]
    # As in SimianArmy, whose Go client reads the instance from eventId.
    assert event["eventId"] == event["instanceId"]
    assert isinstance(event["eventTime"], int) and before - 1 <= event["eventTime"] <= time.time() * 1000 + 1
    assert (event["eventType"], event["groupName"], event["groupType"], event["chaosType"],
            event["monkeyType"], event["region"]) == (
        "CHAOS_TERMINATION", "web", "ASG", "DetachVolumes", "CHAOS", "lab")
    assert backend.calls == [("web", event["instanceId"], "DetachVolumes")]
    assert server.events() == [event]


def test_chaos_type_defaults_to_shutdown_and_ignores_case(server, backend):
    assert call(server, "POST", TRIGGER)[2]["chaosType"] == "ShutdownInstance"
    assert call(server, "POST", {**TRIGGER, "chaosType": "burncpu"})[2]["chaosType"] == "BurnCpu"
    assert [strategy for _, _, strategy in backend.calls] == ["ShutdownInstance", "BurnCpu"]


def test_region_is_configurable(backend):
    with ChaosServer(backend, region="eu-lab-1") as server:
        assert call(server, "POST", TRIGGER)[2]["region"] == "eu-lab-1"


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "not JSON"),
    ([TRIGGER], 400, "JSON object"),
    ({"eventType": "CHAOS_TERMINATION", "groupType": "ASG"}, 400, "groupName"),
    ({**TRIGGER, "groupName": ""}, 400, "groupName"),
    ({**TRIGGER, "eventType": "CHAOS_REBOOT"}, 400, "Unrecognized event type: CHAOS_REBOOT"),
    ({**TRIGGER, "groupType": "CLUSTER"}, 400, "Unrecognized group type: CLUSTER"),
    ({**TRIGGER, "chaosType": "Meteor"}, 400, "Unknown chaos type value: Meteor"),
    ({**TRIGGER, "chaosType": 3}, 400, "Unknown chaos type value: 3"),
    ({**TRIGGER, "groupName": "nope"}, 404, "group 'nope' not found"),
    ({**TRIGGER, "groupName": "empty"}, 409, "no running instance"),
])
def test_a_refused_post_breaks_nothing_and_says_why(server, backend, body, status, says):
    answer_status, _, answer = call(server, "POST", body)
    assert (answer_status, list(answer)) == (status, ["message"])
    assert says in answer["message"]
    assert backend.calls == [] and server.events() == []


def test_unknown_chaos_type_lists_the_valid_ones(server):
    message = call(server, "POST", {**TRIGGER, "chaosType": "Meteor"})[2]["message"]
    assert all(strategy in message for strategy in STRATEGIES)


def test_backend_user_error_is_400_with_its_text_and_no_event(server, backend):
    backend.fail_with = UserError("BurnIo needs a disk", "attach one first")
    status, _, answer = call(server, "POST", {**TRIGGER, "chaosType": "BurnIo"})
    assert (status, answer) == (400, {"message": "BurnIo needs a disk (fix: attach one first)"})
    assert server.events() == []


def test_backend_crash_is_500_with_one_line_and_no_traceback(server, backend):
    backend.fail_with = RuntimeError("disk\nexploded")
    status, _, answer = call(server, "POST", TRIGGER)
    assert status == 500
    assert answer == {"message": "the chaos backend failed: RuntimeError: disk exploded"}
    assert server.events() == []


def test_other_paths_and_methods_answer_json_errors(server):
    status, _, answer = call(server, "GET", path="/simianarmy/api/v1/janitor")
    assert status == 404 and API_PATH in answer["message"]
    status, headers, answer = call(server, "DELETE")
    assert (status, headers["Allow"]) == (405, "GET, POST") and "DELETE" in answer["message"]


def test_random_choice_follows_the_seed(backend):
    expected_rng = random.Random(42)
    expected = [expected_rng.choice(sorted(backend.running["web"])) for _ in range(12)]
    with ChaosServer(backend, rng=random.Random(42)) as server:
        picked = [call(server, "POST", TRIGGER)[2]["instanceId"] for _ in range(12)]
    assert picked == expected
    assert len(set(picked)) > 1


def test_get_lists_events_newest_first_and_since_is_inclusive(server, monkeypatch):
    monkeypatch.setattr(chaos_api, "_now_ms", iter([1000, 2000, 3000]).__next__)
    for _ in range(3):
        call(server, "POST", TRIGGER)
    status, _, events = call(server, "GET")
    assert status == 200
    assert [event["eventTime"] for event in events] == [3000, 2000, 1000]
    assert [event["eventTime"] for event in call(server, "GET", path=f"{API_PATH}?since=2000")[2]] == [3000, 2000]
    assert call(server, "GET", path=f"{API_PATH}?since=3001")[2] == []


def test_get_with_a_bad_since_is_400(server):
    status, _, answer = call(server, "GET", path=f"{API_PATH}?since=yesterday")
    assert status == 400 and "since" in answer["message"]


def test_get_filters_by_group(server):
    call(server, "POST", TRIGGER)
    call(server, "POST", {**TRIGGER, "groupName": "db"})
    events = call(server, "GET", path=f"{API_PATH}?groupType=ASG&groupName=db")[2]
    assert [(event["groupName"], event["instanceId"]) for event in events] == [("db", "i-db-1")]
    assert len(call(server, "GET", path=f"{API_PATH}?groupType=ASG")[2]) == 2


@pytest.mark.parametrize("headers", [{}, basic("monkey", "wrong"), basic("ape", "banana"),
                                     {"Authorization": "Basic !!!"}, {"Authorization": "Bearer banana"}])
def test_without_valid_credentials_every_request_is_401(backend, headers):
    with ChaosServer(backend, username="monkey", password="banana") as server:
        for method, body in (("GET", None), ("POST", TRIGGER)):
            status, answer_headers, answer = call(server, method, body, headers=headers)
            assert status == 401
            assert answer_headers["WWW-Authenticate"] == 'Basic realm="simianarmy"'
            assert "username and password" in answer["message"]
    assert backend.calls == []


def test_with_valid_credentials_requests_pass(backend):
    with ChaosServer(backend, username="monkey", password="banana") as server:
        assert call(server, "POST", TRIGGER, headers=basic("monkey", "banana"))[0] == 200
        assert len(call(server, "GET", headers=basic("monkey", "banana"))[2]) == 1


def test_half_a_credential_is_refused(backend):
    with pytest.raises(UserError, match="both a username and a password"):
        ChaosServer(backend, username="monkey")


def test_port_in_use_is_a_user_error(backend):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as raised:
            ChaosServer(backend, port=port)
    assert str(raised.value) == f"port {port} on 127.0.0.1 is in use (fix: pick another with --port)"


def test_stop_without_start_returns(backend):
    ChaosServer(backend).stop()


def test_parallel_chaos_on_one_group_is_serialised(server, backend):
    backend.apply_seconds = 0.02
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(call(server, "POST", TRIGGER)[0]))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 8
    assert len(server.events()) == 8 and len(backend.calls) == 8
    assert not backend.overlapped


# --- the client -------------------------------------------------------------------------

def one_error_line(capsys, code: int) -> str:
    """The client failed the way every unitchaos command must: exit 2, one line, no traceback."""
    _, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("unitchaos chaos: error:") and "(fix:" in lines[0]
    return lines[0]


def test_client_triggers_count_events(server, backend, capsys):
    code = chaos_client.main(["-endpoint", server.url, "-group", "web", "-strategy", "NetworkLoss",
                              "-count", "3", "-interval", "0"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    events = server.events()
    assert len(events) == 3 and len(backend.calls) == 3
    assert out.splitlines() == [f"triggered NetworkLoss on {event['instanceId']} in web (event {event['eventId']})"
                                for event in reversed(events)]


def test_client_with_probability_zero_triggers_nothing(server, capsys):
    code = chaos_client.main(["-endpoint", server.url, "-group", "web", "-count", "2", "-interval", "0",
                              "-probability", "0"])
    assert code == 0
    assert server.events() == []
    assert capsys.readouterr().out.splitlines() == ["skipped event 1 of 2 (probability 0)",
                                                     "skipped event 2 of 2 (probability 0)"]


def test_client_without_group_lists_events(server, capsys):
    call(server, "POST", TRIGGER)
    call(server, "POST", {**TRIGGER, "groupName": "db", "chaosType": "FillDisk"})
    assert chaos_client.main(["-endpoint", server.url]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["time", "(UTC)", "instance", "group", "strategy", "region"]
    assert len(rows) == 2
    assert rows[0].split()[1:] == ["i-db-1", "db", "FillDisk", "lab"]
    assert rows[1].split()[2:] == ["web", "ShutdownInstance", "lab"]
    # Fixed-width columns: each row's group sits under the header's "group".
    group_column = header.index("group")
    assert [row[group_column:].split()[0] for row in rows] == ["db", "web"]


def test_client_listing_since_the_future_says_so(server, capsys):
    call(server, "POST", TRIGGER)
    future = int(time.time() * 1000) + 3_600_000
    assert chaos_client.main(["-endpoint", server.url, "-since", str(future)]) == 0
    assert capsys.readouterr().out.startswith("no chaos events since ")


def test_client_lists_strategies_without_an_endpoint(capsys):
    assert chaos_client.main(["-list-strategies"]) == 0
    assert capsys.readouterr().out.splitlines() == list(STRATEGIES)
    assert len(STRATEGIES) == 15


def test_client_reads_endpoint_and_credentials_from_the_environment(backend, monkeypatch, capsys):
    with ChaosServer(backend, username="monkey", password="banana") as server:
        monkeypatch.setenv("CHAOSMONKEY_ENDPOINT", server.url)
        monkeypatch.setenv("CHAOSMONKEY_USERNAME", "monkey")
        monkeypatch.setenv("CHAOSMONKEY_PASSWORD", "banana")
        assert chaos_client.main(["-group", "web"]) == 0
        assert len(server.events()) == 1
        monkeypatch.delenv("CHAOSMONKEY_PASSWORD")
        monkeypatch.delenv("CHAOSMONKEY_USERNAME")
        capsys.readouterr()
        line = one_error_line(capsys, chaos_client.main(["-group", "web"]))
    assert "answered 401" in line and "CHAOSMONKEY_PASSWORD" in line


def test_client_flags_win_over_the_environment(server, monkeypatch):
    monkeypatch.setenv("CHAOSMONKEY_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert chaos_client.main(["-endpoint", server.url, "-group", "web"]) == 0


def test_client_unreachable_endpoint_is_one_line(capsys):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    line = one_error_line(capsys, chaos_client.main(["-endpoint", endpoint, "-group", "web"]))
    assert f"cannot reach {endpoint}" in line


def test_client_shows_the_servers_message(server, capsys):
    line = one_error_line(capsys, chaos_client.main(["-endpoint", server.url, "-group", "nope"]))
    assert "answered 404: group 'nope' not found" in line


def test_client_does_not_repeat_a_fix_the_server_gave(server, backend, capsys):
    backend.fail_with = UserError("BurnIo needs a disk", "attach one first")
    line = one_error_line(capsys, chaos_client.main(["-endpoint", server.url, "-group", "web"]))
    assert line.endswith("answered 400: BurnIo needs a disk (fix: attach one first)")


@pytest.mark.parametrize("argv, says", [
    (["-group", "web"], "no endpoint given"),
    (["-endpoint", "ftp://127.0.0.1/", "-group", "web"], "not an http(s) URL"),
    (["-endpoint", "http://127.0.0.1:1", "-username", "monkey", "-group", "web"], "without a password"),
    (["-probability", "1.5"], "not a probability"),
    (["-probability", "nan"], "not a probability"),
    (["-count", "0"], "not a number of events"),
    (["-interval", "-1"], "not a number of seconds"),
    (["-since", "soon"], "not a time in milliseconds"),
    (["-strategy", "Meteor"], "unknown strategy 'Meteor'"),
    (["-bogus"], "unrecognized arguments: -bogus"),
])
def test_client_bad_flags_are_one_line(capsys, argv, says):
    assert says in one_error_line(capsys, chaos_client.main(argv))


def test_client_bad_flag_in_a_subprocess_exits_2_without_traceback():
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from harness.chaos.chaos_client import main; sys.exit(main(sys.argv[1:]))",
         "-probability", "7"],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "unitchaos chaos: error: argument -probability/--probability: '7' is not a probability from 0 to 1 "
        "(fix: see 'unitchaos chaos -h')"]
