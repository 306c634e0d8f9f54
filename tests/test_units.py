"""Tests for harness/units.py: rendering the incident's unit chain per variant, packing it
for the guest's generator, and rejecting unit directories systemd would not accept."""
import shutil
import tarfile

import pytest

from harness import units
from harness.errors import UserError
from harness.paths import UNITS_DIR

SHIPPED = {"ecs-agent.service", "format-ephemeral.service", "var-lib-docker.mount",
           "docker.service.d/10-volume.conf",
           # Generated: tells the deep check where the chain's volume is and what to probe.
           units.HEALTH_DROPIN}
needs_systemd_analyze = pytest.mark.skipif(not shutil.which("systemd-analyze"),
                                           reason="systemd-analyze is not installed on this host")


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


@pytest.fixture
def user_units(tmp_path):
    """A user's units directory: a copy of the shipped one, free to edit."""
    path = tmp_path / "units"
    shutil.copytree(UNITS_DIR, path)
    return path


@pytest.mark.parametrize("chain, dependency, other", [("requires", "Requires", "BindsTo"),
                                                      ("bindsto", "BindsTo", "Requires")])
@pytest.mark.parametrize("fs", ["xfs", "ext4"])
def test_render_puts_the_chains_dependency_on_the_mount(chain, dependency, other, fs):
    agent = lines(units.render(units.Variant(chain=chain, fs=fs))["ecs-agent.service"])
    assert f"{dependency}=var-lib-docker.mount" in agent
    assert f"{other}=var-lib-docker.mount" not in agent
    assert "Requires=docker.service" in agent  # the part that does not vary


@pytest.mark.parametrize("chain", ["requires", "bindsto"])
@pytest.mark.parametrize("fs, mkfs, other", [("xfs", "/usr/sbin/mkfs.xfs -f", "mkfs.ext4"),
                                             ("ext4", "/usr/sbin/mkfs.ext4 -F -q", "mkfs.xfs")])
def test_render_formats_and_mounts_with_the_variants_filesystem(chain, fs, mkfs, other):
    rendered = units.render(units.Variant(chain=chain, fs=fs))
    format_unit = rendered["format-ephemeral.service"]
    assert f"ExecStart={mkfs} /dev/vdb" in lines(format_unit)
    assert other not in format_unit
    assert f"Type={fs}" in lines(rendered["var-lib-docker.mount"])
    assert "What=/dev/vdb" in lines(rendered["var-lib-docker.mount"])


@pytest.mark.parametrize("chain", ["requires", "bindsto"])
@pytest.mark.parametrize("fs", ["xfs", "ext4"])
def test_render_leaves_no_placeholder(chain, fs):
    rendered = units.render(units.Variant(chain=chain, fs=fs))
    assert set(rendered) == SHIPPED
    for rel, text in rendered.items():
        assert "{{" not in text and "}}" not in text, rel


def test_render_fills_the_device_unit():
    format_unit = lines(units.render(units.Variant())["format-ephemeral.service"])
    assert "Requires=dev-vdb.device" in format_unit
    assert "After=dev-vdb.device" in format_unit


def test_mkfs_override_replaces_the_filesystems_command():
    rendered = units.render(units.Variant(fs="xfs", mkfs="/usr/bin/false"))
    format_unit = rendered["format-ephemeral.service"]
    assert "ExecStart=/usr/bin/false /dev/vdb" in lines(format_unit)
    assert "mkfs.xfs" not in format_unit
    assert "Type=xfs" in lines(rendered["var-lib-docker.mount"])  # only the command changes


def test_with_returns_a_changed_copy():
    base = units.Variant()
    changed = base.with_(chain="requires")
    assert (base.chain, changed.chain) == ("bindsto", "requires")
    assert changed.fs == base.fs


def test_pack_writes_the_rendered_files_and_wants_links(tmp_path):
    out = tmp_path / "units.tar"
    rendered = units.pack(units.Variant(chain="requires", fs="ext4"), out)
    with tarfile.open(out) as tar:
        members = {member.name: member for member in tar.getmembers()}
        files = {name: tar.extractfile(m).read().decode() for name, m in members.items() if m.isfile()}
    assert files == rendered
    assert "docker.service.d/10-volume.conf" in files
    assert "Requires=var-lib-docker.mount" in lines(files["docker.service.d/10-volume.conf"])
    links = {name: m.linkname for name, m in members.items() if m.issym()}
    assert links == {"multi-user.target.wants/ecs-agent.service": "../ecs-agent.service",
                     "local-fs.target.wants/var-lib-docker.mount": "../var-lib-docker.mount"}


def test_pack_links_every_install_target(user_units, tmp_path):
    agent = user_units / "ecs-agent.service"
    agent.write_text(agent.read_text().replace("WantedBy=multi-user.target",
                                               "WantedBy=multi-user.target\nRequiredBy=custom.target"))
    out = tmp_path / "units.tar"
    units.pack(units.Variant(units_dir=user_units), out)
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "multi-user.target.wants/ecs-agent.service" in names
    assert "custom.target.wants/ecs-agent.service" in names


def test_wanted_by_ignores_commented_lines():
    assert units.wanted_by("[Install]\n# WantedBy=a.target\nWantedBy=b.target c.target\n") == \
        ["b.target", "c.target"]


def test_unknown_chain_is_a_user_error():
    with pytest.raises(UserError) as caught:
        units.Variant(chain="wants")
    assert caught.value.problem == "unknown chain 'wants'"
    assert "requires" in caught.value.fix and "bindsto" in caught.value.fix


def test_unknown_filesystem_is_a_user_error():
    with pytest.raises(UserError) as caught:
        units.Variant(fs="btrfs")
    assert caught.value.problem == "unknown filesystem 'btrfs'"
    assert "xfs" in caught.value.fix and "ext4" in caught.value.fix


def test_missing_units_dir_is_a_user_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as caught:
        units.render(units.Variant(units_dir=missing))
    assert caught.value.problem == f"units directory {missing} does not exist"
    assert "--units" in caught.value.fix


def test_units_dir_lacking_required_units_is_a_user_error(user_units):
    (user_units / "format-ephemeral.service").unlink()
    (user_units / "var-lib-docker.mount").unlink()
    with pytest.raises(UserError) as caught:
        units.render(units.Variant(units_dir=user_units))
    assert "format-ephemeral.service" in caught.value.problem
    assert "var-lib-docker.mount" in caught.value.problem
    assert "ecs-agent.service" not in caught.value.problem


def test_unknown_placeholder_is_a_user_error(user_units):
    mount = user_units / "var-lib-docker.mount"
    mount.write_text(mount.read_text().replace("Type={{fs}}", "Type={{fs}}\nOptions={{nope}}"))
    with pytest.raises(UserError) as caught:
        units.render(units.Variant(units_dir=user_units))
    assert "unknown placeholder {{nope}}" in caught.value.problem
    assert str(mount) in caught.value.problem
    assert "{{fs}}" in caught.value.fix


def test_user_units_dir_renders_like_the_shipped_one(user_units):
    for chain in units.CHAINS:
        for fs in units.FILESYSTEMS:
            assert units.render(units.Variant(chain, fs, user_units)) == units.render(units.Variant(chain, fs))


def test_user_units_need_no_placeholders(user_units):
    mount = user_units / "var-lib-docker.mount"
    mount.write_text("[Unit]\nRequires=format-ephemeral.service\n\n[Mount]\nWhat=/dev/vdb\n"
                     "Where=/var/lib/docker\nType=xfs\n")
    assert units.render(units.Variant(fs="ext4", units_dir=user_units))["var-lib-docker.mount"] == \
        mount.read_text()


def test_hidden_files_are_not_rendered(user_units):
    (user_units / ".ecs-agent.service.swp").write_text("{{nope}}")
    assert set(units.render(units.Variant(units_dir=user_units))) == SHIPPED


def test_files_in_hidden_directories_are_not_rendered(user_units):
    (user_units / ".git").mkdir()
    (user_units / ".git" / "index").write_bytes(b"DIRC\x00\x00\x00\x02\xff\xfe")
    assert set(units.render(units.Variant(units_dir=user_units))) == SHIPPED


def test_a_binary_file_in_the_units_dir_is_a_user_error_or_ignored(user_units):
    (user_units / "diagram.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    try:
        rendered = units.render(units.Variant(units_dir=user_units))
    except UserError as exc:
        assert "diagram.png" in exc.problem
    else:
        assert "diagram.png" not in rendered


@needs_systemd_analyze
@pytest.mark.parametrize("chain", ["requires", "bindsto"])
@pytest.mark.parametrize("fs", ["xfs", "ext4"])
def test_shipped_units_verify_cleanly(chain, fs):
    units.verify(units.render(units.Variant(chain=chain, fs=fs)))


@needs_systemd_analyze
def test_unknown_key_is_rejected_by_verify(user_units):
    agent = user_units / "ecs-agent.service"
    agent.write_text(agent.read_text().replace("[Unit]\n", "[Unit]\nRequiress=foo\n", 1))
    rendered = units.render(units.Variant(units_dir=user_units))
    with pytest.raises(UserError) as caught:
        units.verify(rendered)
    assert "Unknown key 'Requiress'" in caught.value.problem
    assert "ecs-agent.service" in caught.value.problem
    assert "/tmp/" not in caught.value.problem  # the temporary directory is not named


@needs_systemd_analyze
def test_pack_rejects_an_unknown_key_and_writes_nothing(user_units, tmp_path):
    mount = user_units / "var-lib-docker.mount"
    mount.write_text(mount.read_text().replace("[Mount]\n", "[Mount]\nWhre=/var/lib/docker\n"))
    out = tmp_path / "units.tar"
    with pytest.raises(UserError, match="Whre"):
        units.pack(units.Variant(units_dir=user_units), out)
    assert not out.exists()


@needs_systemd_analyze
def test_unknown_key_in_a_drop_in_is_rejected_by_verify(user_units):
    drop_in = user_units / "docker.service.d" / "10-volume.conf"
    drop_in.write_text(drop_in.read_text() + "Requiress=foo\n")
    with pytest.raises(UserError, match="Requiress"):
        units.verify(units.render(units.Variant(units_dir=user_units)))


@pytest.mark.parametrize("fs, mkfs", [("xfs", "ExecStart=/usr/sbin/mkfs.xfs /dev/vdb"),
                                      ("ext4", "ExecStart=/usr/sbin/mkfs.ext4 -q /dev/vdb")])
def test_old_fs_variant_neither_wipes_nor_forces_mkfs(fs, mkfs):
    unit = units.render(units.Variant(fs=fs, old_fs=True))["format-ephemeral.service"]
    assert mkfs in unit.splitlines()
    assert "wipefs" not in unit
    assert "wipefs" in units.render(units.Variant(fs=fs))["format-ephemeral.service"]


def test_docker_need_not_require_the_mount():
    assert units.DOCKER_NEEDS_MOUNT in units.render(units.Variant())
    rendered = units.render(units.Variant(docker_requires_mount=False))
    assert units.DOCKER_NEEDS_MOUNT not in rendered
    assert "BindsTo=var-lib-docker.mount" in rendered["ecs-agent.service"]


@needs_systemd_analyze
@pytest.mark.parametrize("changes", [{"old_fs": True}, {"old_fs": True, "docker_requires_mount": False}])
def test_mkfs_refuses_variants_verify_cleanly(changes):
    units.check(units.Variant(**changes))
