"""Choosing the machine (harness/lab/backends.py), and starting and stopping libvirt's
daemons for the Vagrant backend (harness/machines/libvirt_daemons.py), with stand-in daemons."""
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from harness.lab import backends
from harness.machines import libvirt_daemons
from harness import units
from harness.errors import UserError
from harness.images.image import Image
from harness.lab.lab import Lab
from harness.machines.machine import Machine


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(backends.FCOS_IMAGE_ENV, raising=False)


def test_vagrant_and_fcos_boot_cold_and_the_default_restores():
    assert not backends.cold_only("qemu", "debian")
    assert backends.cold_only("vagrant", "debian") and backends.cold_only("qemu", "fcos")
    assert Lab(backend="vagrant", cold=False).cold
    assert not Lab(cold=False).cold


def test_fcos_image_comes_from_the_environment(tmp_path, monkeypatch):
    image = tmp_path / "fcos.qcow2"
    image.write_bytes(b"")
    monkeypatch.setenv(backends.FCOS_IMAGE_ENV, str(image))
    assert backends.check("qemu", "fcos", None) == image.resolve()
    with pytest.raises(UserError, match="does not exist"):
        backends.check("qemu", "fcos", tmp_path / "other.qcow2")


def test_machine_class_by_backend_and_guest(tmp_path, monkeypatch):
    from harness.machines.fcos_machine import FcosMachine
    from harness.machines.vagrant_machine import VagrantMachine
    image = Image(tmp_path / "image")
    variant = units.Variant()
    assert backends.machine_class("qemu", None, image, variant, tmp_path) is Machine
    assert backends.machine_class("vagrant", None, image, variant, tmp_path) is VagrantMachine
    written = {}
    monkeypatch.setattr("harness.images.ignition.write", lambda v, i, out: written.setdefault("path", out))
    factory = backends.machine_class("qemu", tmp_path / "fcos.qcow2", image, variant, tmp_path)
    machine = factory(image, tmp_path / "run", memory_mb=1024, fw_cfg={"opt/unitchaos/units.tar": tmp_path / "u"})
    assert isinstance(machine, FcosMachine)
    # The chain travels in the Ignition config, and FCOS gets the memory it asks for.
    assert machine.fw_cfg == {"opt/com.coreos/config.ign": tmp_path / "config.ign"} == {"opt/com.coreos/config.ign": written["path"]}
    assert machine.memory_mb >= 2048
    machine.ports = {port: 10000 + port for port in machine.guest_ports}
    argv = machine.qemu_argv()
    assert "-kernel" not in argv and "org.unitchaos.cmd" not in " ".join(argv)
    assert "name=opt/com.coreos/config.ign,file=" + str(tmp_path / "config.ign") in argv


# -- libvirt's daemons, with stand-ins ------------------------------------------------

DAEMON = """#!/bin/bash
# A stand-in for {name} -d: forks a sleeper called {name}, records its PID where the real one does.
[ "$1" = -d ] || exit 2
(exec -a {name} sleep 300) >/dev/null 2>&1 </dev/null &
echo $! > {pidfile}
"""


@pytest.fixture
def fake_libvirt(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    daemons = []
    for name in ("virtlogd", "libvirtd"):
        pidfile = tmp_path / f"{name}.pid"
        (bin_dir / name).write_text(DAEMON.format(name=name, pidfile=pidfile))
        daemons.append((name, pidfile))
    (bin_dir / "virsh").write_text("#!/bin/sh\nexit 0\n")
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(libvirt_daemons, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(libvirt_daemons, "DAEMONS", daemons)
    monkeypatch.setattr(libvirt_daemons, "_registered", True)  # No atexit hook from a test.
    yield daemons
    for _, pidfile in daemons:
        pid = libvirt_daemons._daemon_pid(pidfile)
        if pid:
            os.kill(pid, 9)


def pids(daemons) -> list:
    return [libvirt_daemons._daemon_pid(pidfile) for _, pidfile in daemons]


def test_the_last_user_stops_the_daemons_a_lab_started(fake_libvirt, tmp_path):
    libvirt_daemons.ensure()
    started = pids(fake_libvirt)
    assert all(started)
    # Another lab process (a pytest-xdist worker) uses them too.
    other = subprocess.Popen(["sleep", "300"])
    try:
        (tmp_path / "state" / "users" / str(other.pid)).touch()
        libvirt_daemons.release()
        assert pids(fake_libvirt) == started  # Still in use.
    finally:
        other.kill()
        other.wait()
    libvirt_daemons.ensure()
    libvirt_daemons.release()
    assert pids(fake_libvirt) == [None, None]


def test_daemons_already_running_are_never_stopped(fake_libvirt):
    for name, _ in fake_libvirt:
        subprocess.run([name, "-d"], check=True)
    before = pids(fake_libvirt)
    libvirt_daemons.ensure()
    libvirt_daemons.release()
    assert pids(fake_libvirt) == before and all(before)


def test_fcos_commands_go_over_ssh_as_core_through_sudo(tmp_path, monkeypatch):
    from harness.machines.fcos_machine import FcosMachine
    image = Image(tmp_path / "image")
    machine = FcosMachine(image, tmp_path / "run", disk=tmp_path / "fcos.qcow2", ignition_config=tmp_path / "c.ign")
    (tmp_path / "run").mkdir()
    machine.ports = {port: 10000 + port for port in machine.guest_ports}
    assert "User core" in machine.ssh_config.read_text()
    seen = {}

    def fake_run(argv, **kwargs):
        seen["argv"] = argv
        return subprocess.CompletedProcess(argv, 3, "out", "err")

    monkeypatch.setattr("harness.machines.fcos_machine.subprocess.run", fake_run)
    result = machine.run("systemctl is-active docker", timeout=7)
    assert (result.status, result.stdout, result.stderr) == (3, "out", "err")
    assert seen["argv"][:3] == ["ssh", "-F", str(machine.ssh_config)]
    assert seen["argv"][-1].startswith("sudo timeout -s KILL 7 bash -c ")


@pytest.mark.parametrize("release, vcpus, cpu", [
    ("trixie-backports", "1", "qemu64"),
    ("bookworm-backports", "2", "qemu64,-cx16"),
    ("sid", "2", "qemu64"),
])
def test_each_release_boots_with_its_tcg_workaround(tmp_path, release, vcpus, cpu):
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "manifest.json").write_text(json.dumps({"release": release}))
    machine = Machine(Image(tmp_path / "image"), tmp_path / "run")
    machine.accel, machine.ports = "tcg", {port: 10000 + port for port in machine.guest_ports}
    argv = machine.qemu_argv()
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    assert argv[argv.index("-smp") + 1] == vcpus
    assert argv[argv.index("-cpu") + 1] == cpu
    assert "systemd.default_device_timeout_sec=600" in argv[argv.index("-append") + 1]
    assert ("damon_stat.enabled=N" in argv[argv.index("-append") + 1]) == (release == "trixie-backports")


def test_kvm_takes_none_of_the_tcg_kernel_arguments(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "manifest.json").write_text(json.dumps({"release": "trixie-backports"}))
    machine = Machine(Image(tmp_path / "image"), tmp_path / "run")
    machine.accel, machine.ports = "kvm", {port: 10000 + port for port in machine.guest_ports}
    argv = machine.qemu_argv()
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-smp") + 1] == "2"  # one vCPU is TCG's workaround, not KVM's
    assert not {"damon_stat.enabled=N", "systemd.default_device_timeout_sec=600"} & set(argv[argv.index("-append") + 1].split())


def test_the_deep_checks_pacing_on_one_tcg_vcpu_is_a_drop_in_and_part_of_the_snapshot_key(tmp_path, monkeypatch):
    from harness import units
    from harness.lab import snapshots
    from harness.machines import tcg
    variant = units.Variant()
    env = tcg.deep_check_env("tcg", "trixie-backports")
    assert env == {"UNITCHAOS_HEALTH_CONTAINER_TIMEOUT": "60", "UNITCHAOS_HEALTH_CONTAINER_EVERY": "120",
                   "UNITCHAOS_HEALTH_IO_TIMEOUT": "10"}
    assert tcg.deep_check_env("kvm", "trixie-backports") == {} == tcg.deep_check_env("tcg", "sid")
    assert units.render(variant, env)[units.MACHINE_HEALTH_DROPIN] == (
        "[Service]\nEnvironment=UNITCHAOS_HEALTH_CONTAINER_EVERY=120\n"
        "Environment=UNITCHAOS_HEALTH_CONTAINER_TIMEOUT=60\nEnvironment=UNITCHAOS_HEALTH_IO_TIMEOUT=10\n")
    assert units.MACHINE_HEALTH_DROPIN not in units.render(variant, {})
    # One container budget: the agent's Docker calls get the deep check's, where it has one.
    agent_dropin = units.render(variant, env)[units.MACHINE_AGENT_DROPIN]
    assert "echo UNITCHAOS_DOCKER_TIMEOUT=60 >> /etc/ecs/ecs.config" in agent_dropin
    assert units.MACHINE_AGENT_DROPIN not in units.render(variant, {})
    assert tcg.container_budget(env) == 60 and tcg.container_budget({}) == 20
    assert tcg.boot_timeout(240, "tcg", "trixie-backports") == 600
    assert tcg.boot_timeout(240, "kvm", "trixie-backports") == 240 == tcg.boot_timeout(240, "tcg", "sid")

    def keys(release):
        (tmp_path / release).mkdir(exist_ok=True)
        (tmp_path / release / "manifest.json").write_text(json.dumps({"release": release}))
        return snapshots.snapshot_key(Image(tmp_path / release), variant, 1024, "tcg", "argv")
    shipped = {release: keys(release) for release in ("sid", "trixie-backports")}
    monkeypatch.setattr(tcg, "TCG_DEEP_CHECK_ENV", {})
    # Other releases' snapshot keys do not move; this release's follows its pacing.
    assert keys("sid") == shipped["sid"]
    assert keys("trixie-backports") != shipped["trixie-backports"]


def test_on_tcg_the_libvirtd_a_lab_starts_sees_no_kvm_and_the_host_still_does(fake_libvirt, tmp_path):
    kvm = Path("/dev/kvm")
    if not kvm.exists() or os.geteuid() != 0:
        pytest.skip("needs /dev/kvm and root (a mount namespace)")
    seen = tmp_path / "seen"
    libvirtd = Path(shutil.which("libvirtd"))
    libvirtd.write_text(libvirtd.read_text() + f"stat -c '%F %a' /dev/kvm > {seen}\n"
                        f"grep -h '^namespaces' /etc/libvirt/qemu.conf >> {seen}\n")
    libvirt_daemons.ensure(hide_kvm=True)
    # And libvirt does not try to move that file's mount into each domain's own /dev.
    assert seen.read_text().splitlines() == ["regular empty file 0", "namespaces = [ ]"]
    assert kvm.is_char_device()  # the host's own /dev/kvm is untouched
    libvirt_daemons.release()
    assert libvirt_daemons._start_commands("libvirtd", hide_kvm=False) == [["libvirtd", "-d"]]
    assert libvirt_daemons._start_commands("virtlogd", hide_kvm=True) == [["virtlogd", "-d"]]
    assert libvirt_daemons._start_commands("libvirtd", hide_kvm=True)[-1] == ["libvirtd", "-d"]


def test_a_daemon_that_will_not_start_is_a_user_error_not_a_traceback(fake_libvirt, tmp_path):
    libvirtd = Path(shutil.which("libvirtd"))
    libvirtd.write_text("#!/bin/sh\nexit 1\n")
    with pytest.raises(UserError, match="libvirtd -d failed to start"):
        libvirt_daemons.ensure(hide_kvm=True)
