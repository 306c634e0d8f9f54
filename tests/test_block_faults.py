"""The volume faults in QEMU's block layer (harness/faults/block_faults.py), against a real QEMU
that is started paused with no guest: the volume drive is set up as Machine sets it up,
and I/O is issued with HMP's qemu-io, so the block graph surgery is checked for real in
about a second."""
import os
import shutil
import subprocess
import time

import pytest

from harness.faults import block_faults
from harness import faults
from harness.errors import UserError
from harness.machines.machine import Machine
from harness.waiting import Deadline

pytestmark = pytest.mark.skipif(not shutil.which("qemu-system-x86_64") and os.environ.get("CI") != "true",
                                reason="qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")


@pytest.fixture(params=[True, False], ids=["restored", "cold"])
def machine(request, tmp_path):
    """A Machine whose QEMU holds only the volume; RESTORED volumes have a backing file."""
    m = Machine(image=None, run_dir=tmp_path)
    m.restoring = request.param
    if m.restoring:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"), "64M"], check=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(tmp_path / "base.qcow2"),
                        str(m.volume.path)], check=True)
    else:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(m.volume.path), "64M"], check=True)
    out = open(tmp_path / "qemu.out", "w")
    process = subprocess.Popen(
        ["qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-machine", "pc", "-accel", "tcg",
         "-qmp", f"unix:{m.monitor.address},server=on,wait=off",
         "-drive", f"file={m.volume.path},if=none,id=volume,format=qcow2,cache=unsafe{m._node_names(m.volume)}",
         "-device", f"virtio-blk-pci,drive=volume,id={m.volume.device_id}"], stdout=out, stderr=out)
    try:
        m.monitor.connect(Deadline(10))
        yield m
    finally:
        m.monitor.close()
        process.kill()
        process.wait(timeout=10)
        out.close()


def _io(machine, *commands) -> list[str]:
    """Runs qemu-io commands on the volume; returns what each printed (QEMU prints to stdout)."""
    log = machine.run_dir / "qemu.out"
    results = []
    for command in commands:
        before = log.stat().st_size
        machine.monitor.command("human-monitor-command", **{"command-line": f'qemu-io volume "{command}"'})
        time.sleep(0.05)
        results.append(log.read_text()[before:].strip())
    return results


def _limits(machine) -> dict:
    block = next(b for b in machine.monitor.command("query-block") if b["device"] == "volume")
    return {key: block["inserted"][key] for key in ("bps", "iops")}


def test_io_error_fails_writes_after_the_first_n_and_heals(machine):
    # N counts writes that reach the volume's file: allocate the clusters first, so that
    # each later 4k write is one write there (a write to a new cluster is several).
    assert "wrote" in _io(machine, "write 0 4M")[0]
    block_faults.io_error(machine, after=2)
    results = _io(machine, "write 0 4k", "write 1M 4k", "write 2M 4k", "read 0 4k", "write 3M 4k")
    assert "wrote" in results[0] and "wrote" in results[1]
    assert "write failed: Input/output error" in results[2]
    assert "read 4096/4096" in results[3]  # writes only, by default
    assert "write failed" in results[4]
    block_faults.clear_io_error(machine)
    assert "wrote" in _io(machine, "write 8M 4k")[0]


def test_healing_works_while_qcow2_has_metadata_it_could_not_write(machine):
    block_faults.io_error(machine)
    results = _io(machine, "write 0 4k", "write 32M 4k")  # new clusters: L2 and refcount updates fail too
    assert all("write failed" in r for r in results)
    block_faults.clear_io_error(machine)
    assert "wrote" in _io(machine, "write 0 4k")[0]
    assert "read 4096/4096" in _io(machine, "read 0 4k")[0]


def test_io_error_on_reads_too(machine):
    _io(machine, "write 0 64k")  # reads of clusters never written do not reach the file
    block_faults.io_error(machine, op="all")
    assert "read failed: Input/output error" in _io(machine, "read 0 4k")[0]
    assert "write failed: Input/output error" in _io(machine, "write 0 4k")[0]
    block_faults.clear_io_error(machine)


def test_io_error_twice_answers_that_it_is_in_effect_and_the_first_stays(machine):
    block_faults.io_error(machine)
    again = block_faults.io_error(machine, after=5)
    assert "already injected" in again["already_in_effect"]
    assert "write failed" in _io(machine, "write 0 4k")[0]


def test_clearing_an_io_error_that_was_never_injected_is_refused(machine):
    with pytest.raises(UserError, match="was not injected"):
        block_faults.clear_io_error(machine)


@pytest.mark.parametrize("kwargs, message", [({"op": "trim"}, "op='trim'"), ({"errno": "EAGAIN"}, "EAGAIN"),
                                             ({"after": -1}, "negative")])
def test_io_error_bad_parameters(machine, kwargs, message):
    with pytest.raises(UserError, match=message):
        block_faults.io_error(machine, **kwargs)


def test_latency_and_pause_set_throttle_limits_that_healing_lifts(machine):
    block_faults.io_latency(machine, ms=100)
    assert _limits(machine) == {"bps": 0, "iops": 10}
    block_faults.resume_io(machine)
    assert _limits(machine) == {"bps": 0, "iops": 0}
    block_faults.pause_io(machine)
    assert _limits(machine) == {"bps": 1, "iops": 0}
    block_faults.resume_io(machine)
    assert _limits(machine) == {"bps": 0, "iops": 0}


@pytest.mark.parametrize("ms", [0, 1001])
def test_latency_out_of_range(machine, ms):
    with pytest.raises(UserError, match="out of range"):
        block_faults.io_latency(machine, ms=ms)


@pytest.mark.parametrize("fault", ["io-latency", "pause-io", "io-error"])
def test_a_volume_fault_on_a_yanked_volume_does_not_apply(machine, fault):
    machine.monitor.hmp("drive_del volume")
    with pytest.raises(UserError, match=f"{fault} does not apply: the volume's disk was removed"):
        faults.get(fault).inject(machine)


def test_removing_the_volume_backend_leaves_it_detached_for_the_machine(machine):
    assert machine.volume_attached()
    assert block_faults.remove_volume_backend(machine) == {"hmp": "drive_del volume"}
    assert not machine.volume_attached()


def test_fault_parameters_are_typed_like_their_defaults():
    fault = faults.get("io-error")
    assert fault.parse_params(["after=100", "op=all"]) == {"after": 100, "op": "all"}
    assert faults.get("pause-io").parse_params(["duration=2.5"]) == {"duration": 2.5}
    with pytest.raises(UserError, match="not a whole number"):
        fault.parse_params(["after=many"])
    with pytest.raises(UserError, match=r"no parameter 'speed=1'.*after=0, op=write, errno=EIO"):
        fault.parse_params(["speed=1"])
    with pytest.raises(UserError, match="no parameter 'after'"):
        fault.parse_params(["after"])
    with pytest.raises(UserError, match="its parameters: none"):
        faults.get("yank").parse_params(["x=1"])
