"""Tests for harness/cli/: bad input is one line on stderr and exit 2, never a traceback;
the findings table says when the health check lies.

No test here may build an image or boot a guest: the cache points at tmp_path, and
image building and machine creation are replaced by stand-ins that fail the test.
"""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from harness import cli, errors
from harness.runs import experiments
from harness.evidence.outcome import Outcome
from harness.images.image import Image
from harness.paths import REPO, UNITS_DIR


@pytest.fixture(autouse=True)
def hermetic(tmp_path, monkeypatch):
    """No real cache, no image build, no KVM probe, no QEMU; main()'s signal handlers are undone."""
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))

    def forbidden(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"the CLI tried to {what}")
        return fail

    monkeypatch.setattr("harness.images.image.ensure_image", forbidden("build or look up the guest image"))
    monkeypatch.setattr("harness.machines.accel.choose", forbidden("choose an accelerator (a KVM probe boots QEMU)"))
    monkeypatch.setattr("harness.machines.accel.kvm_verdict", forbidden("probe KVM"))
    monkeypatch.setattr("harness.machines.machine.Machine.start", forbidden("start QEMU"))
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run_cli(argv: list[str]) -> int:
    """main() in-process; argparse errors exit via SystemExit, the rest return a code."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def assert_one_line_error(capsys, code: int) -> str:
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("unitchaos: error:")
    assert "fix:" in lines[0]
    return lines[0]


@pytest.fixture
def units_with_unknown_key(tmp_path):
    path = tmp_path / "units"
    shutil.copytree(UNITS_DIR, path)
    agent = path / "ecs-agent.service"
    agent.write_text(agent.read_text().replace("[Unit]\n", "[Unit]\nRequiress=foo\n", 1))
    return path


@pytest.mark.parametrize("argv, problem", [
    (["run", "nope"], "unknown experiment 'nope'"),
    (["run", "yank", "--chain", "wants"], "unknown chain 'wants'"),
    (["run", "yank", "--fs", "btrfs"], "unknown filesystem 'btrfs'"),
    (["run", "yank", "--units", "/nonexistent/unitchaos-units"],
     "units directory /nonexistent/unitchaos-units does not exist"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run"], "the following arguments are required: experiment"),
    (["run", "yank", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "io-latency", "-p", "delay=5"], "io-latency has no parameter 'delay=5'"),
    (["run", "io-error", "-p", "after=lots"], "io-error after='lots' is not a whole number"),
    (["run", "healthy", "-p", "ms=1"], "healthy takes no parameters"),
    (["run", "yank", "--backend", "virtualbox"], "unknown backend 'virtualbox'"),
    (["run", "yank", "--guest", "arch"], "unknown guest 'arch'"),
    (["run", "yank", "--guest", "fcos"], "--guest fcos needs a Fedora CoreOS qcow2 image"),
    (["run", "yank", "--guest", "fcos", "--image", "/nonexistent/fcos.qcow2"],
     "Fedora CoreOS image /nonexistent/fcos.qcow2 does not exist"),
    (["demo", "--backend", "vagrant", "--guest", "fcos", "--image", "/etc/hostname"],
     "the vagrant backend runs the Debian guest only"),
    (["ignition", "--chain", "wants"], "unknown chain 'wants'"),
    (["run", "yank", "--release", "buster"], "unknown release 'buster'"),
    (["demo", "--release", "buster"], "unknown release 'buster'"),
    (["image", "build", "--release", "buster"], "unknown release 'buster'"),
    (["versions", "--release", "trixie", "--release", "buster"], "unknown release 'buster'"),
    (["versions", "nope"], "unknown experiment 'nope'"),
    (["versions", "yank", "--fs", "btrfs"], "unknown filesystem 'btrfs'"),
    (["versions", "yank", "--runs", "0"], "--runs 0 is not a number of runs"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, monkeypatch, argv, problem):
    monkeypatch.delenv("UNITCHAOS_FCOS_IMAGE", raising=False)
    line = assert_one_line_error(capsys, run_cli(argv))
    assert problem in line


def test_units_dir_lacking_units_names_them(capsys, tmp_path):
    (tmp_path / "partial").mkdir()
    shutil.copy(UNITS_DIR / "ecs-agent.service", tmp_path / "partial")
    line = assert_one_line_error(capsys, run_cli(["run", "yank", "--units", str(tmp_path / "partial")]))
    assert "format-ephemeral.service" in line and "var-lib-docker.mount" in line


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_run_with_a_unit_systemd_rejects_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path,
                                                                 units_with_unknown_key):
    # A cached image and a cold boot: today the units are verified only when an instance is made.
    monkeypatch.setattr("harness.images.image.ensure_image", lambda *a, **k: Image(tmp_path / "image"))
    monkeypatch.setenv("UNITCHAOS_COLD", "1")
    line = assert_one_line_error(capsys, run_cli(["run", "yank", "--units", str(units_with_unknown_key)]))
    assert "Unknown key 'Requiress'" in line


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_run_rejects_bad_units_before_any_image_work(capsys, units_with_unknown_key):
    # The hermetic fixture fails the test if the image, the accelerator or QEMU is touched.
    line = assert_one_line_error(capsys, run_cli(["run", "yank", "--units", str(units_with_unknown_key)]))
    assert "Unknown key 'Requiress'" in line


@pytest.mark.parametrize("argv, problem", [
    (["run", "nope"], "unknown experiment 'nope'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_module_entry_point_exits_2_without_traceback(tmp_path, argv, problem):
    env = {**os.environ, "UNITCHAOS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "harness", *argv], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=30)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("unitchaos: error:") and done.stderr.count("\n") == 1
    assert problem in done.stderr and "fix:" in done.stderr


def failing_prune(monkeypatch, exc: Exception) -> None:
    def raise_it(args):
        raise exc
    monkeypatch.setattr(cli.host, "cmd_prune", raise_it)


@pytest.mark.parametrize("exc, code, said", [
    (errors.UserError("no such thing", "use another"), 2, "unitchaos: error: no such thing (fix: use another)"),
    (errors.GuestTimeout("'booted' did not appear"), 1, "the guest did not respond in time: 'booted' did not appear"),
    (errors.GuestKernelPanic("Oops: int3 ... Kernel panic"), 1, "the guest kernel panicked: Oops: int3"),
    (errors.GuestRefused("the unit chain did not come up healthy", "check the units"), 1,
     "the guest misbehaved: the unit chain did not come up healthy (fix: check the units)"),
    (errors.MonitorError("drive_del: Device 'volume' not found"), 1, "QEMU's monitor refused: drive_del"),
    (RuntimeError("a bug"), 1, "internal error: RuntimeError: a bug (fix: rerun with --debug"),
])
def test_every_error_is_one_line_with_its_exit_code(capsys, monkeypatch, exc, code, said):
    failing_prune(monkeypatch, exc)
    assert run_cli(["prune"]) == code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert said in err


def test_a_guest_error_names_where_its_evidence_is_kept(capsys, monkeypatch, tmp_path):
    run_dir = tmp_path / "cache" / "runs" / "20260101-000000-1-0-warm-bindsto-xfs"
    failing_prune(monkeypatch, errors.GuestTimeout("ecs-agent.service is inactive", evidence=run_dir))
    assert run_cli(["prune"]) == 1
    assert "rerun with --keep-artifacts to keep the evidence" in capsys.readouterr().err
    kept = tmp_path / "cache" / "artifacts" / run_dir.name
    kept.mkdir(parents=True)
    assert run_cli(["prune"]) == 1
    assert capsys.readouterr().err.rstrip().endswith(f"evidence: {kept}")


def test_debug_shows_the_traceback_of_an_unexpected_error(monkeypatch):
    failing_prune(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["--debug", "prune"])


def test_every_error_the_harness_raises_has_one_root():
    for kind in (errors.UserError, errors.GuestError, errors.GuestTimeout, errors.GuestKernelPanic,
                 errors.GuestCommandFailed, errors.GuestRefused, errors.MonitorError):
        assert issubclass(kind, errors.UnitchaosError)
    # A failed guest command is also a failed expectation in a scenario.
    assert issubclass(errors.GuestCommandFailed, AssertionError)


def outcome(experiment: str, lies: bool, kernel_events: list[str]) -> Outcome:
    """An outcome shaped like experiments.run()'s."""
    return Outcome.from_json({
        "experiment": experiment, "chain": "bindsto", "fs": "xfs",
        "fault": None if experiment == "healthy" else experiment,
        "units": {"format-ephemeral.service": "active", "var-lib-docker.mount": "active",
                  "docker.service": "active", "ecs-agent.service": "active"},
        "mount_listed": True, "metadata_status": 200, "container_start_ok": not lies,
        "health_check_lies": lies, "kernel_events": kernel_events,
        "seconds": {"boot": 21.3, "fault_to_verdict": 9.6, "total": 47.4},
        "kernel": "6.1.0-27-cloud-amd64", "systemd": "systemd 252 (252.30-1~deb12u2)",
    })


HEALTHY = outcome("healthy", False, [])
YANK = outcome("yank", True, ["I/O error, dev vdb, sector 192 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2",
                              "XFS (vdb): Filesystem has been shut down due to log error (0x2)."])


def render(outcomes: list[Outcome]) -> str:
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(cli.run.findings_table(outcomes))
    return console.export_text()


def test_findings_table_says_the_yanked_health_check_lies():
    text = render([YANK])
    assert "LIES" in text
    assert "truthful" not in text
    assert "xfs-shutdown" in text  # the most telling kernel event wins over plain I/O errors
    assert "47" in text


def test_findings_table_says_the_healthy_health_check_is_truthful():
    text = render([HEALTHY])
    assert "truthful" in text
    assert "LIES" not in text


def test_findings_table_has_one_row_per_outcome():
    text = render([HEALTHY, YANK])
    assert text.count("LIES") == 1
    assert text.count("truthful") == 1
    assert text.index("healthy") < text.index("yank")


def test_jsonable_makes_nested_values_json_safe():
    detail = {"disk": Path("/var/cache/unitchaos/runs/x/volume.qcow2"),
              "event": {"data": {"device": "volumedisk"}, "args": ("drive_del", Path("/dev/vdb"))},
              "status": 5, "ok": False, "none": None}
    safe = experiments._jsonable(detail)
    assert json.loads(json.dumps(safe)) == {
        "disk": "/var/cache/unitchaos/runs/x/volume.qcow2",
        "event": {"data": {"device": "volumedisk"}, "args": ["drive_del", "/dev/vdb"]},
        "status": 5, "ok": False, "none": None}
