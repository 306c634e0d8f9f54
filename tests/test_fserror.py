"""The guest's FAN_FS_ERROR watcher (vm/guest/usr/local/lib/unitchaos/fserror.py): what it
reads out of fanotify's events, and that a kernel without FAN_FS_ERROR is a sentence, not
a crash."""
import ctypes
import errno
import importlib.util
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fserror", ROOT / "vm/guest/usr/local/lib/unitchaos/fserror.py")
fserror = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fserror)


def event(mask, *infos):
    body = b"".join(infos)
    length = fserror.METADATA.size + len(body)
    return fserror.METADATA.pack(length, 3, 0, fserror.METADATA.size, mask, -1, 0) + body


def error_info(code, count):
    return fserror.INFO_HEADER.pack(fserror.FAN_EVENT_INFO_TYPE_ERROR, 0, 12) + struct.pack("=iI", code, count)


def fid_info():
    # FAN_EVENT_INFO_TYPE_FID: header, fsid (8 bytes), a file handle (8-byte header + 8 bytes).
    handle = struct.pack("=Ii", 8, 1) + b"\0" * 8
    return fserror.INFO_HEADER.pack(1, 0, 4 + 8 + len(handle)) + b"\0" * 8 + handle


def test_an_fs_error_event_gives_its_error_code_and_count_past_the_fid_record():
    data = event(fserror.FAN_FS_ERROR, fid_info(), error_info(5, 3)) + event(fserror.FAN_FS_ERROR, error_info(117, 1))
    assert fserror.parse_events(data) == [(5, 3), (117, 1)]
    assert [fserror.describe_error(code) for code, _ in fserror.parse_events(data)] == ["EIO", "EUCLEAN"]


def test_an_overflow_is_reported_not_mistaken_for_an_error():
    assert fserror.parse_events(event(fserror.FAN_Q_OVERFLOW)) == [(None, 0)]
    assert fserror.describe_error(None) == "overflow"


def test_a_directory_that_is_not_a_mount_point_is_refused(tmp_path):
    ok, reason = fserror.FsErrorWatch(str(tmp_path)).open()
    assert not ok and reason == f"{tmp_path} is not a mount point"


class OldKernel:
    """fanotify_init works, fanotify_mark(FAN_FS_ERROR) says EINVAL: a kernel before 5.16."""
    def __init__(self):
        self.fanotify_init = lambda flags, event_flags: 99
        self.fanotify_mark = self.mark

    def mark(self, *args):
        ctypes.set_errno(errno.EINVAL)
        return -1


def test_an_old_kernel_says_not_supported_by_kernel_x(monkeypatch):
    closed = []
    monkeypatch.setattr(fserror, "_libc", OldKernel)
    monkeypatch.setattr(fserror, "kernel_release", lambda: "5.10.0-1-amd64")
    monkeypatch.setattr(fserror.os, "close", closed.append)
    watch = fserror.FsErrorWatch("/")
    ok, reason = watch.open()
    assert not ok
    assert reason == "FAN_FS_ERROR not supported by kernel 5.10.0-1-amd64 on /: fanotify_mark EINVAL"
    assert closed == [99] and watch.fd is None
    assert watch.wait(0) == []


# The host's side: what an outcome says about FAN_FS_ERROR, from the deep check's /health.
from harness import units  # noqa: E402
from harness.evidence import fs_error  # noqa: E402
from harness.runs import versions  # noqa: E402
from harness.errors import UserError  # noqa: E402
import pytest  # noqa: E402


def health(events, supported=True, reason="FAN_FS_ERROR marked on the filesystem at /var/lib/docker (kernel 7.3.4)"):
    return {"fs_error": {"supported": supported, "reason": reason, "events": events},
            "kernel_matches": {"block-io-error": {"first_monotonic": 100.0},
                               "xfs-shutdown": {"first_monotonic": 100.25}},
            "became_unhealthy_monotonic": 100.01}


def test_an_outcome_says_when_fan_fs_error_came_after_the_first_failed_io():
    seen = fs_error.fan_fs_error(health([{"error": 5, "error_name": "EIO", "count": 2, "monotonic": 100.3}]))
    assert seen.arrived and seen.error == "EIO" and seen.errors_counted == 2
    assert seen.seconds_from_first_failed_io == 0.3
    # The kmsg patterns made the check fail on the first I/O error, before the shutdown line.
    assert seen.deep_unhealthy_after_shutdown_line == -0.24
    assert versions.fs_error_words(seen) == "FAN_FS_ERROR EIO"


def test_silence_and_an_old_kernel_are_told_apart():
    assert versions.fs_error_words(fs_error.fan_fs_error(health([]))) == "no FAN_FS_ERROR"
    old = fs_error.fan_fs_error(health([], False, "FAN_FS_ERROR not supported by kernel 5.10.0-1-amd64 on /var/lib/docker: "
                                                  "fanotify_mark EINVAL"))
    assert versions.fs_error_words(old).startswith("FAN_FS_ERROR not supported by kernel 5.10.0-1-amd64")
    assert versions.fs_error_words(fs_error.fan_fs_error("connection refused")) == "not measured"


def test_a_remedy_lays_its_units_over_the_chain():
    rendered = units.render(units.Variant(remedy="fs-error-watch"))
    assert "BindsTo=unitchaos-fs-error-watch.service" in rendered["ecs-agent.service.d/50-fs-error-watch.conf"]
    assert "ExecStart=/usr/local/sbin/unitchaos-fserror /var/lib/docker" in rendered["unitchaos-fs-error-watch.service"]
    assert "README.md" not in rendered
    assert "BindsTo=xfs_healer@var-lib-docker.service" in \
        units.render(units.Variant(remedy="healer-bindsto"))["ecs-agent.service.d/50-healer-bindsto.conf"]
    with pytest.raises(UserError, match="unknown remedy 'magic'.*fs-error-watch, healer-bindsto"):
        units.Variant(remedy="magic")


def test_versions_with_every_remedy_runs_each_row_bare_and_with_each():
    rows = versions.with_remedies([("yank", "bindsto", "xfs")], units.remedies())
    assert rows == [("yank", "bindsto", "xfs", None), ("yank", "bindsto", "xfs", "fs-error-watch"),
                    ("yank", "bindsto", "xfs", "healer-bindsto")]


def test_an_outcome_keeps_the_kernel_word_and_the_healer_typed_and_old_json_still_reads():
    from harness.evidence.outcome import Healer, KernelWord, Outcome
    word = fs_error.fan_fs_error(health([{"error": 5, "error_name": "EIO", "count": 1, "monotonic": 100.2}]))
    outcome = Outcome("yank", "bindsto", "xfs", remedy="fs-error-watch", fan_fs_error=word,
                      xfs_healer=Healer(present=True, unit="xfs_healer@var-lib-docker.service",
                                        state="active (running)"),
                      guest_versions={"kernel": "7.2.13+deb14-cloud-amd64", "systemd": "systemd 262",
                                      "packages": "linux-image 7.2.13-1, systemd 262.1-1, xfsprogs 7.2.0-1"})
    data = outcome.to_json()
    assert data["fan_fs_error"]["error"] == "EIO" and data["remedy"] == "fs-error-watch"
    assert data["packages"].startswith("linux-image 7.2.13-1")
    again = Outcome.from_json(data)
    assert isinstance(again.fan_fs_error, KernelWord) and again.fan_fs_error.seconds_from_first_failed_io == 0.2
    assert again.xfs_healer.state == "active (running)" and again.remedy == "fs-error-watch"
    # An outcome from before FAN_FS_ERROR was measured: same keys as ever, and it reads back.
    old = Outcome("yank", "bindsto", "xfs").to_json()
    assert not {"fan_fs_error", "xfs_healer", "remedy"} & set(old)
    assert Outcome.from_json(old).fan_fs_error is None
    assert versions.fs_error_words(None) == "not measured" and versions.healer_words(None) == "not measured"


def test_a_remedy_the_image_cannot_carry_is_refused_before_any_boot():
    units.check_remedy_fits("healer-bindsto", "sid", {"xfsprogs": "7.2.0-1"})
    units.check_remedy_fits("fs-error-watch", "bookworm", {"xfsprogs": "6.1.0-1"})
    with pytest.raises(UserError, match="healer-bindsto cannot apply on trixie-backports: it needs xfsprogs 7 "
                                        "or later, the image has xfsprogs 6.13.0-2"):
        units.check_remedy_fits("healer-bindsto", "trixie-backports", {"xfsprogs": "6.13.0-2+deb13u1"})
    with pytest.raises(UserError, match="of unknown version"):
        units.check_remedy_fits("healer-bindsto", "bookworm", {})


class FakeGuest:
    """Answers the few commands xfs_healer() runs, as a sid guest would."""
    def __init__(self, show: str, journal: str, installed: bool = True):
        self.show, self.journal, self.installed = show, journal, installed

    def run(self, command, timeout):
        from types import SimpleNamespace
        if command.startswith("test -e"):
            return SimpleNamespace(status=0 if self.installed else 1, stdout="")
        if command.startswith("systemctl show"):
            assert "xfs_healer@var-lib-docker.service" in command
            return SimpleNamespace(status=0, stdout=self.show)
        if command.startswith("journalctl"):
            return SimpleNamespace(status=0, stdout=self.journal)
        return SimpleNamespace(status=0, stdout="active\n")


def healer_of(machine):
    from types import SimpleNamespace
    return fs_error.xfs_healer(SimpleNamespace(machine=machine, chain=units.incident()))


def test_the_healer_is_named_from_the_mount_point_even_once_systemd_unloaded_it():
    ran = healer_of(FakeGuest("ActiveState=inactive\nSubState=dead\nResult=success\nExecMainStatus=0\n"
                              "ExecMainStartTimestampMonotonic=120000000\n",
                              "Started xfs_healer@var-lib-docker.service - XFS healer.\n"
                              "Stopping xfs_healer@var-lib-docker.service...\n"))
    assert ran.unit == "xfs_healer@var-lib-docker.service" and ran.state == "inactive (dead)"
    assert versions.healer_words(ran) == "inactive (dead), said nothing of it"
    never = healer_of(FakeGuest("ActiveState=inactive\nSubState=dead\nExecMainStartTimestampMonotonic=0\n", ""))
    assert versions.healer_words(never) == "never started for the volume"
    assert versions.healer_words(healer_of(FakeGuest("", "", installed=False))) == "not installed (xfsprogs before 7)"
