"""Tests for harness/evidence/outcome.py: the typed outcome writes the JSON it always did."""
import json
from pathlib import Path

import pytest

from harness.evidence.outcome import CheckVerdict, Outcome

RUNS = Path(__file__).parent / "fixtures" / "runs"
KEPT = sorted(RUNS.glob("*/outcome.json"))


# The keys experiments.run() wrote when the outcome was a dict, in its order (optional
# ones: params, fault_detail, artifacts).
KEYS = ["experiment", "release", "chain_file", "chain", "fs", "fault", "units_dir", "params", "fault_detail", "health",
        "timeline", "badness", "units", "volume_device", "mount_listed", "mount", "metadata_status",
        "docker_dir_device", "container_start_ok", "container_start", "health_check_lies", "kernel_events",
        "kernel_lines", "kernel", "systemd", "accel", "timeout_scale", "start", "backend", "guest", "seconds",
        # A chain file's (issue 13): its named checks, workload and must_stop units.
        "checks", "workload_ok", "workload", "workload_traffic", "must_stop", "must_stop_ok", "data_dir_device",
        "artifacts"]


@pytest.mark.parametrize("path", KEPT, ids=lambda p: p.parent.name)
def test_a_kept_outcome_reads_back_with_every_value_it_had(path):
    written = json.loads(path.read_text())
    again = Outcome.from_json(written).to_json()
    # These runs were kept by older versions: what they lack comes back as "not known".
    assert {key: again[key] for key in written} == written
    assert [key for key in again if key in written] == list(written)
    assert [key for key in KEYS if key in again] == list(again)


def test_a_full_outcome_has_every_key_in_order():
    full = Outcome.from_json(json.loads(KEPT[0].read_text()))
    full.params, full.artifacts = {"ms": 250}, "/kept"
    assert list(full.to_json()) == KEYS


def test_there_are_kept_outcomes_to_compare():
    assert len(KEPT) >= 2


def test_attributes_name_what_the_keys_did():
    out = Outcome.from_json(json.loads(KEPT[0].read_text()))
    assert isinstance(out.health.deep, CheckVerdict)
    assert out.kernel == out.guest_versions["kernel"] and out.systemd.startswith("systemd ")
    assert out.describe() == f"{out.experiment} ({out.chain}, {out.fs})"


def test_optional_keys_appear_only_when_known():
    out = Outcome(experiment="healthy", chain="bindsto", fs="xfs")
    keys = set(out.to_json())
    assert not keys & {"params", "fault_detail", "artifacts", "kernel", "systemd"}
    out.params, out.artifacts, out.guest_versions = {"ms": 250}, "/kept", {"kernel": "6.1", "systemd": "252"}
    assert {"params", "artifacts", "kernel", "systemd"} <= set(out.to_json())
