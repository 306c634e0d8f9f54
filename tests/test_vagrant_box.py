"""The Vagrant box made from the lab image: a tar with metadata.json and box.img (qcow2),
what vagrant-libvirt reads; and the Vagrantfile's instance description."""
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from harness.images import vagrant_box
from harness.images.image import Image
from harness.paths import REPO


def require_vagrant():
    if shutil.which("vagrant"):
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI must check the Vagrantfile, but vagrant is not installed", pytrace=False)
    pytest.skip("vagrant is not installed (apt-get install vagrant vagrant-libvirt)")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "images" / "bookworm-0123456789abcdef"
    path.mkdir(parents=True)
    with open(path / "root.img", "wb") as f:
        f.truncate(3 * 2**30 - 4096)  # Sparse: a little under 3 GiB.
    return Image(path)


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-img is not installed")
def test_box_is_a_qcow2_with_libvirt_metadata(tmp_path, image):
    box = vagrant_box.build_box(image, tmp_path)
    with tarfile.open(box) as tar:
        assert sorted(tar.getnames()) == ["box.img", "metadata.json"]
        metadata = json.load(tar.extractfile("metadata.json"))
        tar.extract("box.img", tmp_path / "out")
    assert metadata == {"provider": "libvirt", "format": "qcow2", "virtual_size": 3}
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(tmp_path / "out" / "box.img")],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == image.root.stat().st_size


def test_box_name_follows_the_image_key(image):
    assert vagrant_box.box_name(image) == "unitchaos/bookworm-0123456789abcdef"


def test_the_vagrantfile_refuses_to_run_without_an_instance_description(tmp_path):
    require_vagrant()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "VAGRANT_HOME": str(tmp_path / "vh"),
           "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot")}
    done = subprocess.run(["vagrant", "status"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "UNITCHAOS_VAGRANT_CONFIG" in done.stderr and "fix:" in done.stderr


def vagrant_validate(tmp_path, config: dict) -> subprocess.CompletedProcess:
    (tmp_path / "instance.json").write_text(json.dumps(config))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "VAGRANT_HOME": str(tmp_path / "vh"),
           "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
           "UNITCHAOS_VAGRANT_CONFIG": str(tmp_path / "instance.json")}
    return subprocess.run(["vagrant", "validate"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_vagrant_validates_the_description_the_backend_writes(tmp_path, image):
    require_vagrant()
    from harness.machines.vagrant_machine import VagrantMachine
    (image.path / "id_ed25519").write_text("not a real key, but a file\n")
    machine = VagrantMachine(image, tmp_path / "run", fw_cfg={"opt/unitchaos/units.tar": tmp_path / "units.tar"})
    config = machine.vagrant_config("unitchaos/" + image.key)
    assert "-cpu" in config["qemuargs"] and config["driver"] == "qemu"  # TCG: accel was not chosen as kvm.
    assert any(arg.startswith("unix:") and arg.endswith("qmp.sock,server=on,wait=off") for arg in config["qemuargs"])
    assert any(arg == "name=opt/unitchaos/units.tar,file=" + str(machine.shared / "units.tar") for arg in config["qemuargs"])
    done = vagrant_validate(tmp_path, config)
    assert done.returncode == 0, done.stdout + done.stderr
    # And it does check: a key that is not there is refused.
    done = vagrant_validate(tmp_path, {**config, "ssh_key": str(tmp_path / "missing-key")})
    assert done.returncode != 0 and "private_key_path" in done.stdout + done.stderr


def test_an_uploaded_box_is_recognised_in_the_pool_listing():
    listing = (" Name   Path\n-----\n unitchaos-VAGRANTSLASH-bookworm-0123456789abcdef_vagrant_box_image_0_1795618013_box.img"
               "   /var/lib/libvirt/images/x.img\n")
    assert vagrant_box.uploaded("unitchaos/bookworm-0123456789abcdef", listing)
    assert not vagrant_box.uploaded("unitchaos/bookworm-fedcba9876543210", listing)
