"""Tests for harness/lab/snapshots.py without booting: when a saved guest is used, when it is
made again, and what two workers or a full disk do. Snapshots here are laid out as
_create leaves them, with real qcow2 disks on a small stand-in image."""
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.machines import accel
from harness.images import image
from harness.lab import snapshots
from harness.errors import GuestTimeout, UserError
from harness.paths import REPO
from harness.units import Variant


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(accel, "choose", lambda kernel: "tcg")  # no KVM probe in a fast test
    return tmp_path / "cache"


class Lab:
    """What snapshots.ensure asks of a lab: its image, memory and keep (making one is faked)."""

    def __init__(self, image_: image.Image, memory_mb: int = 1024):
        self.image, self.memory_mb, self.keep = image_, memory_mb, False


def make_image(key: str = "bookworm-0123456789abcdef") -> image.Image:
    path = image.images_dir() / key
    path.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path / "root.img"), "1M"], check=True)
    (path / "manifest.json").write_text(json.dumps({"release": "bookworm"}))
    return image.Image(path)


def write_snapshot(path: Path, lab: Lab, accel_name: str = "tcg") -> None:
    """What _create leaves: state, RAM, both disks (the root one on the image) and meta.json."""
    path.mkdir(parents=True)
    (path / "state").write_bytes(b"\1" * 4096)
    (path / "ram").write_bytes(b"\2" * 8192)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(lab.image.root),
                    str(path / "root.qcow2")], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path / "volume.qcow2"), "1M"], check=True)
    meta = {"accel": accel_name, "qemu": accel.qemu_version(), "memory_mb": lab.memory_mb,
            "image_stamp": snapshots.image_stamp(lab.image), "state_bytes": 4096, "ram_bytes": 8192,
            "kernel": "6.1.0-test", "systemd": "252-test"}
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def made(monkeypatch):
    """Replaces the cold boot and save with write_snapshot; lists each time one was made."""
    calls = []

    def fake_create(path, lab, variant, accel_name, argv):
        calls.append(path.name)
        write_snapshot(path, lab, accel_name)

    monkeypatch.setattr(snapshots, "_create", fake_create)
    return calls


def the_snapshot(lab: Lab, variant: Variant = Variant()) -> Path:
    argv = snapshots.argv_shape(lab.image, lab.memory_mb, "tcg")
    return snapshots.snapshots_dir() / snapshots.snapshot_key(lab.image, variant, lab.memory_mb, "tcg", argv)


def test_the_key_changes_with_whatever_a_restore_depends_on(cache, monkeypatch):
    lab = Lab(make_image())
    argv = snapshots.argv_shape(lab.image, 1024, "tcg")
    key = snapshots.snapshot_key(lab.image, Variant(), 1024, "tcg", argv)
    other_image = make_image("bookworm-fedcba9876543210")
    changed = {
        "image": snapshots.snapshot_key(other_image, Variant(), 1024, "tcg", argv),
        "chain": snapshots.snapshot_key(lab.image, Variant(chain="requires"), 1024, "tcg", argv),
        "filesystem": snapshots.snapshot_key(lab.image, Variant(fs="ext4"), 1024, "tcg", argv),
        "memory": snapshots.snapshot_key(lab.image, Variant(), 2048, "tcg", argv),
        "accelerator": snapshots.snapshot_key(lab.image, Variant(), 1024, "kvm", argv),
        "command line": snapshots.snapshot_key(lab.image, Variant(), 1024, "tcg", argv.replace("qemu64", "max")),
    }
    monkeypatch.setattr(accel, "qemu_version", lambda: "QEMU emulator version 9.2.0")
    changed["QEMU version"] = snapshots.snapshot_key(lab.image, Variant(), 1024, "tcg", argv)
    assert key.startswith("ecs-docker-bindsto-xfs-")
    assert {what for what, other in changed.items() if other == key} == set()
    assert len(set(changed.values())) == len(changed)
    # The command line's shape has no per-run paths or ports in it: every run shares it.
    assert "/RUN/ram" in argv and "hostfwd=tcp:127.0.0.1:0-:22" in argv


def test_a_whole_snapshot_is_used_as_it_is(cache, made):
    lab = Lab(make_image())
    write_snapshot(the_snapshot(lab), lab)
    saved = snapshots.ensure(lab, Variant())
    assert made == []
    assert saved.root == the_snapshot(lab) / "root.qcow2" and saved.accel == "tcg"
    assert saved.guest_versions == {"kernel": "6.1.0-test", "systemd": "252-test"}


@pytest.mark.parametrize("damage", ["meta.json missing", "ram missing", "volume missing", "state truncated",
                                    "meta.json half-written"])
def test_a_half_written_or_damaged_snapshot_is_made_again(cache, made, damage):
    lab = Lab(make_image())
    path = the_snapshot(lab)
    write_snapshot(path, lab)
    if damage.endswith("missing"):
        (path / damage.split()[0].replace("volume", "volume.qcow2")).unlink()
    elif damage == "state truncated":
        (path / "state").write_bytes(b"\1" * 100)
    else:
        (path / "meta.json").write_text('{"accel": "tcg", "sta')
    saved = snapshots.ensure(lab, Variant())
    assert made == [path.name]
    assert saved.state.stat().st_size == 4096 and saved.volume.exists()


def test_a_snapshot_whose_image_was_deleted_or_rebuilt_is_made_again(cache, made):
    lab = Lab(make_image())
    path = the_snapshot(lab)
    write_snapshot(path, lab)
    # `unitchaos image build --rebuild`: a new root disk at the very same path.
    lab.image.root.unlink()
    time.sleep(0.01)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(lab.image.root), "1M"], check=True)
    snapshots.ensure(lab, Variant())
    assert made == [path.name]
    snapshots.ensure(lab, Variant())
    assert made == [path.name]  # made for the new image: used from then on

    lab.image.root.unlink()  # the image is gone altogether
    with pytest.raises(FileNotFoundError):
        snapshots.image_stamp(lab.image)
    assert snapshots._load(path, lab.image) is None


def _ensure_in_a_worker(cache: str, image_path: str, results) -> None:
    os.environ["UNITCHAOS_CACHE"] = cache
    saved = snapshots.ensure(Lab(image.Image(Path(image_path))), Variant())
    results.put(str(saved.state))


def test_two_workers_saving_the_same_snapshot_make_it_once(cache, monkeypatch):
    lab = Lab(make_image())
    log = cache / "made.log"

    def slow_create(path, lab, variant, accel_name, argv):
        with open(log, "a") as out:
            out.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # a second worker arrives while the first is still saving
        write_snapshot(path, lab, accel_name)

    monkeypatch.setattr(snapshots, "_create", slow_create)
    fork = multiprocessing.get_context("fork")  # the children keep the monkeypatches
    results = fork.Queue()
    workers = [fork.Process(target=_ensure_in_a_worker, args=(str(cache), str(lab.image.path), results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert len(log.read_text().split()) == 1  # one saved, the other waited and loaded it
    assert results.get(timeout=5) == results.get(timeout=5) == str(the_snapshot(lab) / "state")


def test_a_killed_runs_staging_directory_is_removed_by_the_next_save(cache, made):
    lab = Lab(make_image())
    path = the_snapshot(lab)
    abandoned = snapshots.snapshots_dir() / f".{path.name}.k1ll3d"
    abandoned.mkdir(parents=True)
    (abandoned / "ram").write_bytes(b"\0" * 4096)
    other_key = snapshots.snapshots_dir() / ".bindsto-ext4-0000000000000000.s4v1ng"
    other_key.mkdir()
    snapshots.ensure(lab, Variant())
    assert not abandoned.exists() and path.exists()
    assert other_key.exists()  # another key's: its own saver sweeps it, under its own lock


class FailingBoot:
    """A guest whose boot fails the way QEMU's stderr in its run directory says."""

    def __init__(self, run_dir: Path, stderr: str):
        run_dir.mkdir(parents=True)
        (run_dir / "qemu.stderr").write_text(stderr)
        self.run_dir = run_dir
        self.machine = type("Machine", (), {"ram_file": None, "process": None, "run_dir": run_dir})()

    def boot(self):
        raise GuestTimeout("QEMU exited while waiting for 'unitchaos: booted' on the console")


@pytest.mark.parametrize("stderr, kept, message", [
    ("", True, "QEMU exited while waiting"),
    ("cat: write error: No space left on device\n", False,
     "disk full while saving a snapshot in .*: QEMU: No space left on device"),
])
def test_a_save_that_fails_leaves_no_snapshot_and_keeps_the_guest_unless_the_disk_is_full(
        cache, stderr, kept, message):
    lab = Lab(make_image())
    released = []
    lab.acquire = lambda variant, started, label: FailingBoot(cache / "runs" / label, stderr)
    lab.release = lambda instance, keep=None: released.append(keep) or instance.run_dir
    with pytest.raises((GuestTimeout, UserError), match=message):
        snapshots.ensure(lab, Variant())
    assert released == [kept]  # kept for a look; a full disk has no room for that
    assert [p.name for p in snapshots.snapshots_dir().iterdir() if not p.name.endswith(".lock")] == []


@pytest.fixture
def small_disk(cache):
    """The snapshots directory on a 64 MB filesystem of its own (needs root to mount)."""
    where = snapshots.snapshots_dir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a small filesystem: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def test_too_little_space_for_a_snapshot_is_refused_before_booting(cache, small_disk, monkeypatch):
    lab = Lab(make_image())
    lab.acquire = lambda **options: pytest.fail("booted with no room to save")
    with pytest.raises(UserError) as refused:
        snapshots.ensure(lab, Variant())
    message = str(refused.value)
    assert f"disk full: a warm snapshot needs about 1280 MB free in {small_disk}" in message
    assert "and 64 MB are" in message and "unitchaos prune" in message
    assert [p.name for p in small_disk.iterdir() if not p.name.endswith(".lock")] == []


def test_cli_says_disk_full_in_one_line_and_exits_2(cache, small_disk):
    make_image(image.recipe_key("bookworm"))
    done = subprocess.run([sys.executable, "-m", "harness", "run", "healthy"], cwd=REPO,
                          env={**os.environ, "UNITCHAOS_ACCEL": "tcg"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "disk full: a warm snapshot needs" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(cache.joinpath("runs").iterdir()) == []
