"""A disk that fills up while a warm snapshot is being made. The guest's RAM is a file in
the snapshot's staging directory while it boots, and a page that cannot get a block kills
QEMU with SIGBUS: the run must say "disk full", not "QEMU exited", and leave nothing."""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.lab import snapshots
from harness.errors import UserError
from harness.lab.lab import Lab
from harness.paths import cache_dir


@pytest.fixture
def cache_on_a_small_disk(lab, monkeypatch):
    """A cache of its own whose snapshots directory is a filesystem with room for the
    free-space check and not much more; images still come from the real cache."""
    images = lab.image.path.parent  # `lab`: the fixture's QEMU check; its image, built if need be
    # Short: QEMU's sockets live in the run directories, and a socket path has 107 bytes.
    cache = Path(tempfile.mkdtemp(prefix="unitchaos-full-", dir="/tmp"))
    monkeypatch.setenv("UNITCHAOS_CACHE", str(cache))
    (cache_dir() / "images").symlink_to(images)
    where = snapshots.snapshots_dir()
    size_mb = lab.memory_mb + snapshots.SAVE_MARGIN_MB + 32
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}M", "tmpfs", str(where)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a small filesystem (run as root): {mounted.stderr}"
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)
    shutil.rmtree(cache)


def test_a_disk_filling_up_while_a_snapshot_is_made_says_disk_full_and_leaves_nothing(
        lab, cache_on_a_small_disk, monkeypatch):
    checked = snapshots._require_space

    def then_someone_fills_the_disk(memory_mb):
        checked(memory_mb)  # there was room when the save began ...
        free = os.statvfs(cache_on_a_small_disk)
        with open(cache_on_a_small_disk / "filler", "wb") as filler:  # ... then only 48 MB
            os.posix_fallocate(filler.fileno(), 0, free.f_bavail * free.f_frsize - (48 << 20))

    monkeypatch.setattr(snapshots, "_require_space", then_someone_fills_the_disk)
    with Lab(release=lab.guest_release) as small:
        with pytest.raises(UserError) as failed:
            small.acquire()
        assert not small.instances  # released as it failed
    assert f"disk full while saving a snapshot in {cache_on_a_small_disk}: " in str(failed.value)
    assert "SIGBUS" in str(failed.value) or "No space left on device" in str(failed.value)
    assert "unitchaos prune" in failed.value.fix
    left = sorted(p.name for p in cache_on_a_small_disk.iterdir())
    assert [name for name in left if not name.endswith(".lock")] == ["filler"]  # no half-written snapshot
    assert list((cache_dir() / "runs").iterdir()) == []  # no run directory, so no QEMU either
    assert subprocess.run(["pgrep", "-f", str(cache_dir())], capture_output=True).stdout == b""
