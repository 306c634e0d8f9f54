"""The deep health check's kernel patterns against every kernel line the incident
experiments saw on each release (tests/fixtures/kernel-lines/, written by
`unitchaos versions --kernel-lines` from real runs, one file per release and kernel).

Each kernel words a dying disk its own way (6.1: "Metadata I/O Error (0x1)", 6.12:
"Block device removal (0x20) detected at fs_bdev_mark_dead"): the host's classifier and
the guest daemon's matcher must both see every one of them, and nothing in a healthy run.
"""
import importlib.machinery
import importlib.util
import json
import re
from pathlib import Path

import pytest

from harness.kernel_log import classify
from harness.plugin import EVERY_RELEASE

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "kernel-lines").glob("*.json"))
DAEMON = ROOT / "vm" / "guest" / "usr" / "local" / "sbin" / "unitchaos-health"
PATTERNS_JSON = ROOT / "vm" / "guest" / "usr" / "local" / "share" / "unitchaos" / "kernel-patterns.json"

# Experiments that break the volume under a mounted filesystem: the deep check's kernel
# check must fail on what the kernel said. The others (healthy, a clean or lazy umount,
# stopping the mount) must leave it passing.
BREAKS_THE_VOLUME = {"yank bindsto xfs", "yank bindsto ext4", "unplug bindsto xfs", "unplug bindsto ext4",
                     "io-error bindsto ext4", "io-error bindsto xfs", "yank requires xfs", "io-error requires xfs", "xfs-shutdown requires xfs"}
# Captured on every kernel: what the incident is about.
XFS_BROKEN = {"yank bindsto xfs", "unplug bindsto xfs"}
XFS_SHUT_DOWN = XFS_BROKEN | {"yank requires xfs", "io-error requires xfs", "io-error bindsto xfs", "xfs-shutdown requires xfs"}
# Any wording of an XFS shutdown, as broad as a human reading the log would be.
LOOKS_LIKE_XFS_SHUTDOWN = re.compile(r"XFS \(\w+\).*(shut ?down|shutting down)", re.IGNORECASE)

CAPTURES = [json.loads(path.read_text()) for path in FIXTURES]
CASES = [(capture, name) for capture in CAPTURES for name in capture["experiments"]]
IDS = [f"{capture['release']}-{name.replace(' ', '-')}" for capture, name in CASES]


def load_daemon_module():
    loader = importlib.machinery.SourceFileLoader("unitchaos_health_fixtures", str(DAEMON))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


DAEMON_MODULE = load_daemon_module()


def guest_watch(lines: list[str]):
    """The guest daemon's kernel check after reading LINES from /dev/kmsg (about /dev/vdb)."""
    args = DAEMON_MODULE.parse_args(["--kernel-patterns", str(PATTERNS_JSON), "--device", "/dev/vdb"])
    watch = DAEMON_MODULE.KernelWatch(args)
    watch.error = None  # what run() does once /dev/kmsg is open
    for seq, line in enumerate(lines):
        watch.feed(f"3,{seq},{seq},-;{line}")
    return watch


def test_every_release_has_captured_kernel_lines():
    # Every release the incident runs on in CI.
    assert {capture["release"] for capture in CAPTURES} >= set(EVERY_RELEASE)
    for path, capture in zip(FIXTURES, CAPTURES):
        assert path.name == f"{capture['release']}-{capture['kernel']}.json"
        assert set(capture["experiments"]) >= XFS_BROKEN


@pytest.mark.parametrize("capture, name", CASES, ids=IDS)
def test_the_deep_check_fails_exactly_when_the_volume_broke(capture, name):
    lines = capture["experiments"][name]
    ok, reason = guest_watch(lines)()
    host_fatal = [line for line in lines if classify(line) and classify(line) != ["xfs-unmount"]]
    if name in BREAKS_THE_VOLUME:
        assert not ok, f"{capture['kernel']}: the guest's kernel check passed after {name}: {reason}"
        assert host_fatal, f"{capture['kernel']}: the host classified nothing after {name}"
    else:
        assert ok, f"{capture['kernel']}: the guest's kernel check failed after {name}: {reason}"
        assert host_fatal == []


@pytest.mark.parametrize("capture, name", CASES, ids=IDS)
def test_host_and_guest_match_the_same_patterns_on_every_line(capture, name):
    for line in capture["experiments"][name]:
        watch = guest_watch([line])
        assert sorted(watch.snapshot()) == sorted(classify(line)), line


@pytest.mark.parametrize("capture, name", CASES, ids=IDS)
def test_every_xfs_shutdown_wording_is_a_shutdown(capture, name):
    lines = capture["experiments"][name]
    for line in lines:
        if LOOKS_LIKE_XFS_SHUTDOWN.search(line):
            assert "xfs-shutdown" in classify(line), line
    if name in XFS_SHUT_DOWN:
        assert any("xfs-shutdown" in classify(line) for line in lines), \
            f"{capture['kernel']}: no XFS shutdown after {name}"


def captured(release: str) -> dict:
    return next(capture for capture in CAPTURES if capture["release"] == release)


def test_kernel_6_12_says_block_device_removal_when_the_volume_is_unplugged():
    capture = captured("trixie")
    assert capture["kernel"].startswith("6.12.")
    removal = [line for line in capture["experiments"]["unplug bindsto xfs"]
               if "Block device removal (0x20) detected at fs_bdev_mark_dead" in line]
    assert removal and "Shutting down filesystem" in removal[0]
    assert {"xfs-shutdown", "xfs-device-removed"} <= set(classify(removal[0]))


def test_an_unplugged_ext4_volume_goes_read_only_on_6_1_and_shuts_down_on_6_12():
    with_ext4 = [capture for capture in CAPTURES if "unplug bindsto ext4" in capture["experiments"]]
    assert {capture["kernel"][:4] for capture in with_ext4} == {"6.1.", "6.12"}
    for capture in with_ext4:
        lines = capture["experiments"]["unplug bindsto ext4"]
        kinds = {kind for line in lines for kind in classify(line)}
        assert "ext4-abort-journal" in kinds, capture["kernel"]
        assert ("ext4-remount-ro" in kinds) == capture["kernel"].startswith("6.1."), capture["kernel"]
        assert ("ext4-shutdown" in kinds) == capture["kernel"].startswith("6.12"), capture["kernel"]


def test_kernel_6_1_never_says_block_device_removal():
    capture = captured("bookworm")
    assert capture["kernel"].startswith("6.1.")
    lines = [line for lines in capture["experiments"].values() for line in lines]
    assert not any("Block device removal" in line for line in lines)
