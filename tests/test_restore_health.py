"""A restore is confirmed healthy from the host side, as a load balancer would (the
chain's checks and the deep check over the forwarded ports, no guest command), and a
snapshot that restores unhealthy is made again: a faster restore must not hide a broken
snapshot. No QEMU here: the machine and the instances are stand-ins."""
import pytest

from harness import units
from harness.errors import GuestRefused, GuestTimeout
from harness.lab import lab as lab_mod
from harness.lab import snapshots
from harness.lab.instance import AGENT_PORT, HEALTH_PORT, Instance
from harness.machines.saved_state import SavedState

from test_snapshots import Lab as SnapshotLab, cache, made, make_image, the_snapshot, write_snapshot  # noqa: F401


class Machine:
    """Answers the forwarded ports from ANSWERS {port: status}; any guest command is an error."""
    def __init__(self, answers: dict[int, int | None]):
        self.answers, self.run_dir, self.clock = answers, None, None
        self.start_split = {"disks": 0.01, "launch": 0.02, "incoming": 0.03}
        self.channel = self
        self.asked = []

    def start(self, restore=None):
        self.started = restore

    def set_clock(self, epoch):
        self.clock = epoch

    def http_get(self, port, path, timeout=5.0):
        self.asked.append(port)
        status = self.answers[port]
        return status, ({"healthy": status == 200, "checks": {}} if status else "ConnectionResetError")

    def check_alive(self, waiting_for, since=0):
        pass

    def run(self, command, timeout=30):
        raise AssertionError(f"a restore ran a guest command: {command}")

    succeed = unit_states = unit_state = run


def restored_instance(answers, tmp_path) -> Instance:
    instance = Instance.__new__(Instance)
    instance.machine, instance.chain, instance.run_dir = Machine(answers), units.incident(), tmp_path
    instance.restored, instance.restore_split = False, {}
    return instance


SAVED = SavedState(state=None, ram=None, root=None, volume=None, accel="tcg", guest_versions={"kernel": "6.1"})


def test_a_healthy_restore_is_confirmed_by_the_checks_over_the_forwarded_ports_alone(tmp_path):
    instance = restored_instance({AGENT_PORT: 200, HEALTH_PORT: 200}, tmp_path).restore(SAVED)
    assert instance.restored and instance.guest_versions == {"kernel": "6.1"}
    assert set(instance.machine.asked) == {AGENT_PORT, HEALTH_PORT} and instance.machine.clock is not None
    assert set(instance.restore_split) == {"disks", "launch", "incoming", "clock", "first_answer"}


@pytest.mark.parametrize("port", [AGENT_PORT, HEALTH_PORT])
def test_a_restored_guest_whose_check_fails_is_refused_naming_the_check(tmp_path, port):
    answers = {AGENT_PORT: 200, HEALTH_PORT: 200, port: 503}
    with pytest.raises(GuestRefused, match="restored guest is not healthy.*failing checks: {'(stock|deep)'"):
        restored_instance(answers, tmp_path).confirm_healthy(timeout=0.3)


class Slow(Machine):
    """The deep check fails only by timeouts (a healthy guest on a host at load 12-16)."""
    def http_get(self, port, path, timeout=5.0):
        if port == HEALTH_PORT:
            return 503, {"healthy": False, "checks": {"io": {"status": "fail", "reason": "timeout: the probe did not "
                                                                                       "finish within 3 s (hung I/O)"},
                                                      "docker": {"status": "ok", "reason": ""}}}
        return None, "TimeoutError: timed out"


def test_checks_that_only_time_out_say_the_host_is_too_busy_not_that_the_snapshot_is_broken(tmp_path):
    instance = restored_instance({}, tmp_path)
    instance.machine = Slow({})
    with pytest.raises(GuestTimeout, match="answered too slowly") as slow:
        instance.confirm_healthy(timeout=0.3)
    assert not isinstance(slow.value, GuestRefused)


class Restored:
    """What Lab.acquire does with a restored instance; unhealthy while ANSWERS says so."""
    restores: list = []

    def __init__(self, run_dir, unhealthy_restores: list[bool]):
        self.run_dir, self.unhealthy_restores = run_dir, unhealthy_restores
        run_dir.mkdir(parents=True, exist_ok=True)
        self.stopped = False

    def restore(self, saved):
        Restored.restores.append(saved.made)
        verdict = self.unhealthy_restores.pop(0)
        if verdict == "slow":
            raise GuestTimeout("the restored guest answered too slowly")
        if verdict:
            raise GuestRefused("the restored guest is not healthy: deep 503")
        return self

    def stop(self):
        self.stopped = True


@pytest.fixture
def a_lab(cache, made, monkeypatch, tmp_path):
    """A Lab whose snapshots are made by write_snapshot and whose instances are Restored."""
    image_ = make_image()
    monkeypatch.setattr(lab_mod.Lab, "image", property(lambda self: image_))
    a_lab = lab_mod.Lab()
    Restored.restores = []
    a_lab.unhealthy_restores, a_lab.handed_out = [], []

    def new(variant, label):
        instance = Restored(tmp_path / f"run-{len(a_lab.handed_out)}", a_lab.unhealthy_restores)
        a_lab.handed_out.append(instance)
        a_lab.instances.append(instance)
        return instance
    monkeypatch.setattr(a_lab, "_new", new)
    return a_lab


def test_a_snapshot_that_restores_unhealthy_is_made_again_and_the_new_one_used(a_lab, made):
    a_lab.unhealthy_restores += [True, False]
    instance = a_lab.acquire()
    assert len(made) == 2  # the first snapshot, then the one made again
    first, second = a_lab.handed_out
    assert instance is second and first.stopped and not first.run_dir.exists()
    assert Restored.restores[0] != Restored.restores[1]  # restored from the new save


def test_a_snapshot_made_again_that_restores_unhealthy_too_is_a_failure_and_nothing_is_left(a_lab, made):
    a_lab.unhealthy_restores += [True, True]
    with pytest.raises(GuestRefused):
        a_lab.acquire()
    assert len(made) == 2 and all(i.stopped for i in a_lab.handed_out) and a_lab.instances == []


def test_a_healthy_restore_makes_no_snapshot_again(a_lab, made):
    a_lab.unhealthy_restores += [False, False]
    a_lab.acquire()
    a_lab.acquire()
    assert len(made) == 1


def test_a_snapshot_another_worker_already_made_again_is_used_not_remade(cache, made):
    lab = SnapshotLab(make_image())
    stale = snapshots.ensure(lab, units.Variant())
    path = the_snapshot(lab)
    import shutil
    import time
    shutil.rmtree(path)
    time.sleep(0.01)
    write_snapshot(path, lab)  # another worker's new save
    fresh = snapshots.ensure(lab, units.Variant(), unless=stale)
    assert len(made) == 1 and fresh.made != stale.made
    assert snapshots.ensure(lab, units.Variant(), unless=fresh).made != fresh.made and len(made) == 2


def test_a_restore_too_slow_on_a_busy_host_makes_no_snapshot_again(a_lab, made):
    a_lab.unhealthy_restores += ["slow"]
    with pytest.raises(GuestTimeout):
        a_lab.acquire()
    assert len(made) == 1 and a_lab.handed_out[0].stopped


def test_a_failing_check_is_reported_even_when_the_clock_cannot_be_set_either(tmp_path):
    from harness.errors import GuestTimeout as ClockTimeout
    instance = restored_instance({AGENT_PORT: 200, HEALTH_PORT: 503}, tmp_path)

    def no_clock(epoch):
        raise ClockTimeout("the guest did not set its clock")
    instance.machine.set_clock = no_clock
    instance.confirm_healthy = lambda: Instance.confirm_healthy(instance, timeout=0.3)
    with pytest.raises(GuestRefused):  # the lab then makes the snapshot again
        instance.restore(SAVED)


def test_ctrl_c_while_a_failed_snapshot_guest_is_released_leaves_no_staging_directory(cache, monkeypatch):
    class Failing:
        machine = type("Machine", (), {"ram_file": None})()

        def boot(self):
            raise GuestTimeout("the deep check never passed")

    class OneLab:
        memory_mb = 64

        def acquire(self, **kwargs):
            return Failing()

    def interrupted(lab, instance, keep):
        raise KeyboardInterrupt  # Ctrl-C while the slow guest is asked for its journal
    monkeypatch.setattr(snapshots, "_release", interrupted)
    monkeypatch.setattr(snapshots, "_ran_out_of_space", lambda machine: None)
    with pytest.raises(KeyboardInterrupt):
        snapshots._create(snapshots.snapshots_dir() / "bindsto-xfs-0000", OneLab(), units.Variant(), "tcg", "")
    assert list(snapshots.snapshots_dir().iterdir()) == []
