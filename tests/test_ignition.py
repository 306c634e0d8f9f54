"""The Fedora CoreOS Ignition config: Ignition itself must accept it (ignition-validate),
and it must carry the same chain, guest programs and agent image as the Debian guest."""
import base64
import gzip
import io
import json
import os
import shutil
import tarfile

import pytest

from harness.images import ignition
from harness import units
from harness.paths import VM_DIR

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOvXhHgm8wr3c2Yt6jk7dPZ3Kp2b9XgV3VJ0zOe0BTqS unitchaos"


@pytest.fixture
def archive(tmp_path):
    """A stand-in for the agent's docker-save archive: a tar with a manifest."""
    path = tmp_path / "ecs-agent.tar"
    with tarfile.open(path, "w") as tar:
        data = json.dumps([{"RepoTags": ["amazon/amazon-ecs-agent:latest"]}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def require_ignition_validate():
    if shutil.which("ignition-validate"):
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI must validate the Ignition config, but ignition-validate is not installed "
                    "(apt-get install ignition)", pytrace=False)
    pytest.skip("ignition-validate is not installed (apt-get install ignition)")


def file_bytes(config: dict, path: str) -> bytes:
    entry = next(f for f in config["storage"]["files"] if f["path"] == path)
    data = base64.b64decode(entry["contents"]["source"].removeprefix("data:;base64,"))
    return gzip.decompress(data) if entry["contents"].get("compression") == "gzip" else data


def unit(config: dict, name: str) -> dict:
    return next(u for u in config["systemd"]["units"] if u["name"] == name)


@pytest.mark.parametrize("chain", sorted(units.CHAINS))
@pytest.mark.parametrize("fs", sorted(units.FILESYSTEMS))
def test_ignition_validate_accepts_every_variant(tmp_path, archive, chain, fs):
    require_ignition_validate()
    path = tmp_path / "config.ign"
    path.write_text(json.dumps(ignition.config(units.Variant(chain=chain, fs=fs), KEY, archive)))
    ignition.validate(path)


def test_ignition_validate_rejects_a_broken_config(tmp_path, archive):
    # The check above can fail: a config Ignition would refuse is refused here too.
    require_ignition_validate()
    config = ignition.config(units.Variant(), KEY, archive)
    config["storage"]["files"][0]["path"] = "relative/path"
    path = tmp_path / "config.ign"
    path.write_text(json.dumps(config))
    with pytest.raises(ignition.UserError, match="ignition-validate rejects"):
        ignition.validate(path)


def test_the_chain_is_the_rendered_variant(archive):
    variant = units.Variant(chain="requires", fs="ext4")
    config = ignition.config(variant, KEY, archive)
    rendered = units.render(variant)
    for name in ["format-ephemeral.service", "var-lib-docker.mount", "ecs-agent.service"]:
        assert unit(config, name)["contents"] == rendered[name]
    assert "Requires=var-lib-docker.mount" in unit(config, "ecs-agent.service")["contents"]
    assert "mkfs.ext4" in unit(config, "format-ephemeral.service")["contents"]
    # Enabled exactly where [Install] asks; the format unit is pulled in by the mount.
    assert unit(config, "ecs-agent.service")["enabled"] and unit(config, "var-lib-docker.mount")["enabled"]
    assert "enabled" not in unit(config, "format-ephemeral.service")
    # The drop-in for the OS's own docker.service.
    dropins = {d["name"]: d["contents"] for d in unit(config, "docker.service")["dropins"]}
    assert dropins == {rel.split("/", 1)[1]: text for rel, text in rendered.items() if rel.startswith("docker.service.d/")}


def test_guest_programs_come_from_the_debian_guest_files(archive):
    config = ignition.config(units.Variant(), KEY, archive)
    guest = VM_DIR / "guest"
    assert file_bytes(config, "/etc/docker/daemon.json") == (guest / "etc/docker/daemon.json").read_bytes()
    assert file_bytes(config, "/usr/local/sbin/unitchaos-ready") == (guest / "usr/local/sbin/unitchaos-ready").read_bytes()
    loader = file_bytes(config, "/usr/local/sbin/unitchaos-load-agent-image").decode()
    # /usr is read-only on CoreOS: the archive moves under /usr/local (which is /var/usrlocal).
    assert ignition.FCOS_ARCHIVE in loader and ignition.DEBIAN_ARCHIVE not in loader
    modes = {f["path"]: f["mode"] for f in config["storage"]["files"]}
    assert modes["/usr/local/sbin/unitchaos-load-agent-image"] == 0o755
    assert unit(config, "unitchaos-ready.service")["contents"] == (guest / "etc/systemd/system/unitchaos-ready.service").read_text()


def test_the_agent_image_travels_compressed_and_intact(archive):
    config = ignition.config(units.Variant(), KEY, archive)
    assert file_bytes(config, ignition.FCOS_ARCHIVE) == archive.read_bytes()
    entry = next(f for f in config["storage"]["files"] if f["path"] == ignition.FCOS_ARCHIVE)
    assert entry["contents"]["compression"] == "gzip"


def test_health_daemon_runs_from_the_agent_image_and_zincati_never_reboots(archive):
    config = ignition.config(units.Variant(), KEY, archive)
    health = unit(config, "unitchaos-health.service")
    assert health["enabled"]
    assert "podman run" in health["contents"] and "/agent/unitchaos-health" in health["contents"]
    assert "docker.service" not in health["contents"]  # It must keep answering when Docker is down.
    assert unit(config, "zincati.service") == {"name": "zincati.service", "mask": True}
    users = {u["name"]: u["sshAuthorizedKeys"] for u in config["passwd"]["users"]}
    assert users == {"core": [KEY]}


def test_cli_prints_a_config_ignition_accepts(tmp_path, archive, monkeypatch, capsys):
    require_ignition_validate()
    from harness import cli
    from harness.images.image import Image
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    (image_dir / "id_ed25519.pub").write_text(KEY + "\n")
    monkeypatch.setattr("harness.images.image.ensure_image", lambda *a, **k: Image(image_dir))
    monkeypatch.setattr("harness.images.ignition.agent_archive", lambda image: archive)
    assert cli.main(["ignition", "--chain", "bindsto", "--fs", "xfs"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "printed.ign"
    path.write_text(out)
    ignition.validate(path)
    assert json.loads(out)["ignition"]["version"] == ignition.SPEC
