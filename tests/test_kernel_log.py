"""Tests for harness/kernel_log.py against kernel lines as real kernels print them."""
import re

import pytest

from harness.kernel_log import PATTERNS, classify, events

# node-problem-detector's XfsShutdown pattern (config/kernel-monitor.json).
NPD_XFS_SHUTDOWN = re.compile(r"XFS .* Shutting down filesystem.?")

LOG_SHUTDOWN = "XFS (vdb): Filesystem has been shut down due to log error (0x2)."
OLD_LOG_SHUTDOWN = "XFS (xvdb): Log I/O Error Detected. Shutting down filesystem"
METADATA_SHUTDOWN = ("XFS (vdb): Metadata I/O Error (0x1) detected at xfs_trans_read_buf_map+0x1e2/0x2f0 [xfs] "
                     "(fs/xfs/xfs_trans_buf.c:296).  Shutting down filesystem.")
REMOVAL_SHUTDOWN = ("XFS (vdb): Block device removal (0x20) detected at fs_bdev_mark_dead+0x59/0x70 "
                    "(fs/xfs/xfs_super.c:1177).  Shutting down filesystem.")
CORRUPTION_SHUTDOWN = ("XFS (vdb): Corruption of in-memory data (0x8) detected at xfs_trans_cancel+0x13c/0x160 "
                       "[xfs] (fs/xfs/xfs_trans.c:1098).  Shutting down filesystem.")
# What `xfs_io -x -c shutdown` (the xfs-shutdown fault) makes every kernel say first.
USER_SHUTDOWN = "XFS (vdb): User initiated shutdown received."
XFS_SHUTDOWNS = [LOG_SHUTDOWN, OLD_LOG_SHUTDOWN, METADATA_SHUTDOWN, REMOVAL_SHUTDOWN, CORRUPTION_SHUTDOWN, USER_SHUTDOWN]

CLASSIFIED = [
    (LOG_SHUTDOWN, {"xfs-shutdown"}),
    (OLD_LOG_SHUTDOWN, {"xfs-shutdown", "xfs-log-io-error"}),
    (METADATA_SHUTDOWN, {"xfs-shutdown", "xfs-metadata-io-error"}),
    (REMOVAL_SHUTDOWN, {"xfs-shutdown", "xfs-device-removed"}),
    ("XFS (vdb): log I/O error -5", {"xfs-log-io-error"}),
    ('XFS (vdb): metadata I/O error in "xfs_alloc_read_agfl+0x7a/0xb0 [xfs]" at daddr 0x8 len 8 error 5',
     {"xfs-metadata-io-error"}),
    ("XFS (vdb): Please unmount the filesystem and rectify the problem(s).", {"xfs-please-unmount"}),
    ("XFS (vdb): Unmounting Filesystem 5d3a2b1c-0000-4000-8000-000000000000", {"xfs-unmount"}),
    ("I/O error, dev vdb, sector 192 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2", {"block-io-error"}),
    ("Buffer I/O error on dev vdb, logical block 0, lost async page write", {"buffer-io-error", "lost-page-write"}),
    # What the page cache says when a write it had accepted can no longer reach the disk.
    ("vdb: writeback error on inode 280, offset 0, sector 14936", {"writeback-error"}),
    ("JBD2: I/O error when updating journal superblock for vdb-8.", {"jbd2-error"}),
    ("EXT4-fs error (device vdb): ext4_journal_check_start:83: comm dd: Detected aborted journal", {"ext4-error"}),
    ("EXT4-fs (vdb): Remounting filesystem read-only", {"ext4-remount-ro"}),
    # Kernel 6.12 on an unplugged ext4 volume: ext4 shuts down, and I/O meets a 0-sector device.
    ("EXT4-fs (vdb): shut down requested (2)", {"ext4-shutdown"}),
    ("vdb: rw=12288, sector=35640, nr_sectors = 8 limit=0", {"block-device-gone"}),
    ("Aborting journal on device vdb-8.", {"ext4-abort-journal"}),
    ("INFO: task kworker/1:2:123 blocked for more than 120 seconds.", {"hung-task"}),
]


@pytest.mark.parametrize("line, kinds", CLASSIFIED, ids=[line[:40] for line, _ in CLASSIFIED])
def test_classify(line, kinds):
    assert set(classify(line)) == kinds


@pytest.mark.parametrize("line", XFS_SHUTDOWNS)
def test_every_xfs_shutdown_form_is_a_shutdown(line):
    assert "xfs-shutdown" in classify(line)


def test_node_problem_detector_misses_the_log_error_shutdown():
    # NPD's pattern does catch the "Shutting down filesystem" forms ...
    for line in [OLD_LOG_SHUTDOWN, METADATA_SHUTDOWN, REMOVAL_SHUTDOWN]:
        assert NPD_XFS_SHUTDOWN.search(line), line
    # ... but not the log path's wording, which we do catch.
    assert NPD_XFS_SHUTDOWN.search(LOG_SHUTDOWN) is None
    assert "xfs-shutdown" in classify(LOG_SHUTDOWN)


@pytest.mark.parametrize("line", [
    "XFS (vdb): Mounting V5 Filesystem 5d3a2b1c-0000-4000-8000-000000000000",
    "XFS (vdb): Ending clean mount",
    "EXT4-fs (vda): mounted filesystem with ordered data mode. Quota mode: none.",
    "virtio_blk virtio2: [vdb] 2097152 512-byte logical blocks (1.07 GB/1.00 GiB)",
    "systemd[1]: Mounted var-lib-docker.mount - Docker's volume on /dev/vdb.",
])
def test_healthy_lines_are_not_classified(line):
    assert classify(line) == []


def test_classify_ignores_case():
    assert classify("xfs (vdb): shutting down filesystem") == ["xfs-shutdown"]


def test_every_pattern_is_exercised():
    seen = {kind for line, kinds in CLASSIFIED for kind in kinds}
    assert seen == set(PATTERNS)


CONSOLE = """\
[    0.000000] Linux version 6.1.0-27-cloud-amd64 (debian-kernel@lists.debian.org)
[    3.201337] XFS (vdb): Mounting V5 Filesystem 5d3a2b1c-0000-4000-8000-000000000000
[  OK  ] Mounted \x1b[0;1;39mvar-lib-docker.mount\x1b[0m - Docker's volume on /dev/vdb.
unitchaos: booted metadata=200 agent=active
[   72.892229] I/O error, dev vdb, sector 192 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2\r
[   72.893001] XFS (vdb): log I/O error -5
Debian GNU/Linux 12 unitchaos ttyS0
[   72.893555] XFS (vdb): Filesystem has been shut down due to log error (0x2).
[   72.893560] XFS (vdb): Please unmount the filesystem and rectify the problem(s).
[  123.000001] INFO: task kworker/1:2:123 blocked for more than 120 seconds.
"""


def test_events_finds_the_failure_lines_in_console_text():
    found = events(CONSOLE)
    assert [event["line"] for event in found] == [
        "I/O error, dev vdb, sector 192 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2",
        "XFS (vdb): log I/O error -5",
        "XFS (vdb): Filesystem has been shut down due to log error (0x2).",
        "XFS (vdb): Please unmount the filesystem and rectify the problem(s).",
        "INFO: task kworker/1:2:123 blocked for more than 120 seconds.",
    ]
    assert [event["uptime"] for event in found] == [72.892229, 72.893001, 72.893555, 72.89356, 123.000001]
    assert all(isinstance(event["uptime"], float) for event in found)
    assert found[2]["kinds"] == ["xfs-shutdown"]


def test_events_skips_failure_words_outside_kernel_lines():
    text = ("XFS (vdb): Filesystem has been shut down due to log error (0x2).\n"
            "dd: error writing '/var/lib/docker/x': Input/output error\n")
    assert events(text) == []


def test_events_of_nothing_is_empty():
    assert events("") == []
