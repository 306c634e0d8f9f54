"""`unitchaos bench`'s suite figures when an experiment fails in them (no guest is booted
here: each experiment's `unitchaos run` process is stood in for). A failure is reported
next to the figure it spoils, not raised half an hour into the run."""
import json
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
    wall, per_experiment, failed, phases = bench.run_suite(cold=True, workers=2)
    assert phases == {}  # the stand-in prints an outcome without any
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


# What a bookworm guest's systemctl show printed after a cold boot (2026-12-02 00:21 UTC),
# trimmed: unitchaos-ready is a oneshot, so its ActiveEnter is 0 and its InactiveEnter is the
# moment it finished.
SYSTEMCTL_SHOW = """UserspaceTimestampMonotonic=8618000

Id=basic.target
InactiveExitTimestampMonotonic=0
ActiveEnterTimestampMonotonic=27283000
InactiveEnterTimestampMonotonic=0

InactiveExitTimestampMonotonic=27300000
ActiveEnterTimestampMonotonic=34556000
Id=containerd.service
InactiveEnterTimestampMonotonic=0

Id=docker.service
InactiveExitTimestampMonotonic=34600000
ActiveEnterTimestampMonotonic=39845000
InactiveEnterTimestampMonotonic=0

Id=ecs-agent.service
InactiveExitTimestampMonotonic=40100000
ActiveEnterTimestampMonotonic=55008000
InactiveEnterTimestampMonotonic=0

Id=unitchaos-ready.service
InactiveExitTimestampMonotonic=55063194
ActiveEnterTimestampMonotonic=0
InactiveEnterTimestampMonotonic=79926016
"""


def test_the_cold_boot_split_comes_from_the_guests_own_timestamps():
    split = bench.parse_boot_split(SYSTEMCTL_SHOW, total=83.8)
    assert split == {"kernel": 8.618, "systemd_to_basic": 18.665, "containerd": 7.256, "docker": 5.245,
                     "agent_start_pre": 14.908, "agent_answer": 24.918, "docker_active_at": 39.845,
                     "agent_active_at": 55.008, "guest_ready_at": 79.926, "outside_guest": 3.874}


def test_render_shows_the_splits_and_each_experiments_speedup():
    summary = {"median": 1.0, "min": 1.0, "max": 1.0, "runs": 3}
    figures = {"machine": {"cores": 2, "qemu": "QEMU 7.2", "accel": "tcg", "kernel": "6.1"},
               "image_cached_s": summary, "cold_boot": summary, "restore": summary, "restore_speedup": 1.0,
               "cold_boot_split_s": {"kernel": 2.5}, "restore_split_s": {"incoming": 0.05},
               "experiment_s": {"yank/bindsto/xfs": {"cold": 50.0, "warm": 5.0, "speedup": 10.0}},
               "suite_s": {"warm_serial": 60.0, "cold_serial": 400.0, "warm_parallel_2": 40.0},
               "suite_speedup_warm_vs_cold_serial": 6.7, "suite_speedup_warm_parallel_2_vs_cold_serial": 10.0}
    text = bench.render(figures)
    assert "    kernel                             2.50 s" in text and "incoming" in text
    assert "cold boot per experiment" in text and "50.0 s /   5.0 s    10.0 x" in text
    assert "suite speedup (cold serial / warm x2)     10.0 x" in text


def test_without_the_cold_suites_each_experiments_cold_boot_is_computed_from_the_same_run():
    figures = {"cold_boot_s": 40.0, "restore_s": 0.5, "suite_s": {"warm_serial": 30.0, "warm_parallel_2": 20.0}}
    out = bench.peers_way(figures, {"warm_serial": {"yank/bindsto/xfs": 10.0, "healthy/bindsto/xfs": 20.0},
                                    "warm_parallel_2": {}}, workers=2)
    assert out["experiment_s"]["yank/bindsto/xfs"] == {"cold": 49.5, "warm": 10.0, "speedup": 5.0}
    assert out["suite_cold_serial_computed_s"] == 109.0 and out["cold_per_experiment"].startswith("computed")
    assert out["suite_speedup_warm_vs_cold_serial"] == 3.6 and out["suite_speedup_warm_parallel_2_vs_cold_serial"] == 5.5


def test_with_the_cold_suites_each_experiments_cold_boot_is_measured():
    figures = {"cold_boot_s": 40.0, "restore_s": 0.5, "suite_s": {"warm_serial": 30.0, "cold_serial": 300.0}}
    out = bench.peers_way(figures, {"warm_serial": {"yank/bindsto/xfs": 10.0}, "cold_serial": {"yank/bindsto/xfs": 60.0}}, 1)
    assert out["experiment_s"]["yank/bindsto/xfs"] == {"cold": 60.0, "warm": 10.0, "speedup": 6.0}
    assert out["suite_speedup_warm_vs_cold_serial"] == 10.0 and out["cold_per_experiment"].startswith("measured")


def test_an_experiments_phases_split_its_run_and_name_the_guests_own_time():
    from harness.runs import experiments
    # Monotonic marks (each phase's end) and the fault's wall-clock moments, as a warm yank
    # measured on 2026-12-01 went: restore 1.2 s, the kernel's word 10.5 s after the yank.
    marks = {"start": 101.2, "fault": 114.0, "verdict_window": 116.8, "observe": 123.1, "after_verdict": 123.2}
    detail = {"injected_at": 5000.3, "kernel_word_at": 5010.8, "settled_at": 5010.5, "settle_confirmed_at": 5012.9}
    phases = experiments.phases(100.0, marks, detail, now=123.5)
    assert list(phases) == ["start", "fault_to_kernel_word", "to_settled", "quiet_window", "verdict_window",
                            "observe", "after_verdict", "rest"]
    # systemd had settled before the kernel spoke: nothing of the guest's after the word.
    assert phases["fault_to_kernel_word"] == 10.5 and phases["to_settled"] == 0 and phases["quiet_window"] == 2.1
    assert abs(sum(phases.values()) - 23.5) < 0.05  # nothing lost, nothing counted twice
    assert set(phases) <= set(experiments.PHASES)
    # No kernel word expected (umount): systemd's reaction from the fault on.
    without = experiments.phases(100.0, marks, {"injected_at": 5000.3, "settled_at": 5010.5,
                                                "settle_confirmed_at": 5012.9}, now=123.5)
    assert without["fault_to_settled"] == 10.2 and without["quiet_window"] == 2.4
    assert "fault_to_kernel_word" not in without and abs(sum(without.values()) - 23.5) < 0.05


def test_the_suite_keeps_each_experiments_phases_and_render_shows_them(monkeypatch):
    def with_phases(argv, **kwargs):
        out = {"seconds": {"phases": {"start": 1.1, "fault_to_kernel_word": 10.5, "rest": 0.2}}}
        return subprocess.CompletedProcess(argv, 0, json.dumps(out), "")
    monkeypatch.setattr(bench.subprocess, "run", with_phases)
    _, _, failed, phases = bench.run_suite(cold=False, workers=1)
    assert not failed and phases["yank/bindsto/xfs"]["fault_to_kernel_word"] == 10.5
    summary = {"median": 1.0, "min": 1.0, "max": 1.0, "runs": 3}
    figures = {"machine": {"cores": 2, "qemu": "QEMU 7.2", "accel": "tcg", "kernel": "6.1"},
               "image_cached_s": summary, "cold_boot": summary, "restore": summary, "restore_speedup": 1.0,
               "experiment_s": {}, "suite_s": {"warm_serial": 60.0}, "suite_speedup_warm_vs_cold_serial": 6.7,
               "warm_phases_s": {"yank/bindsto/xfs": phases["yank/bindsto/xfs"]}}
    assert "    yank/bindsto/xfs                 start 1.1, fault_to_kernel_word* 10.5, rest 0.2" in bench.render(figures)
