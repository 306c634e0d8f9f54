"""The incident on Fedora CoreOS, provisioned by Ignition (harness/images/ignition.py) from a
user-supplied image (UNITCHAOS_FCOS_IMAGE: the `qemu` platform qcow2). Without an image
these tests are skipped and say why; the nightly FCOS jobs download one and set
UNITCHAOS_REQUIRE_FCOS=1, so that there a missing image fails instead."""
import pytest

from harness import ALL_ACTIVE
from harness.machines.fcos_machine import FcosMachine

pytestmark = pytest.mark.lab(guest="fcos")



def test_fcos_boots_the_chain_from_ignition(lab):
    vm = lab.acquire(chain="bindsto", fs="xfs")
    assert isinstance(vm.machine, FcosMachine)
    assert "ID=fedora" in vm.machine.succeed("cat /etc/os-release")
    assert vm.unit_states() == ALL_ACTIVE
    assert vm.host.mount_point("/var/lib/docker").filesystem == "xfs"
    assert vm.metadata_status() == 200
    assert vm.can_start_container()
    vm.wait_for_deep_health(timeout=180)


@pytest.mark.parametrize("fs, word", [("xfs", r"XFS \(vdb\):.*(Filesystem has been shut down|Shutting down filesystem)"),
                                      ("ext4", r"(Aborting journal on device vdb|Buffer I/O error on dev vdb)")])
def test_fcos_yank_leaves_the_volume_mounted_and_the_agent_answering_200(lab, fs, word):
    vm = lab.acquire(chain="bindsto", fs=fs)
    vm.inject("yank")
    vm.wait_for_kernel_message(word)
    vm.wait_until_settled()
    assert vm.mount_listed()
    assert vm.unit_states() == ALL_ACTIVE
    assert vm.metadata_status() == 200
    assert not vm.can_start_container()
