"""PostgreSQL 15 with its cluster on its own volume (chains/postgresql.toml: the cluster's
unit postgresql@15-main.service BindsTo= the mount; checks: pg_isready and TCP :5432;
workload: INSERT and COMMIT). Measured on bookworm (kernel 6.1, systemd 252, PostgreSQL
15.18): what systemd, the two checks and the workload do when the volume dies."""
import pytest

from harness.chainfile import CHAINS_DIR, parse_file
from harness.faults import XFS_SHUTDOWN
from harness.waiting import wait_until

POSTGRESQL = CHAINS_DIR / "postgresql.toml"
PG_ISREADY, TCP = parse_file(POSTGRESQL, check_packages=False).checks
CLUSTER, WRAPPER = "postgresql@15-main.service", "postgresql.service"

pytestmark = pytest.mark.lab(chain_file=POSTGRESQL)


def server_log(vm) -> str:
    """PostgreSQL's own log (Debian's servers log to a file on the root disk, not the journal)."""
    return vm.host.file("/var/log/postgresql/postgresql-15-main.log").content_string


def test_yank_both_checks_follow_the_postmaster_not_the_disk(lab):
    vm = lab.acquire()
    vm.inject("yank")
    vm.wait_for_kernel_message(XFS_SHUTDOWN)
    vm.wait_until_settled()
    assert vm.mount_listed()                       # shut down, still mounted: BindsTo= sees nothing
    # No commit: a new session reads the catalog's file map from the dead disk and is refused
    # (FATAL ... global/pg_filenode.map: Input/output error), or the server is gone.
    assert not vm.workload()["ok"]
    # Whether PostgreSQL itself gives up is a race: from the same snapshot it stayed up (at
    # 12:07 and 12:13 UTC) or died within seconds (12:01 and 12:42). The checks only follow the
    # postmaster: while it is up, pg_isready (any answer but "cannot connect now" counts as up)
    # and TCP both pass: both lie.
    # Asked while on its way down, the server's unit is still active and pg_isready already
    # gets no response (CI, 16:45 UTC): wait until it has died or answers.
    wait_until(lambda: (vm.unit_state(CLUSTER), vm.check_fails(PG_ISREADY)), 60, "PostgreSQL to die or answer",
               machine=vm.machine, done=lambda seen: seen[0] == "failed" or seen == ("active", None),
               last_seen=lambda seen: f"{CLUSTER} {seen[0]}, pg_isready: {seen[1] or 'answers'}")
    up = vm.unit_state(CLUSTER) == "active"
    assert (vm.check_fails(PG_ISREADY) is None) == up and (vm.check_fails(TCP) is None) == up
    assert vm.unit_state(WRAPPER) == "active"     # Debian's wrapper: `systemctl is-active postgresql` lies


def test_unplug_bindsto_stops_postgres_its_shutdown_checkpoint_panics_and_the_mount_goes(lab):
    vm = lab.acquire()
    vm.inject("unplug")
    vm.wait_for_kernel_message(r"XFS \(vdb\)")
    # BindsTo= stops the cluster; pg_ctlcluster cannot read the pid file and fails, systemd's
    # SIGTERM makes the server shut down, and its shutdown checkpoint cannot write pg_control.
    vm.wait_for_unit(CLUSTER, "failed", timeout=30)
    vm.wait_until_settled()
    said = server_log(vm)   # "could not fsync" (12:09 UTC) or "could not open" (12:52) the file
    assert "PANIC:" in said and 'global/pg_control": Input/output error' in said, said[-1500:]
    assert vm.unit_states() == {"format-volume.service": "active", "var-lib-postgresql.mount": "inactive",
                                CLUSTER: "failed"}
    assert vm.check_fails(PG_ISREADY) and vm.check_fails(TCP) and not vm.workload()["ok"]   # both truthful
    assert vm.unit_state(WRAPPER) == "active"   # the wrapper does not follow its cluster
