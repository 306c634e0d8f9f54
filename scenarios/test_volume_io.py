"""The volume's I/O going wrong without the disk going away: stalled (AWS FIS
pause-volume-io), slow, or failing. And a volume that mkfs refused to format at boot.
Measured on Debian bookworm (kernel 6.1, systemd 252) under TCG."""
import pytest

from harness import ALL_ACTIVE

# One O_DIRECT 4 KiB read of the raw volume, timed in the guest: a single block request.
DIRECT_READ_MS = ("python3 -c 'import mmap,os,time; fd=os.open(\"/dev/vdb\",os.O_RDONLY|os.O_DIRECT); "
                  "b=mmap.mmap(-1,4096); t=[]\nfor i in range(8):\n s=time.monotonic(); os.preadv(fd,[b],i*(1<<20)); "
                  "t.append(time.monotonic()-s)\nprint(sorted(t)[4]*1000)'")


def test_a_paused_volume_stalls_containers_while_systemd_and_metadata_see_nothing(lab):
    vm = lab.acquire()
    vm.inject("pause-io")
    vm.machine.run("(dd if=/dev/zero of=/var/lib/docker/p bs=4k count=1 oflag=dsync; touch /run/synced) "
                   ">/dev/null 2>&1 &")
    assert not vm.start_container(timeout=8)["ok"]
    assert not vm.machine.run("test -e /run/synced").ok  # the sync is still waiting
    assert vm.unit_states() == ALL_ACTIVE
    assert vm.metadata_status() == 200
    assert vm.kernel_events() == []  # a stall is not an error: the kernel says nothing
    vm.heal("pause-io")
    vm.machine.wait_until_succeeds("test -e /run/synced", timeout=30)
    vm.wait_until_containers_start()


def test_a_slow_volume_times_container_starts_out_while_metadata_answers_200(lab):
    vm = lab.acquire()
    assert float(vm.machine.succeed(DIRECT_READ_MS)) < 50
    vm.inject("io-latency", ms=500)
    assert float(vm.machine.succeed(DIRECT_READ_MS, timeout=60)) >= 400
    assert vm.unit_states() == ALL_ACTIVE
    assert vm.metadata_status() == 200
    assert vm.kernel_events() == []  # slow is not an error: the kernel says nothing
    assert "timed out" in vm.start_container()["error"]  # hundreds of requests at 2 a second
    vm.heal("io-latency")
    assert float(vm.machine.succeed(DIRECT_READ_MS)) < 50
    vm.wait_until_containers_start()


@pytest.mark.parametrize("fs, word", [("xfs", r"XFS \(vdb\): Filesystem has been shut down"),
                                      ("ext4", r"Aborting journal on device vdb|EXT4-fs error \(device vdb\)")])
def test_failing_writes_break_the_filesystem_and_healing_the_disk_does_not_mend_it(lab, fs, word):
    vm = lab.acquire(fs=fs)
    vm.inject("io-error")
    vm.machine.run("dd if=/dev/zero of=/var/lib/docker/w bs=4k count=16 conv=fsync")
    vm.wait_for_kernel_message(word)
    assert vm.mount_listed()
    assert vm.unit_states() == ALL_ACTIVE
    assert vm.metadata_status() == 200
    assert not vm.can_start_container()
    assert vm.machine.monitor.wait_for_event("BLOCK_IO_ERROR", timeout=5)["data"]["operation"] == "write"
    vm.heal("io-error")
    # The disk works again, but the filesystem stays shut down (or read-only) until remounted.
    vm.machine.wait_until_succeeds("dd if=/dev/vdb of=/dev/null bs=4k count=1 iflag=direct", timeout=20)
    assert not vm.can_start_container()


def test_io_latency_on_a_yanked_volume_is_refused_and_the_instance_keeps_running(lab):
    from harness.errors import UserError
    vm = lab.acquire()
    vm.inject("yank")
    with pytest.raises(UserError, match="io-latency does not apply"):
        vm.inject("io-latency")
    assert vm.machine.running


def test_mkfs_refusing_an_old_filesystem_takes_the_whole_chain_down(lab):
    vm = lab.acquire(old_fs=True)
    assert "appears to contain an existing filesystem" in vm.machine.succeed("journalctl -b -u format-ephemeral -o cat")
    assert vm.unit_states() == {"format-ephemeral.service": "failed", "var-lib-docker.mount": "inactive",
                                "docker.service": "inactive", "ecs-agent.service": "inactive"}
    assert not vm.mount_listed()
    assert vm.metadata_status() is None  # the load balancer sees it: nothing answers


def test_when_docker_does_not_require_the_mount_it_fills_the_small_root_disk(lab):
    vm = lab.acquire(old_fs=True, docker_requires_mount=False)
    assert vm.machine.unit_state("format-ephemeral.service") == "failed"
    assert vm.machine.unit_state("docker.service") == "active"
    assert vm.machine.succeed("findmnt -n -o SOURCE --target /var/lib/docker").strip() == "/dev/vda"
    used = "df --output=used -B1M / | tail -1"
    before = int(vm.machine.succeed(used))
    vm.machine.succeed("docker load -q -i /usr/share/unitchaos/ecs-agent.tar", timeout=120)
    assert int(vm.machine.succeed(used)) - before >= 10  # the image landed on the root disk
