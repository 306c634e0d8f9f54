"""Tests for the host-side housekeeping: harness/lab/lab.py's sweep of stale run directories,
harness/machines/accel.py's choice of accelerator, and harness/timeouts.py's scaling."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.machines import accel
from harness.lab import lab
from harness import timeouts
from harness.errors import UserError
from harness.paths import runs_dir
from harness.waiting import wait_until

KERNEL = Path("/nonexistent/vmlinuz")  # never read by the paths under test


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def spawn():
    """Starts processes and makes sure none outlives the test."""
    procs = []

    def start(argv):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


def wait_for_cmdline(pid: int, needle: str) -> None:
    """Right after exec, /proc/PID/cmdline can still read empty for a moment."""
    wait_until(lambda: needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes(), 2,
               f"process {pid}'s command line to show {needle}", interval=0.005)


def make_run(name: str, owner: int | str | None = None) -> Path:
    run = runs_dir() / name
    run.mkdir()
    (run / "console.log").write_text("boot\n")
    if owner is not None:
        (run / "owner").write_text(str(owner))
    return run


def test_sweep_removes_a_run_whose_owner_is_dead(cache, dead_pid):
    run = make_run("dead-owner", dead_pid)
    assert lab.sweep_stale_runs() == [run]
    assert not run.exists()


def test_sweep_keeps_a_run_whose_owner_is_alive(cache):
    run = make_run("mine", os.getpid())
    assert lab.sweep_stale_runs() == []
    assert (run / "owner").exists()


def test_sweep_keeps_a_fresh_run_without_owner_and_removes_an_old_one(cache):
    fresh = make_run("being-created")
    old = make_run("abandoned", owner="not a pid")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert lab.sweep_stale_runs() == [old]
    assert fresh.exists() and not old.exists()


def test_sweep_does_not_kill_a_reused_pid(cache, dead_pid, spawn):
    run = make_run("reused-pid", dead_pid)
    stranger = spawn(["sleep", "30"])  # its command line does not name the run directory
    wait_for_cmdline(stranger.pid, "sleep")
    (run / "qemu.pid").write_text(str(stranger.pid))
    assert lab.sweep_stale_runs() == [run]
    time.sleep(0.1)
    assert stranger.poll() is None, "sweep killed a process that was not the run's QEMU"


def test_sweep_kills_the_runs_leftover_qemu(cache, dead_pid, spawn):
    run = make_run("leftover-qemu", dead_pid)
    # Stands in for QEMU: its command line names files in the run directory.
    qemu = spawn([sys.executable, "-c", "import time; time.sleep(30)", f"{run}/qmp.sock"])
    wait_for_cmdline(qemu.pid, str(run))
    (run / "qemu.pid").write_text(str(qemu.pid))
    assert lab.sweep_stale_runs() == [run]
    assert qemu.wait(timeout=5) == -9


def test_sweep_tolerates_a_run_removed_by_another_sweeper(cache, monkeypatch, dead_pid):
    real = runs_dir()
    stale = make_run("stale", dead_pid)

    class ListedThenGone:
        """runs/ as one sweeper lists it just before another removes an entry."""
        def iterdir(self):
            yield real / "removed-meanwhile"
            yield from real.iterdir()

    monkeypatch.setattr(lab, "runs_dir", ListedThenGone)
    assert stale in lab.sweep_stale_runs()


@pytest.fixture
def no_probe(monkeypatch):
    """Fails the test if anything would start QEMU to probe KVM."""
    def fail(*args, **kwargs):
        raise AssertionError("probed KVM")
    monkeypatch.setattr(accel, "_probe", fail)
    monkeypatch.setattr(accel, "qemu_version", fail)


def test_bogus_accel_is_a_user_error(monkeypatch, no_probe):
    monkeypatch.setenv("UNITCHAOS_ACCEL", "bogus")
    with pytest.raises(UserError) as caught:
        accel.choose(KERNEL)
    assert "UNITCHAOS_ACCEL='bogus'" in caught.value.problem
    assert "kvm or tcg" in caught.value.fix


@pytest.mark.parametrize("value", ["tcg", " TCG "])
def test_forced_tcg_does_not_probe(monkeypatch, no_probe, value):
    def fail(kernel):
        raise AssertionError("asked for a KVM verdict")
    monkeypatch.setattr(accel, "kvm_verdict", fail)
    monkeypatch.setenv("UNITCHAOS_ACCEL", value)
    assert accel.choose(KERNEL) == "tcg"


def test_kvm_verdict_without_dev_kvm_access(cache, monkeypatch, no_probe):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    verdict = accel.kvm_verdict(KERNEL)
    assert verdict["usable"] is False
    assert "/dev/kvm" in verdict["reason"]
    assert not list(cache.glob("kvm-probe*.json"))


def test_unusable_kvm_falls_back_to_tcg(cache, monkeypatch, no_probe):
    monkeypatch.delenv("UNITCHAOS_ACCEL", raising=False)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert accel.choose(KERNEL) == "tcg"


def test_forced_kvm_that_is_unusable_is_a_user_error(cache, monkeypatch, no_probe):
    monkeypatch.setenv("UNITCHAOS_ACCEL", "kvm")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(UserError) as caught:
        accel.choose(KERNEL)
    assert "/dev/kvm" in caught.value.problem
    assert "UNITCHAOS_ACCEL" in caught.value.fix


@pytest.mark.parametrize("value, seconds", [("2.5", 25.0), ("1", 10.0), ("0", 1.0), ("-3", 1.0),
                                            ("garbage", 10.0), ("", 10.0)])
def test_scaled_honours_timeout_scale(monkeypatch, value, seconds):
    monkeypatch.setenv("UNITCHAOS_TIMEOUT_SCALE", value)
    assert timeouts.scaled(10) == pytest.approx(seconds)


def test_scaled_without_a_scale_is_unchanged(monkeypatch):
    monkeypatch.delenv("UNITCHAOS_TIMEOUT_SCALE", raising=False)
    assert timeouts.scaled(42) == 42


def test_kvm_verdicts_for_two_guest_kernels_are_both_kept(cache, monkeypatch, tmp_path):
    probes = []
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    monkeypatch.setattr(accel, "qemu_version", lambda: "QEMU 7.2")
    monkeypatch.setattr(accel, "_probe", lambda kernel: probes.append(kernel) or {"usable": False, "reason": "hangs"})
    cache.mkdir(parents=True)
    kernels = [tmp_path / "vmlinuz-6.1", tmp_path / "vmlinuz-6.12"]
    kernels[0].write_bytes(b"a" * 10)
    kernels[1].write_bytes(b"b" * 20)
    for _ in range(2):
        for kernel in kernels:
            assert accel.kvm_verdict(kernel)["usable"] is False
    assert probes == kernels  # one probe each, then both answered from the cache


# -- the life cycle: acquire and release ---------------------------------------------------

class Released:
    """Just what Lab.release touches of an Instance."""
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        run_dir.mkdir(parents=True)
        (run_dir / "owner").write_text(str(os.getpid()))
        (run_dir / "root.qcow2").write_text("big")
        self.stopped = self.saved = False

    def save_artifacts(self):
        self.saved = True
        (self.run_dir / "console.log").write_text("booted\n")

    def stop(self):
        self.stopped = True


def held(a_lab, name="20260101-000000-1-0-warm-bindsto-xfs") -> Released:
    instance = Released(runs_dir() / name)
    a_lab.instances.append(instance)
    return instance


def test_a_released_instance_is_stopped_and_its_run_directory_goes(cache):
    with lab.Lab() as a_lab:
        instance = held(a_lab)
        assert a_lab.release(instance) is None
    assert instance.stopped and not instance.saved and not instance.run_dir.exists() and a_lab.instances == []


def test_released_with_keep_its_evidence_stays_without_disks(cache):
    a_lab = lab.Lab()
    kept = a_lab.release(held(a_lab), keep=True)
    assert kept.parent.name == "artifacts" and (kept / "console.log").exists()
    assert not (kept / "root.qcow2").exists() and not (kept / "owner").exists()


def test_leaving_the_lab_releases_what_is_still_acquired_as_the_lab_was_made(cache):
    with lab.Lab(keep=True) as a_lab:
        instance = held(a_lab)
    assert instance.stopped and instance.saved and a_lab.instances == []


def test_a_tests_lab_keeps_what_an_experiment_releases_until_the_test_is_over(cache):
    from harness.plugin import _TestLab
    a_lab = _TestLab()
    instance = held(a_lab)
    assert a_lab.release(instance) is None and not instance.stopped  # the test may still fail
    a_lab.release(held(a_lab, "other"), keep=False)  # asked for by name: at once
    a_lab.test_over = True
    assert a_lab.release(instance, keep=True) is not None and instance.stopped


def test_the_lab_has_two_verbs_for_an_instances_life():
    public = {name for name in vars(lab.Lab) if not name.startswith("_") and callable(getattr(lab.Lab, name))}
    assert {"acquire", "release"} <= public
    assert not public & {"instance", "new_instance", "done_with", "release_instance", "close", "keep_copy", "detach"}


def test_acquire_refuses_a_remedy_the_image_cannot_carry_even_on_a_variant_passed_in(cache, monkeypatch):
    class OldImage:
        manifest = {"package_versions": {"xfsprogs": "6.13.0-2+deb13u1"}}
    monkeypatch.setattr(lab.Lab, "image", OldImage())
    a_lab = lab.Lab(release="trixie-backports")
    variant = a_lab.variant(remedy="healer-bindsto")
    with pytest.raises(UserError, match="healer-bindsto cannot apply on trixie-backports"):
        a_lab.acquire(variant=variant, started=False)
    with pytest.raises(UserError, match="healer-bindsto cannot apply"):
        a_lab.acquire(remedy="healer-bindsto", started=False)
    assert a_lab.instances == []


@pytest.mark.parametrize("cores, free_mb, workers", [(2, 20000, 1), (4, 20000, 2), (8, 20000, 4),
                                                     (1, 20000, 1), (8, 3000, 1)])
def test_pytest_n_auto_gives_each_guest_its_vcpus_worth_of_cores_within_free_memory(monkeypatch, cores, free_mb, workers):
    """Two guests on 2 cores time a restored guest's container start out (2026-12-01)."""
    from harness import capacity, plugin
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(capacity, "available_memory_mb", lambda: free_mb)
    assert plugin.pytest_xdist_auto_num_workers(None) == workers
