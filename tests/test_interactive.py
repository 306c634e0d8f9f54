"""The interactive lab's commands without a VM: bad input, state files, and `down`
leaving nothing behind. A stand-in process plays QEMU: what the lab goes by is a live
pid whose command line names the run directory."""
import json
import os
import subprocess
import sys

from pathlib import Path

import pytest

from harness import cli
from harness.runs import interactive
from harness.lab import lab as lab_mod
from harness.paths import runs_dir
from harness.waiting import wait_until


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))


def _run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr()


@pytest.fixture
def fake_up():
    """A lab instance 'lab' that looks up: state file, run directory, a 'QEMU' that lives."""
    started = []

    def make(name="lab"):
        run = runs_dir() / f"run-{name}"
        run.mkdir(parents=True)
        qemu = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(run)])
        started.append(qemu)
        # Until it has exec'd, the child's command line is pytest's: wait for its own.
        wait_until(lambda: str(run).encode() in Path(f"/proc/{qemu.pid}/cmdline").read_bytes(), 10,
                   "the stand-in QEMU to start", interval=0.01)
        (run / "qemu.pid").write_text(str(qemu.pid))
        (run / "owner").write_text(str(qemu.pid))
        state = {"name": name, "run_dir": str(run), "pid": qemu.pid, "ports": {"22": 1, "51678": 2, "51680": 3},
                 "accel": "tcg", "image": "/nonexistent", "chain": "bindsto", "fs": "xfs", "units_dir": "/x",
                 "guest_versions": {}, "fault_log": [], "created": "now", "artifacts": None}
        interactive._save(state)
        return qemu, run
    yield make
    for qemu in started:
        qemu.kill()
        qemu.wait()


@pytest.mark.parametrize("argv", [["inject", "yank"], ["status"], ["shell"], ["down"], ["heal", "fill-volume"],
                                  ["status", "--name", "other"]])
def test_commands_on_nothing_up_are_one_line_errors(capsys, argv):
    code, out = _run(argv, capsys)
    assert code == 2
    assert "no lab instance" in out.err and "unitchaos up" in out.err
    assert len(out.err.strip().splitlines()) == 1


def test_an_unknown_fault_is_refused_before_looking_for_an_instance(capsys):
    code, out = _run(["inject", "melt"], capsys)
    assert code == 2 and "unknown fault 'melt'" in out.err


def test_a_bad_name_is_refused(capsys):
    code, out = _run(["status", "--name", "../etc"], capsys)
    assert code == 2 and "bad lab instance name" in out.err


def test_up_twice_is_a_clear_error_before_any_vm_work(capsys, fake_up):
    qemu, _ = fake_up()
    code, out = _run(["up"], capsys)
    assert code == 2
    assert f"lab instance 'lab' is already up (QEMU pid {qemu.pid})" in out.err
    assert "unitchaos down" in out.err
    assert qemu.poll() is None


def test_several_up_need_a_name(capsys, fake_up):
    fake_up("one")
    fake_up("two")
    code, out = _run(["status"], capsys)
    assert code == 2 and "several lab instances are up: one, two" in out.err and "--name" in out.err


def test_the_sweep_leaves_an_instance_that_is_up_alone(fake_up):
    qemu, run = fake_up()
    lab_mod.sweep_stale_runs()
    assert run.exists() and qemu.poll() is None


def test_down_stops_qemu_and_removes_everything(capsys, fake_up):
    qemu, run = fake_up()
    code, out = _run(["down"], capsys)
    assert code == 0 and "'lab' is down" in out.out
    assert qemu.wait(timeout=10) is not None
    assert not run.exists()
    assert list(interactive.state_dir().iterdir()) == []


def test_an_instance_whose_qemu_died_is_reported_gone_and_down_cleans_it(capsys, fake_up):
    qemu, run = fake_up()
    qemu.kill()
    qemu.wait()
    code, out = _run(["inject", "yank"], capsys)
    assert code == 2 and "is gone: its QEMU exited" in out.err
    code, _ = _run(["down"], capsys)
    assert code == 0 and not run.exists() and interactive.names() == []


def test_how_to_reach_names_ssh_and_both_health_checks(fake_up):
    fake_up()
    text = interactive.how_to_reach(interactive.load("lab"))
    assert "ssh -i /nonexistent/id_ed25519 -p 1 " in text
    assert "http://127.0.0.1:2/v1/metadata" in text and "http://127.0.0.1:3/health" in text
    assert "unitchaos status" in text and "unitchaos down" in text


def test_state_files_are_written_whole(fake_up):
    fake_up()
    state = json.loads((interactive.state_dir() / "lab.json").read_text())
    assert state["pid"] > 0 and not list(interactive.state_dir().glob("*.tmp"))
    assert os.path.isdir(state["run_dir"]) and state["ports"]["22"] == 1
