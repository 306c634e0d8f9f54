"""Tests for harness/runs/versions.py (the matrix across releases), the releases in
harness/images/image.py and the pytest plugin's --release. No guest is booted here."""
import io
import json
import os
import socket
import shutil
import subprocess
import time

import pytest
from rich.console import Console

from harness.images import agent_image, image
from harness.runs import versions
from harness import errors
from harness.errors import UserError

pytest_plugins = ["pytester"]

ROW = ("unplug", "bindsto", "xfs")
UNITS_STOPPED = {"format-ephemeral.service": "active", "var-lib-docker.mount": "inactive",
                 "docker.service": "inactive", "ecs-agent.service": "inactive"}


def outcome(kernel: str, systemd: str, kernel_events: list[str], units: dict | None = None,
            mount_listed: bool = False, deep_detected: bool = True) -> dict:
    """An outcome shaped like experiments.run()'s."""
    return {"experiment": ROW[0], "chain": ROW[1], "fs": ROW[2], "units": units or UNITS_STOPPED,
            "volume_device": "inactive", "mount_listed": mount_listed, "metadata_status": None,
            "container_start_ok": False, "health_check_lies": False, "kernel_events": kernel_events,
            "kernel_lines": ["virtio_blk virtio2: [vdb] removed", *kernel_events],
            "health": {"deep": {"detected": deep_detected, "seconds": 1.5}},
            "kernel": kernel, "systemd": systemd}


BOOKWORM = outcome("6.1.0-41-cloud-amd64", "systemd 252 (252.39-1~deb12u1)",
                   ["XFS (vdb): Metadata I/O Error (0x1) detected at xfs_buf_ioend+0x1/0x2 [xfs] "
                    "(fs/xfs/xfs_buf.c:1245).  Shutting down filesystem."])
TRIXIE = outcome("6.12.117+deb13-cloud-amd64", "systemd 257 (257.13-1~deb13u1)",
                 ["XFS (vdb): Block device removal (0x20) detected at fs_bdev_mark_dead+0x59/0x70 "
                  "(fs/xfs/xfs_super.c:1177).  Shutting down filesystem."])


def build(outcomes: dict) -> dict:
    return versions.matrix([ROW], list(outcomes), {r: {ROW: o} for r, o in outcomes.items()}, {})


def test_cells_say_what_systemd_the_kernel_and_the_checks_did():
    cell = build({"bookworm": BOOKWORM})["rows"][0]["cells"]["bookworm"]
    assert cell["systemd"] == "docker inactive, agent inactive, mount gone, vdb inactive"
    assert cell["kernel"] == "xfs-shutdown, xfs-metadata-io-error"
    assert cell["checks"] == "metadata None, containers fail, stock truthful, deep fails"
    assert cell["kernel_version"] == "6.1.0-41-cloud-amd64"


def test_a_different_kernel_wording_is_a_kernel_disagreement_only():
    result = build({"bookworm": BOOKWORM, "trixie": TRIXIE})
    assert result["rows"][0]["disagree"] == ["kernel"]
    assert result["releases"]["trixie"]["kernel"] == "6.12.117+deb13-cloud-amd64"


def test_versions_and_timings_alone_are_no_disagreement():
    other = {**BOOKWORM, "kernel": "6.1.0-99-cloud-amd64", "health": {"deep": {"detected": True, "seconds": 9.0}}}
    assert build({"bookworm": BOOKWORM, "bookworm-backports": other})["rows"][0]["disagree"] == []


def test_systemd_and_check_disagreements_are_found():
    stayed_up = outcome(BOOKWORM["kernel"], BOOKWORM["systemd"], BOOKWORM["kernel_events"],
                        units={**UNITS_STOPPED, "docker.service": "active", "ecs-agent.service": "active"},
                        mount_listed=True, deep_detected=False)
    result = build({"bookworm": BOOKWORM, "trixie": stayed_up})
    assert result["rows"][0]["disagree"] == ["systemd", "checks"]


def test_an_experiment_that_did_not_finish_is_shown_and_not_compared():
    outcomes = {"bookworm": {ROW: BOOKWORM}, "trixie": {ROW: {"error": "systemd still had 3 job(s) queued"}}}
    result = versions.matrix([ROW], ["bookworm", "trixie"], outcomes, {"trixie": {"kernel": "6.12.1", "systemd": "257"}})
    row = result["rows"][0]
    assert row["cells"]["trixie"] == {"error": "systemd still had 3 job(s) queued"}
    assert row["disagree"] == []
    assert result["releases"]["trixie"]["kernel"] == "6.12.1"  # from the image when nothing ran


def test_the_table_marks_disagreeing_cells():
    console = Console(record=True, width=250, file=io.StringIO())
    console.print(versions.render(build({"bookworm": BOOKWORM, "trixie": TRIXIE})))
    text = console.export_text()
    assert text.count("≠ kernel:") == 2 and "≠ systemd" not in text
    assert "6.12.117+deb13-cloud-amd64" in text and "systemd 257" in text


def test_json_round_trips():
    result = build({"bookworm": BOOKWORM, "trixie": TRIXIE})
    assert json.loads(versions.to_json(result)) == result


def test_kernel_lines_are_saved_per_release_and_kernel(tmp_path):
    written = versions.save_kernel_lines(build({"bookworm": BOOKWORM, "trixie": TRIXIE}), tmp_path)
    assert sorted(p.name for p in written) == ["bookworm-6.1.0-41-cloud-amd64.json",
                                               "trixie-6.12.117+deb13-cloud-amd64.json"]
    saved = json.loads((tmp_path / "trixie-6.12.117+deb13-cloud-amd64.json").read_text())
    assert saved["release"] == "trixie" and saved["systemd"] == TRIXIE["systemd"]
    assert saved["experiments"]["unplug bindsto xfs"] == TRIXIE["kernel_lines"]


def test_a_run_with_another_filesystem_adds_to_the_kernels_file(tmp_path):
    versions.save_kernel_lines(build({"trixie": TRIXIE}), tmp_path)
    ext4 = {**TRIXIE, "fs": "ext4", "kernel_lines": ["EXT4-fs error (device vdb): ..."]}
    row = (ROW[0], ROW[1], "ext4")
    versions.save_kernel_lines(versions.matrix([row], ["trixie"], {"trixie": {row: ext4}}, {}), tmp_path)
    saved = json.loads((tmp_path / "trixie-6.12.117+deb13-cloud-amd64.json").read_text())
    assert saved["experiments"] == {"unplug bindsto xfs": TRIXIE["kernel_lines"],
                                    "unplug bindsto ext4": ext4["kernel_lines"]}


def test_unknown_release_is_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(image, "ensure_image", lambda *a, **k: pytest.fail("built an image"))
    with pytest.raises(UserError, match="unknown release 'buster'.*bookworm, trixie, bookworm-backports, "
                                        "trixie-backports, sid"):
        versions.run([ROW], ["bookworm", "buster"])


def test_every_release_is_keyed_apart():
    keys = {image.recipe_key(release) for release in image.RELEASES}
    assert len(keys) == len(image.RELEASES)
    assert all(key.startswith(release + "-") for key, release in zip(map(image.recipe_key, image.RELEASES), image.RELEASES))


def test_backports_pins_kernel_and_systemd_to_backports():
    spec = image.RELEASES["bookworm-backports"]
    assert spec.suites == ("bookworm", "bookworm-backports")
    pref = (image.VM_DIR / "image" / spec.preferences).read_text()
    assert "Pin: release n=bookworm-backports" in pref
    pinned = next(line for line in pref.splitlines() if line.startswith("Package:")).split()[1:]
    assert {"linux-image-cloud-amd64", "systemd", "udev", "libsystemd0", "libsystemd-shared"} <= set(pinned)


def test_trixie_backports_pins_only_the_7x_kernel_to_backports():
    spec = image.RELEASES["trixie-backports"]
    assert spec.suites == ("trixie", "trixie-backports") and not spec.moving
    pref = (image.VM_DIR / "image" / spec.preferences).read_text()
    assert "Pin: release n=trixie-backports" in pref
    pinned = next(line for line in pref.splitlines() if line.startswith("Package:")).split()[1:]
    # 7.x images split into linux-binary/linux-modules and pre-depend on linux-base >= 4.17.
    assert {"linux-image-cloud-amd64", "linux-base", "linux-binary-*-cloud-amd64", "linux-modules-*-cloud-amd64"} <= set(pinned)
    assert "systemd" not in pinned


APT_UNMET = """\
Some packages could not be installed. This may mean that you have
requested an impossible situation or if you are using the unstable
distribution that some required packages have not yet been created
or been moved out of Incoming.
The following information may help to resolve the situation:

The following packages have unmet dependencies:
 systemd : Depends: libsystemd-shared (= 262.1-1) but 262.2-1 is to be installed
E: Unable to correct problems, you have held broken packages.
E: apt-get --yes install failed
E: mmdebstrap failed to run""".splitlines()


def test_an_uninstallable_sid_is_the_archives_fault_a_dead_mirror_is_not():
    assert image.archive_broken(APT_UNMET)
    assert image.archive_broken(["E: Package 'xfsprogs' has no installation candidate"])
    assert not image.archive_broken(["E: Failed to fetch http://127.0.0.1:9/debian/dists/sid/InRelease  "
                                     "Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)"])
    assert image.RELEASES["sid"].moving and not image.RELEASES["trixie"].moving


def test_archive_broken_sid_names_the_date_and_apts_words(monkeypatch, tmp_path):
    def fake_run(cmd, stdout=None, **kwargs):
        if cmd[0] == "mmdebstrap":
            stdout.write("\n".join(APT_UNMET) + "\n")
            return subprocess.CompletedProcess(cmd, 1)
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(image.subprocess, "run", fake_run)
    with pytest.raises(errors.ArchiveBroken) as broken:
        image._build_into("sid", tmp_path, "sid-test")
    message = str(broken.value)
    assert message.startswith(f"Debian sid cannot be installed from the archive on {time.strftime('%Y-%m-%d', time.gmtime())}")
    assert "held broken packages" in message and "\n" not in message
    # The same log from a stable release is the recipe's failure.
    with pytest.raises(UserError) as failed:
        image._build_into("trixie", tmp_path, "trixie-test")
    assert not isinstance(failed.value, errors.ArchiveBroken)


def test_versions_runs_the_rest_when_sids_archive_is_broken(monkeypatch):
    def ensure(release):
        raise errors.ArchiveBroken(release, "E: Unable to correct problems, you have held broken packages.")
    monkeypatch.setattr(image, "ensure_image", ensure)
    result = versions.run([ROW], ["sid"])
    cell = result["rows"][0]["cells"]["sid"]
    assert cell["error"].startswith("not run: Debian sid cannot be installed from the archive on ")


def test_agent_packages_follow_the_guests_python(tmp_path):
    (tmp_path / "usr/bin").mkdir(parents=True)
    os.symlink("python3.13", tmp_path / "usr/bin/python3")
    python = agent_image.guest_python(tmp_path)
    assert python == "python3.13"
    assert {"python3.13-minimal", "libpython3.13-stdlib"} <= set(agent_image.packages(python))
    assert "usr/lib/python3.13/test/" in agent_image.skip_prefixes(python)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mmdebstrap"),
                    reason="building an image needs root and mmdebstrap")
@pytest.mark.parametrize("release", ["trixie", "bookworm-backports"])
def test_unreachable_mirror_names_release_and_cause_and_leaves_nothing(tmp_path, monkeypatch, release):
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNITCHAOS_MIRROR", f"http://127.0.0.1:{_closed_port()}/debian")
    with pytest.raises(UserError) as failed:
        image.ensure_image(release)
    message = str(failed.value)
    assert f"Debian {release}" in message
    assert "Could not connect to 127.0.0.1" in message and "Connection refused" in message
    assert "\n" not in message
    # Only the (empty) lock stays: no image, no staging directory.
    assert [p.name for p in image.images_dir().iterdir() if not p.name.endswith(".lock")] == []


PLUGIN_TESTS = """
import pytest

def test_plain(unitchaos_release):
    pass

@pytest.mark.every_release
def test_everywhere(unitchaos_release):
    pass
"""


@pytest.mark.parametrize("args, env, expected", [
    ([], None, ["test_plain", "test_everywhere[bookworm]", "test_everywhere[trixie]",
                "test_everywhere[bookworm-backports]", "test_everywhere[sid]", "test_everywhere[trixie-backports]"]),
    (["--release", "trixie"], None, ["test_plain", "test_everywhere[trixie]"]),
    (["--release", "trixie", "--release", "bookworm"], None,
     ["test_plain[trixie]", "test_plain[bookworm]", "test_everywhere[trixie]", "test_everywhere[bookworm]"]),
    ([], "bookworm-backports", ["test_plain", "test_everywhere[bookworm-backports]"]),
])
def test_plugin_runs_tests_on_the_chosen_releases(pytester, monkeypatch, args, env, expected):
    if env:
        monkeypatch.setenv("UNITCHAOS_RELEASE", env)
    else:
        monkeypatch.delenv("UNITCHAOS_RELEASE", raising=False)
    pytester.makepyfile(PLUGIN_TESTS)
    result = pytester.runpytest("--collect-only", "-q", *args)
    collected = [line.split("::")[1] for line in result.outlines if "::" in line]
    assert collected == expected


RELEASES_MARKED = """
import pytest

@pytest.mark.releases("trixie-backports", "sid")
def test_new_kernels(unitchaos_release):
    pass
"""


@pytest.mark.parametrize("args, expected", [
    ([], ["test_new_kernels[trixie-backports]", "test_new_kernels[sid]"]),
    (["--release", "sid", "--release", "bookworm"], ["test_new_kernels[sid]"]),
])
def test_releases_marker_runs_a_test_on_its_releases_that_were_asked_for(pytester, monkeypatch, args, expected):
    monkeypatch.delenv("UNITCHAOS_RELEASE", raising=False)
    pytester.makepyfile(RELEASES_MARKED)
    result = pytester.runpytest("--collect-only", "-q", *args)
    assert [line.split("::")[1] for line in result.outlines if "::" in line] == expected


def test_plugin_refuses_an_unknown_release(pytester):
    pytester.makepyfile(PLUGIN_TESTS)
    result = pytester.runpytest("--collect-only", "-q", "--release", "buster")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown release buster" in "\n".join(result.errlines)


def test_matrices_run_apart_combine_into_one():
    apart = [build({"bookworm": BOOKWORM}), build({"trixie": TRIXIE})]
    combined = versions.combine(apart)
    assert list(combined["releases"]) == ["bookworm", "trixie"]
    assert combined["rows"][0]["disagree"] == ["kernel"]
    assert combined == build({"bookworm": BOOKWORM, "trixie": TRIXIE})


def test_a_release_missing_from_a_row_is_not_run():
    other_row = versions.matrix([("yank", "bindsto", "xfs")], ["trixie"],
                                {"trixie": {("yank", "bindsto", "xfs"): {**TRIXIE, "experiment": "yank"}}}, {})
    combined = versions.combine([build({"bookworm": BOOKWORM}), other_row])
    yank = next(row for row in combined["rows"] if row["experiment"] == "yank")
    assert yank["cells"]["bookworm"] == {"error": "not run"} and yank["disagree"] == []


# The agent of a BindsTo= chain ends failed or inactive depending on how Docker's stop races
# the container's exit: the same release answers both ways.
AGENT_FAILED = outcome(BOOKWORM["kernel"], BOOKWORM["systemd"], BOOKWORM["kernel_events"],
                       units={**UNITS_STOPPED, "ecs-agent.service": "failed"})


def test_what_varies_between_runs_of_one_release_is_marked_and_no_disagreement():
    outcomes = {"bookworm": {ROW: [BOOKWORM, AGENT_FAILED, BOOKWORM]},
                "trixie": {ROW: [{**TRIXIE, "units": AGENT_FAILED["units"]}]}}
    row = versions.matrix([ROW], ["bookworm", "trixie"], outcomes, {})["rows"][0]
    cell = row["cells"]["bookworm"]
    assert cell["varies"] == ["systemd"] and cell["runs"] == 3
    assert cell["systemd"] == ("varies: docker inactive, agent inactive, mount gone, vdb inactive | "
                               "docker inactive, agent failed, mount gone, vdb inactive")
    assert row["disagree"] == ["kernel"]  # trixie's agent ended failed, as one bookworm run did


def test_a_release_that_never_answered_like_a_varying_one_disagrees():
    stayed_up = outcome(BOOKWORM["kernel"], BOOKWORM["systemd"], BOOKWORM["kernel_events"],
                        units={**UNITS_STOPPED, "docker.service": "active", "ecs-agent.service": "active"})
    outcomes = {"bookworm": {ROW: [BOOKWORM, AGENT_FAILED]}, "trixie": {ROW: [stayed_up, stayed_up]}}
    row = versions.matrix([ROW], ["bookworm", "trixie"], outcomes, {})["rows"][0]
    assert row["disagree"] == ["systemd"]
    assert row["cells"]["trixie"]["varies"] == []


def test_runs_that_did_not_finish_are_counted_next_to_those_that_did():
    outcomes = {"bookworm": {ROW: [BOOKWORM, {"error": "guest did not answer within 60 s"},
                                   {**BOOKWORM, "kernel_lines": ["XFS (vdb): Unmounting Filesystem"]}]}}
    cell = versions.matrix([ROW], ["bookworm"], outcomes, {})["rows"][0]["cells"]["bookworm"]
    assert cell["errors"] == ["guest did not answer within 60 s"] and cell["runs"] == 3
    assert cell["varies"] == []
    # Every kernel line any run saw is kept for the fixtures, once.
    assert cell["kernel_lines"] == [*BOOKWORM["kernel_lines"], "XFS (vdb): Unmounting Filesystem"]


def test_the_table_marks_varying_cells_and_says_how_many_runs():
    outcomes = {"bookworm": {ROW: [BOOKWORM, AGENT_FAILED]}, "trixie": {ROW: [TRIXIE, TRIXIE]}}
    result = {**versions.matrix([ROW], ["bookworm", "trixie"], outcomes, {}), "runs": 2}
    console = Console(record=True, width=300, file=io.StringIO())
    console.print(versions.render(result))
    text = console.export_text()
    assert text.count("~ systemd: varies:") == 1 and text.count("≠ kernel:") == 2
    assert "2 runs per cell" in text
    assert json.loads(versions.to_json(result)) == result
    assert versions.combine([result])["rows"][0]["disagree"] == ["kernel"]


def test_one_run_says_it_cannot_tell_variation_from_versions():
    console = Console(record=True, width=300, file=io.StringIO())
    console.print(versions.render(build({"bookworm": BOOKWORM, "trixie": TRIXIE})))
    assert "one run per cell: --runs 3" in console.export_text()


def test_one_table_holds_the_kernel_word_the_healer_and_each_remedy_per_kernel():
    yank = ("yank", "bindsto", "xfs")
    up = {**UNITS_STOPPED, "var-lib-docker.mount": "active", "docker.service": "active", "ecs-agent.service": "active"}
    word = {"supported": True, "arrived": True, "error": "EIO", "seconds_from_first_failed_io": 0.386,
            "agent_stopping_after_shutdown_line": -1.182}
    healer = {"present": True, "unit": "xfs_healer@var-lib-docker.service", "state": "active (running)"}
    sid = {**outcome("7.2.13+deb14-cloud-amd64", "systemd 262 (262.1-1)", [], units=up), "experiment": "yank",
           "fan_fs_error": word, "xfs_healer": healer}
    sid_watched = {**sid, "units": UNITS_STOPPED, "remedy": "fs-error-watch"}
    old = {**outcome("6.1.0-41-cloud-amd64", "systemd 252 (252.39-1~deb12u1)", [], units=up), "experiment": "yank",
           "fan_fs_error": {"supported": False, "reason": "not supported by kernel 6.1.0-41-cloud-amd64"}}
    rows = versions.with_remedies([yank], ["fs-error-watch"])
    result = versions.matrix(rows, ["bookworm", "sid"], {
        "bookworm": {rows[0]: old, rows[1]: {**old, "remedy": "fs-error-watch"}},
        "sid": {rows[0]: sid, rows[1]: sid_watched}}, {})
    bare, watched = result["rows"]
    assert bare["cells"]["sid"]["kernel word"] == "FAN_FS_ERROR EIO"
    assert bare["cells"]["sid"]["fs_error_seconds"] == 0.386
    assert bare["cells"]["sid"]["healer"] == "active (running), said nothing of it"
    assert bare["cells"]["bookworm"]["kernel word"] == "not supported by kernel 6.1.0-41-cloud-amd64"
    assert watched["cells"]["sid"]["remedy"] == "fs-error-watch: systemd stopped the agent (inactive)"
    assert watched["cells"]["bookworm"]["remedy"] == "fs-error-watch: agent still active (systemd did not stop it)"
    assert "remedy" in watched["disagree"] and "remedy" not in bare["disagree"]
    out = io.StringIO()
    Console(file=out, width=400).print(versions.render(result))
    text = out.getvalue()
    assert text.count("remedy: ") == 2  # only the row with a remedy says one
    assert "kernel word: FAN_FS_ERROR EIO" in text and "healer: active (running)" in text
    assert "FAN_FS_ERROR after first failed I/O +0.386 s" in text


def test_versions_prints_one_table_from_matrices_saved_apart(tmp_path, capsys):
    from harness.cli import main as cli_main
    for name, out in (("bookworm", BOOKWORM), ("trixie", TRIXIE)):
        (tmp_path / f"{name}.json").write_text(versions.to_json(build({name: out})))
    assert cli_main(["versions", "--from", str(tmp_path / "bookworm.json"), "--from", str(tmp_path / "trixie.json"),
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == build({"bookworm": BOOKWORM, "trixie": TRIXIE})


@pytest.mark.parametrize("content, problem", [(None, "no saved matrix at"), ("{", "is not a saved matrix"),
                                              ("[]", "is not a saved matrix (no releases and rows)")])
def test_a_file_that_is_no_saved_matrix_is_one_line(tmp_path, content, problem):
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        versions.load(path)


def test_a_matrix_saved_before_the_remedy_aspect_still_prints(tmp_path):
    old = build({"bookworm": BOOKWORM})
    for row in old["rows"]:
        for cell in row["cells"].values():
            del cell["remedy"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = versions.load(tmp_path / "old.json")
    assert loaded["rows"][0]["cells"]["bookworm"]["remedy"] == "none"
    Console(file=io.StringIO()).print(versions.render(loaded))


def test_versions_runs_each_row_with_and_without_a_remedy(monkeypatch, tmp_path):
    # A row with no remedy is (experiment, chain, fs, None): the progress line once joined
    # it whole, and `versions ... --remedy fs-error-watch` died of a TypeError before any run.
    class FakeLab:
        def __init__(self, **kwargs):
            pass
        __enter__ = lambda self: self
        __exit__ = lambda self, *exc: None
    asked = []
    (tmp_path / "manifest.json").write_text(json.dumps({"release": "bookworm"}))
    monkeypatch.setattr(image, "ensure_image", lambda release: image.Image(tmp_path))
    monkeypatch.setattr(versions, "Lab", FakeLab)
    monkeypatch.setattr(versions.experiments, "run",
                        lambda lab, name, chain, fs, units_dir, remedy=None: asked.append(remedy) or {"error": "fake"})
    versions.run(versions.with_remedies([ROW], ["fs-error-watch"]), ["bookworm"])
    assert asked == [None, "fs-error-watch"]
