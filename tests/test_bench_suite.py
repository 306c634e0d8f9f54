"""`unitchaos bench`'s suite figures when an experiment fails in them (no guest is booted
here: each experiment's `unitchaos run` process is stood in for). A failure is reported
next to the figure it spoils, not raised half an hour into the run."""
import subprocess
import time

from harness.runs import bench
from harness.runs.experiments import INCIDENT_SUITE

FAILED = "unitchaos: the guest did not respond in time: docker run did not finish (fix: ...)"


def stand_in(argv, **kwargs):
    time.sleep(0.05)
    if argv[4] == "stop-mount":
        return subprocess.CompletedProcess(argv, 2, "", "[unitchaos] progress\n" + FAILED + "\n")
    return subprocess.CompletedProcess(argv, 0, "{}", "")


def test_a_failed_experiment_is_recorded_and_the_others_still_timed(monkeypatch):
    monkeypatch.setattr(bench.subprocess, "run", stand_in)
    wall, per_experiment, failed = bench.run_suite(cold=True, workers=2)
    assert failed == {"stop-mount/bindsto/xfs": FAILED}
    assert set(per_experiment) == {f"{name}/{chain}/{fs}" for name, chain, fs in INCIDENT_SUITE}
    assert all(seconds >= 0.05 for seconds in per_experiment.values()) and wall >= 0.05


def test_render_names_the_failure_under_its_suite():
    summary = {"median": 1.0, "min": 1.0, "max": 1.0, "runs": 1}
    figures = {"machine": {"cores": 2, "qemu": "QEMU 7.2", "accel": "tcg", "kernel": "6.1"},
               "image_cached_s": summary, "cold_boot": summary, "restore": summary, "restore_speedup": 1.0,
               "experiment_s": {"stop-mount/bindsto/xfs": {"cold": 50.0, "warm": 10.0}},
               "suite_s": {"warm_serial": 100.0, "cold_parallel_2": 300.0},
               "suite_failures": {"cold_parallel_2": {"stop-mount/bindsto/xfs": FAILED}},
               "suite_speedup_warm_vs_cold_serial": 3.0}
    lines = bench.render(figures).splitlines()
    assert any(line.split() == ["warm_serial", "100.0", "s"] for line in lines)
    assert any("cold_parallel_2" in line and "(1 failed, below)" in line for line in lines)
    assert f"    failed in cold_parallel_2: stop-mount/bindsto/xfs: {FAILED}" in lines
