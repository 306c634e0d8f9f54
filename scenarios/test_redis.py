"""Redis with AOF on its own volume (chains/redis.toml: BindsTo= the mount; checks: TCP
:6379 and `redis-cli ping`; workload: SET). Measured on bookworm (kernel 6.1, systemd
252, redis 7.0): what systemd, the two checks and the workload do when the volume dies."""
import pytest

from harness.chainfile import CHAINS_DIR, parse_file

REDIS = CHAINS_DIR / "redis.toml"
TCP, PING = parse_file(REDIS, check_packages=False).checks
XFS_SHUTDOWN = r"XFS \(vdb\):.*Filesystem has been shut down"

pytestmark = pytest.mark.lab(chain_file=REDIS)


def test_yank_redis_stays_active_and_ping_passes_until_a_write_fails(lab):
    vm = lab.acquire()
    vm.inject("yank")
    vm.wait_for_kernel_message(XFS_SHUTDOWN)
    vm.wait_until_settled()
    assert vm.mount_listed()                      # shut down, still mounted: BindsTo= sees nothing
    assert vm.unit_states()["redis-server.service"] == "active"
    assert vm.check_fails(TCP) is None and vm.check_fails(PING) is None
    # Redis learns of the dead disk only when it writes its AOF: the first SET is
    # acknowledged (and lost), the next is refused, and from then on PING is refused too.
    first, second = vm.workload(), vm.workload()
    assert first["ok"] and not second["ok"] and "MISCONF" in second["error"]
    assert vm.check_fails(PING) is not None
    assert vm.check_fails(TCP) is None            # the TCP check lies for as long as Redis runs


def test_unplug_bindsto_stops_redis_but_it_hangs_deactivating_and_keeps_its_port(lab):
    vm = lab.acquire()
    vm.inject("unplug")
    vm.wait_for_kernel_message(r"XFS \(vdb\)")
    # BindsTo= does its job, but Debian's unit has TimeoutStopSec=0: systemd waits for
    # ever on a Redis that cannot write its last AOF, and the mount cannot go either.
    vm.machine.wait_for_unit("redis-server.service", "deactivating", timeout=60)
    assert vm.check_fails(PING) is None
    first, second = vm.workload(), vm.workload()  # as under yank: one SET acknowledged and lost
    assert first["ok"] and not second["ok"] and "MISCONF" in second["error"]
    assert vm.check_fails(TCP) is None            # still accepts connections: the TCP check lies
    assert vm.check_fails(PING) is not None
    assert vm.unit_states() == {"format-volume.service": "active", "var-lib-redis.mount": "active",
                                "redis-server.service": "deactivating"}
