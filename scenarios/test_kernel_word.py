"""Linux 7.x: the kernel tells userspace that the volume's filesystem shut down
(FAN_FS_ERROR), and systemd can act on it with nothing but unit files.

trixie-backports (trixie's systemd 257 with the backported 7.3 kernel) carries these in
every CI run; sid (kernel 7.2, systemd 262, xfsprogs 7.2) runs them whenever its image
builds (see README: "CI and sid")."""
import pytest

from harness.machine import HEALTH_PORT

pytestmark = pytest.mark.releases("trixie-backports", "sid")
STOPPED = ("inactive", "failed")


def test_yank_on_xfs_the_kernel_says_fan_fs_error_and_the_deep_check_fails_at_once(lab):
    vm = lab.instance(chain="bindsto", fs="xfs")
    vm.inject("yank")
    vm.wait_for_kernel_message(r"XFS \(vdb\): .*(Filesystem has been shut down|Shutting down filesystem)")
    vm.wait_until_settled()
    _, health = vm.machine.http_get(HEALTH_PORT, "/health")
    assert health["fs_error"]["supported"], health["fs_error"]["reason"]
    assert [event["error_name"] for event in health["fs_error"]["events"]][:1] == ["EIO"]
    # Guest clock: the shutdown line (put on CLOCK_MONOTONIC by the daemon's clock mark)
    # against the moment /health turned 503.
    shutdown = health["kernel_matches"]["xfs-shutdown"]["first_monotonic"]
    assert health["became_unhealthy_monotonic"] - shutdown <= 0.1
    # systemd itself still sees nothing: the incident stands without a remedy.
    assert vm.mount_listed()
    assert vm.unit_states()["ecs-agent.service"] == "active"


def test_fs_error_watch_remedy_makes_systemd_stop_the_agent_after_a_yank(lab):
    vm = lab.instance(chain="bindsto", fs="xfs", remedy="fs-error-watch")
    vm.inject("yank")
    vm.wait_for_kernel_message(r"XFS \(vdb\): .*(Filesystem has been shut down|Shutting down filesystem)")
    vm.wait_until_settled()
    assert vm.machine.unit_state("unitchaos-fs-error-watch.service") == "failed"
    assert vm.unit_states()["ecs-agent.service"] in STOPPED
    assert vm.metadata_status() is None
