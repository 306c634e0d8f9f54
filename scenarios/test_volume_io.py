"""The volume's I/O going wrong without the disk going away: stalled (AWS FIS
pause-volume-io), slow, or failing. And a volume that mkfs refused to format at boot.
Measured on Debian bookworm (kernel 6.1, systemd 252) under TCG."""
import pytest

from harness import ALL_ACTIVE, faults
from harness.errors import UserError


def test_a_paused_volume_stalls_containers_while_systemd_and_metadata_see_nothing(lab):
    vm = lab.acquire()
    vm.inject("pause-io")
    vm.start_synced_write()
    assert not vm.start_container(timeout=8)["ok"]
    assert not vm.synced_write_done()  # the sync is still waiting
    assert vm.unit_states() == ALL_ACTIVE
    assert vm.metadata_status() == 200
    assert vm.kernel_events() == []  # a stall is not an error: the kernel says nothing
    vm.heal("pause-io")
    vm.wait_for_synced_write(timeout=30)
    vm.wait_until_containers_start()


def test_a_slow_volume_times_container_starts_out_while_metadata_answers_200(lab):
    vm = lab.acquire()
    assert vm.volume_read_ms() < 50
    vm.inject("io-latency", ms=500)
    assert vm.volume_read_ms(timeout=60) >= 400
    assert vm.unit_states() == ALL_ACTIVE
    assert vm.metadata_status() == 200
    assert vm.kernel_events() == []  # slow is not an error: the kernel says nothing
    assert "timed out" in vm.start_container()["error"]  # hundreds of requests at 2 a second
    vm.heal("io-latency")
    assert vm.volume_read_ms() < 50
    vm.wait_until_containers_start()


@pytest.mark.parametrize("fs, word", [("xfs", faults.XFS_SHUTDOWN),
                                      ("ext4", r"Aborting journal on device vdb|EXT4-fs error \(device vdb\)")])
def test_failing_writes_break_the_filesystem_and_healing_the_disk_does_not_mend_it(lab, fs, word):
    vm = lab.acquire(fs=fs)
    vm.inject("io-error")
    vm.write_to_volume()
    vm.wait_for_kernel_message(word)
    assert vm.mount_listed()
    assert vm.unit_states() == ALL_ACTIVE
    assert vm.metadata_status() == 200
    assert not vm.can_start_container()
    assert vm.wait_for_qemu_event("BLOCK_IO_ERROR", timeout=5)["data"]["operation"] == "write"
    vm.heal("io-error")
    # The disk works again, but the filesystem stays shut down (or read-only) until remounted.
    vm.wait_until_volume_reads(timeout=20)
    assert not vm.can_start_container()


def test_io_latency_on_a_yanked_volume_is_refused_and_the_instance_keeps_running(lab):
    vm = lab.acquire()
    vm.inject("yank")
    with pytest.raises(UserError, match="io-latency does not apply"):
        vm.inject("io-latency")
    assert vm.running


def test_mkfs_refusing_an_old_filesystem_takes_the_whole_chain_down(lab):
    vm = lab.acquire(old_fs=True)
    assert any("appears to contain an existing filesystem" in line for line in vm.journal("format-ephemeral"))
    assert vm.unit_states() == {"format-ephemeral.service": "failed", "var-lib-docker.mount": "inactive",
                                "docker.service": "inactive", "ecs-agent.service": "inactive"}
    assert not vm.mount_listed()
    assert vm.metadata_status() is None  # the load balancer sees it: nothing answers


def test_when_docker_does_not_require_the_mount_it_fills_the_small_root_disk(lab):
    vm = lab.acquire(old_fs=True, docker_requires_mount=False)
    assert vm.unit_state("format-ephemeral.service") == "failed"
    assert vm.unit_state("docker.service") == "active"
    assert vm.source_of() == "/dev/vda"
    before = vm.root_used_mb()
    vm.load_agent_image()
    assert vm.root_used_mb() - before >= 10  # the image landed on the root disk
