"""Tests for harness/lab/prune.py and `unitchaos prune`: a cache laid out as real runs leave
it (images, snapshots whose root disk is backed by an image, staging directories), with
small files standing in for the big ones."""
import fcntl
import json
import shutil
import subprocess
import sys

import pytest

from harness.machines import accel
from harness.images import image
from harness.lab import prune, snapshots
from harness.paths import REPO


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make_image(key: str) -> image.Image:
    path = image.images_dir() / key
    path.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path / "root.img"), "1M"], check=True)
    (path / "manifest.json").write_text(json.dumps({"release": key.rsplit("-", 1)[0]}))
    (image.images_dir() / f"{key}.lock").touch()
    return image.Image(path)


def make_snapshot(name: str, backing: image.Image, **meta):
    path = snapshots.snapshots_dir() / name
    path.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(backing.root),
                    str(path / "root.qcow2")], check=True)
    argv = snapshots.argv_shape(backing, 1024, "tcg")
    (path / "meta.json").write_text(json.dumps({"accel": "tcg", "qemu": accel.qemu_version(), "memory_mb": 1024,
                                                "argv_shape": argv, "image_stamp": snapshots.image_stamp(backing),
                                                **meta}))
    return path


def stale_names(found) -> dict[str, str]:
    return {entry.path.name: entry.why for entry in found}


def test_only_what_no_run_can_use_is_stale(cache):
    current = make_image(image.recipe_key("bookworm"))
    old = make_image("bookworm-0123456789abcdef")
    make_snapshot("bindsto-xfs-current", current)
    make_snapshot("bindsto-xfs-on-old-image", old)
    make_snapshot("bindsto-xfs-other-cpu", current, argv_shape="qemu-system-x86_64 -cpu max ...")
    make_snapshot("bindsto-xfs-other-qemu", current, qemu="QEMU emulator version 6.2.0")
    make_snapshot("bindsto-xfs-before-a-rebuild", current, image_stamp="1048576:1:2")
    assert stale_names(prune.find()) == {
        "bookworm-0123456789abcdef": "built by an older recipe",
        "bindsto-xfs-on-old-image": "its image is gone or stale",
        "bindsto-xfs-other-cpu": "saved for another QEMU command line",
        "bindsto-xfs-other-qemu": "saved by QEMU emulator version 6.2.0",
        "bindsto-xfs-before-a-rebuild": "its image was rebuilt since",
    }


def test_a_staging_directory_is_stale_only_when_nobody_holds_its_lock(cache):
    held = snapshots.snapshots_dir() / ".bindsto-xfs-aaaa.x1y2z3"
    abandoned = snapshots.snapshots_dir() / ".bindsto-ext4-bbbb.q9w8e7"
    held.mkdir(parents=True)
    abandoned.mkdir()
    with open(snapshots.snapshots_dir() / "bindsto-xfs-aaaa.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a run saving that snapshot right now
        assert stale_names(prune.find()) == {abandoned.name: "left half-written by a killed run"}


def test_remove_takes_the_entry_and_its_lock(cache):
    old = make_image("trixie-0123456789abcdef")
    current = make_image(image.recipe_key("trixie"))
    prune.remove(prune.find())
    assert not old.path.exists() and not (image.images_dir() / "trixie-0123456789abcdef.lock").exists()
    assert current.path.exists() and prune.find() == []


def test_cli_dry_run_lists_and_keeps(cache):
    old = make_image("bookworm-0123456789abcdef")
    (old.path / "vmlinuz").write_bytes(b"\1" * (20 << 20))  # blocks on disk, unlike the sparse root.img
    env = {"UNITCHAOS_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "harness", "prune", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"would remove {old.path}" in done.stdout and "built by an older recipe" in done.stdout
    assert done.stdout.rstrip().endswith("(dry run: nothing removed)") and old.path.exists()
    done = subprocess.run([sys.executable, "-m", "harness", "prune"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not old.path.exists()
    freed = float(done.stdout.split("1 stale entry, ")[1].split(" GB")[0])
    assert freed > 0  # measured before the removal, not after


def test_images_of_shipped_chains_and_the_chain_in_use_are_kept(cache, tmp_path, monkeypatch):
    from harness import chainfile
    redis = image.recipe_key("bookworm", image.Extras.of(chainfile.parse_file(chainfile.CHAINS_DIR / "redis.toml")))
    shutil.copytree(chainfile.CHAINS_DIR / "redis", tmp_path / "redis")
    own_file = tmp_path / "unitchaos.toml"
    own_file.write_text((chainfile.CHAINS_DIR / "redis.toml").read_text().replace('"redis-server"', '"redis-server", "jq"', 1))
    monkeypatch.setenv(chainfile.ENV, str(own_file))
    own = image.recipe_key("trixie", image.Extras.of(chainfile.parse_file(own_file, check_packages=False)))
    assert own != image.recipe_key("trixie", image.Extras.of(chainfile.parse_file(chainfile.CHAINS_DIR / "redis.toml")))
    for key in (redis, own, "bookworm-0123456789abcdef"):
        make_image(key)
    assert stale_names(prune.find()) == {"bookworm-0123456789abcdef": "built by an older recipe"}
