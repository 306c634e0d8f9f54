"""Tests for harness/chainfile.py: the shipped chain files parse, and each kind of bad input
is one UserError naming the key and the fix (the CLI turns it into one line, exit 2,
before any VM starts)."""
import shutil
import textwrap
import tomllib

import pytest

from harness import chainfile, cli, units
from harness.errors import UserError

needs_systemd_analyze = pytest.mark.skipif(not shutil.which("systemd-analyze"),
                                           reason="systemd-analyze is not installed on this host")
needs_apt = pytest.mark.skipif(not shutil.which("apt-cache"), reason="apt-cache is not installed on this host")

MOUNT = """[Unit]
Requires=format.service
[Mount]
What={{device}}
Where={{mount_point}}
Type={{fs}}
"""
FORMAT = """[Unit]
DefaultDependencies=no
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={{mkfs}} {{device}}
"""
GOOD = """
[volume]
mount_point = "/srv/data"

[units]
directory = "units"
chain = ["format.service", "srv-data.mount", "app.service"]
must_stop = ["app.service"]

[workload]
command = "true"

[[checks]]
type = "tcp"
port = 8080
"""


@pytest.fixture
def chain_dir(tmp_path):
    """A user's chain: units directory with a format unit, the mount and a service."""
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "format.service").write_text(FORMAT)
    (tmp_path / "units" / "srv-data.mount").write_text(MOUNT)
    (tmp_path / "units" / "app.service").write_text("[Unit]\nBindsTo=srv-data.mount\n[Service]\nExecStart=/bin/sleep infinity\n")
    (tmp_path / "unitchaos.toml").write_text(GOOD)
    return tmp_path


def write(chain_dir, text: str):
    path = chain_dir / "unitchaos.toml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        units.load_chain(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "(fix: " in message, message
    return message


def test_the_incident_chain_is_the_default_and_keeps_its_units():
    chain = chainfile.parse_file(chainfile.DEFAULT, check_packages=False)
    assert chain.name == "ecs-docker" and chain.is_incident and chain.has_docker and chain.has_agent
    assert chain.units == ("format-ephemeral.service", "var-lib-docker.mount", "docker.service", "ecs-agent.service")
    assert chain.mount_point == "/var/lib/docker" and chain.mount_unit == "var-lib-docker.mount"
    assert [c.name for c in chain.checks] == ["stock"] and chain.checks[0].port == 51678
    assert units.Variant().deep_probes == ["volume", "io", "space", "kernel", "docker", "agent"]


def test_the_redis_chain_parses_and_its_deep_check_leaves_docker_out():
    chain = chainfile.parse_file(chainfile.CHAINS_DIR / "redis.toml", check_packages=False)
    assert chain.mount_unit == "var-lib-redis.mount" and chain.must_stop == ("redis-server.service",)
    assert [(c.type, c.port) for c in chain.checks] == [("tcp", 6379), ("command", None)]
    assert chain.packages == ("redis-server",) and chain.ports == (6379,)
    rendered = units.render(units.Variant(spec=chain))
    assert "BindsTo=var-lib-redis.mount" in rendered["redis-server.service.d/10-volume.conf"]
    health = rendered[units.HEALTH_DROPIN]
    assert "UNITCHAOS_HEALTH_MOUNT_POINT=/var/lib/redis" in health and "PROBES=volume,io,space,kernel\n" in health
    assert "UNITCHAOS_READY_UNIT=redis-server.service" in rendered[units.READY_DROPIN]


def test_the_postgresql_chain_binds_the_cluster_instance_not_debians_wrapper():
    chain = chainfile.parse_file(chainfile.CHAINS_DIR / "postgresql.toml", check_packages=False)
    # postgresql.service is Debian's oneshot wrapper: the postmaster runs under the instance.
    assert chain.units[-1] == "postgresql@15-main.service" and chain.must_stop == ("postgresql@15-main.service",)
    assert chain.mount_unit == "var-lib-postgresql.mount" and chain.ports == (5432,)
    assert [(c.name, c.type) for c in chain.checks] == [("pg_isready", "command"), ("tcp:5432", "tcp")]
    assert [dest for _, dest in chain.files] == ["/etc/postgresql/15/main/conf.d/unitchaos.conf"]
    assert "synchronous_commit = on" in chain.workload and chain.workload_expect == "^COMMIT$"
    rendered = units.render(units.Variant(spec=chain))
    dropin = rendered["postgresql@15-main.service.d/10-volume.conf"]
    assert "BindsTo=var-lib-postgresql.mount" in dropin and "-D /var/lib/postgresql/15/main" in dropin
    assert "UNITCHAOS_READY_UNIT=postgresql@15-main.service" in rendered[units.READY_DROPIN]
    assert not any("listen" in rel for rel in rendered)  # files/ is not part of the units directory
    assert units.render(units.Variant(chain="requires", spec=chain))[
        "postgresql@15-main.service.d/10-volume.conf"].count("Requires=var-lib-postgresql.mount") == 1


def test_the_postgresql_wrapper_is_refused_as_must_stop(tmp_path):
    # The honest unit is the cluster's instance; naming the wrapper is a chain mistake.
    source = chainfile.CHAINS_DIR / "postgresql.toml"
    text = source.read_text().replace('must_stop = ["postgresql@15-main.service"]', 'must_stop = ["postgresql.service"]')
    data = tomllib.loads(text)
    with pytest.raises(UserError, match="must_stop names postgresql.service, which is not in units.chain"):
        chainfile.parse(data, source, check_packages=False)


def test_find_prefers_the_flag_then_the_environment_then_the_current_directory(chain_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path / "units")
    monkeypatch.delenv(chainfile.ENV, raising=False)
    assert chainfile.find() == chainfile.DEFAULT
    monkeypatch.chdir(chain_dir)
    assert chainfile.find() == chain_dir / "unitchaos.toml"
    monkeypatch.setenv(chainfile.ENV, str(chainfile.DEFAULT))
    assert chainfile.find() == chainfile.DEFAULT
    assert chainfile.find(chain_dir / "unitchaos.toml") == chain_dir / "unitchaos.toml"


def test_a_users_chain_parses_with_defaults(chain_dir):
    chain = units.load_chain(chain_dir / "unitchaos.toml")
    assert (chain.fs, chain.size, chain.dependency, chain.mount_options) == ("xfs", "1G", "bindsto", "defaults")
    assert chain.checks[0].name == "tcp:8080" and not chain.has_docker


@pytest.mark.parametrize("change, words", [
    ("extra = 1\n", "unknown key extra"),
    ('[volume]\nmount_point = "/srv/data"\nsizes = "1G"', "unknown key volume.sizes"),
    ("[[checks]]\ntype = \"tcp\"\nport = 22\ninterval = 3\n", "unknown key checks[1].interval"),
])
def test_unknown_keys_are_named(chain_dir, change, words):
    if change.startswith("extra"):
        text = change + GOOD
    elif change.startswith("[["):
        text = GOOD + change
    else:
        text = GOOD.replace('[volume]\nmount_point = "/srv/data"', change)
    assert words in error_of(write(chain_dir, text))


@pytest.mark.parametrize("old, new, words", [
    ('mount_point = "/srv/data"', "mount_point = 5", "volume.mount_point must be a string"),
    ('command = "true"', "command = true", "workload.command must be a string"),
    ("port = 8080", 'port = "8080"', "checks[0].port must be a whole number"),
    ('chain = ["format.service", "srv-data.mount", "app.service"]', 'chain = "app.service"',
     "units.chain must be a list"),
])
def test_wrong_types_are_named(chain_dir, old, new, words):
    assert words in error_of(write(chain_dir, GOOD.replace(old, new)))


def test_a_mount_point_without_its_mount_unit(chain_dir):
    message = error_of(write(chain_dir, GOOD.replace('"/srv/data"', '"/srv/other"')))
    assert "volume.mount_point /srv/other has no srv-other.mount" in message


def test_a_must_stop_unit_not_in_the_chain(chain_dir):
    message = error_of(write(chain_dir, GOOD.replace('must_stop = ["app.service"]', 'must_stop = ["db.service"]')))
    assert "units.must_stop names db.service, which is not in units.chain" in message


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_a_port_outside_the_range(chain_dir, port):
    assert f"checks[0].port {port} is outside 1-65535" in error_of(write(chain_dir, GOOD.replace("8080", str(port))))


def test_a_chain_unit_missing_from_the_units_directory(chain_dir):
    (chain_dir / "units" / "app.service").unlink()
    assert "lacks app.service" in error_of(write(chain_dir, GOOD))


@needs_systemd_analyze
def test_a_unit_file_systemd_analyze_rejects(chain_dir):
    (chain_dir / "units" / "app.service").write_text("[Unit]\nBindsTo=srv-data.mount\n[Service]\nExecStart=/bin/sleep infinity\n"
                                                     "Restart=sometimes\n")
    assert "systemd-analyze rejects the unit files" in error_of(write(chain_dir, GOOD))


@needs_apt
def test_a_debian_package_that_does_not_exist_in_apts_words(chain_dir):
    text = GOOD + '\n[guest]\npackages = ["redis-server", "no-such-package-unitchaos"]\n'
    message = error_of(write(chain_dir, text))
    assert "Unable to locate package no-such-package-unitchaos" in message or "No packages found" in message
    assert "no-such-package-unitchaos" in message


@pytest.mark.parametrize("text, words", [
    (GOOD.replace("[[checks]]\ntype = \"tcp\"\nport = 8080\n", ""), "checks is missing"),
    (GOOD.replace('type = "tcp"', 'type = "grpc"'), "checks[0].type 'grpc' is unknown"),
    (GOOD.replace('type = "tcp"\nport = 8080', 'type = "command"'), "has no command"),
    (GOOD.replace('"/srv/data"', '"srv/data"'), "not an absolute path"),
    (GOOD + '[units_]\n', "unknown key units_"),
    ("[volume\n", "not valid TOML"),
])
def test_other_bad_input(chain_dir, text, words):
    assert words in error_of(write(chain_dir, text))


TCP_CHECK = '[[checks]]\ntype = "tcp"\nport = 8080\n'


@pytest.mark.parametrize("old, new, words", [
    # [volume]
    ('[volume]\nmount_point = "/srv/data"\n', "", "the [volume] table is missing"),
    ('mount_point = "/srv/data"', 'mount_point = "/"', "not an absolute path below /"),
    ('mount_point = "/srv/data"', 'mount_point = "/srv/data"\nfs = "btrfs"', "volume.fs 'btrfs' is not supported"),
    ('mount_point = "/srv/data"', 'mount_point = "/srv/data"\nsize = "1 TB"', "volume.size '1 TB' is not a size"),
    # [units]
    ('must_stop = ["app.service"]', 'must_stop = ["app.service"]\ndependency = "wants"', "units.dependency 'wants' is unknown"),
    ('directory = "units"', 'directory = "nowhere"', "units.directory 'nowhere' is not a directory"),
    ('chain = ["format.service", "srv-data.mount", "app.service"]\nmust_stop = ["app.service"]', "chain = []",
     "units.chain is empty"),
    ('chain = ["format.service", "srv-data.mount", "app.service"]', 'chain = ["format.service", "app.service"]',
     "units.chain lacks srv-data.mount"),
    ('must_stop = ["app.service"]', "must_stop = [1]", "units.must_stop must be a list of strings"),
    # [guest]
    ("[workload]", '[guest]\npackages = ["Redis Server"]\n\n[workload]', "'Redis Server' is not a Debian package name"),
    ("[workload]", '[guest]\nfiles = ["app.conf"]\n\n[workload]', "guest.files[0] is not a table"),
    ("[workload]", '[guest]\nfiles = [{source = "missing.conf", destination = "/etc/app.conf"}]\n\n[workload]',
     "guest.files[0].source 'missing.conf' does not exist"),
    ("[workload]", '[guest]\nfiles = [{source = "units/app.service", destination = "etc/app.conf"}]\n\n[workload]',
     "guest.files[0].destination 'etc/app.conf' is not absolute"),
    ("[workload]", '[guest]\nfiles = [{source = "units/app.service"}]\n\n[workload]', "guest.files[0].destination is missing"),
    # [workload]
    ('command = "true"', 'expect = "OK"', "workload.command is missing"),
    ('command = "true"', 'command = "true"\nexpect = "(unclosed"', "workload.expect is not a regular expression"),
    ('command = "true"', 'command = "true"\ntimeout = 0', "workload.timeout must be positive"),
    ('command = "true"', 'command = "true"\ntimeout = "10"', "workload.timeout must be a number"),
    # [[checks]]
    ("port = 8080", "", "checks[0] (tcp) has no port"),
    ("port = 8080", 'port = 8080\npath = "/health"', "checks[0] is tcp and has path"),
    ('type = "tcp"\nport = 8080', 'type = "http"\nport = 8080\ncommand = "true"', "checks[0] is http and has a command"),
    ('type = "tcp"\nport = 8080', 'type = "command"\ncommand = "true"\nport = 8080', "checks[0] is a command check and has port"),
    ('type = "tcp"\nport = 8080', 'type = "http"\nport = 8080\nstatus = 999', "checks[0].status 999 is not an HTTP status"),
    ('type = "tcp"\nport = 8080', 'type = "http"\nport = 8080\npath = "health"', "checks[0].path 'health' does not start with /"),
    ('type = "tcp"\nport = 8080', 'name = "deep"\ntype = "tcp"\nport = 8080', "may not be named 'deep'"),
    (TCP_CHECK, TCP_CHECK + "\n" + TCP_CHECK, "two checks are named 'tcp:8080'"),
])
def test_each_bad_value_is_named_with_its_fix(chain_dir, old, new, words):
    assert old in GOOD
    assert words in error_of(write(chain_dir, GOOD.replace(old, new)), check_packages=False)


def test_a_check_that_is_not_a_table(chain_dir):
    text = "checks = [1]\n" + GOOD.replace(TCP_CHECK, "")
    assert "checks[0] is not a table" in error_of(write(chain_dir, text))


def test_an_unknown_placeholder_in_a_unit_file(chain_dir):
    (chain_dir / "units" / "app.service").write_text("[Unit]\nBindsTo={{mount}}\n[Service]\nExecStart=/bin/true\n")
    assert "unknown placeholder {{mount}}" in error_of(write(chain_dir, GOOD))


def test_a_chain_file_that_does_not_exist(tmp_path):
    assert "chain file" in error_of(tmp_path / "nope.toml") and "does not exist" in error_of(tmp_path / "nope.toml")


def test_the_cli_says_it_in_one_line_and_exits_2_without_a_vm(chain_dir, capsys):
    path = write(chain_dir, GOOD.replace("8080", "70000"))
    assert cli.main(["verdict", "--chain-file", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unitchaos: error:") and "checks[0].port 70000" in err and "\n" not in err
