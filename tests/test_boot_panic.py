"""A guest kernel that panics while the harness waits on its console: the wait ends at
once with the first oops line (not after the 240 s boot timeout), and Instance.boot
boots again under TCG (up to BOOTS_UNDER_TCG boots), never under KVM. The console is the
panic CI saw on trixie."""
import subprocess
import time

import pytest

from harness.errors import GuestKernelPanic
from harness.images.image import Image
from harness.lab.instance import BOOTED, BOOTS_UNDER_TCG, Instance
from harness.machines.machine import Capabilities, Machine

PANICKED_CONSOLE = """\
[    4.185854] ------------[ cut here ]------------
[    4.187247] general protection fault, probably for non-canonical address 0x10: 0000 [#1] PREEMPT SMP NOPTI
[    4.190000] RIP: 0010:do_sync_core+0x28/0x30
[   13.855425] CPU: 1 UID: 0 PID: 291 Comm: systemd-udevd Tainted: G      D            6.12.117+deb13-cloud-amd64 #1
[   13.855514] Kernel panic - not syncing: Fatal exception in interrupt
"""


@pytest.fixture
def machine(tmp_path):
    machine = Machine(Image(tmp_path / "image"), tmp_path / "run")
    machine.run_dir.mkdir()
    machine.process = subprocess.Popen(["sleep", "30"])  # stands in for a running QEMU
    yield machine
    machine.process.kill()
    machine.process.wait()


def test_a_panic_ends_the_wait_at_once_naming_the_first_oops(machine):
    machine.console_path.write_text(PANICKED_CONSOLE)
    started = time.monotonic()
    with pytest.raises(GuestKernelPanic) as panic:
        machine.wait_for_console(BOOTED, timeout=240)
    assert time.monotonic() - started < 1
    assert str(panic.value).endswith("general protection fault, probably for non-canonical address 0x10: "
                                     "0000 [#1] PREEMPT SMP NOPTI ... Kernel panic - not syncing: "
                                     "Fatal exception in interrupt")


def test_a_console_without_printk_times_still_names_the_panic(machine):
    machine.console_path.write_text("Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    with pytest.raises(GuestKernelPanic, match="Unable to mount root fs ... Kernel panic"):
        machine.wait_for_console(BOOTED, timeout=240)


def test_a_panic_before_the_offset_waited_from_is_not_this_waits(machine):
    machine.console_path.write_text(PANICKED_CONSOLE + "unitchaos: booted metadata=200 agent=active\n")
    match = machine.wait_for_console(BOOTED, timeout=5, since=len(PANICKED_CONSOLE))
    assert match.group(1) == "200"


class PanicsOnFirstBoot:
    """Just what Instance.boot touches of a Machine."""
    capabilities = Capabilities()

    def __init__(self, run_dir, accel):
        self.accel = accel
        self.console_path = run_dir / "console.log"
        self.starts = self.stops = 0

    def start(self):
        self.starts += 1
        self.console_path.write_text(PANICKED_CONSOLE if self.starts == 1 else "booted\n")

    def wait_for_console(self, pattern, timeout):
        if "Kernel panic" in self.console_path.read_text():
            raise GuestKernelPanic("the guest kernel panicked")

    def wait_until_responsive(self):
        pass

    def stop(self):
        self.stops += 1


def booting(tmp_path, accel: str) -> Instance:
    instance = Instance.__new__(Instance)
    instance.run_dir = tmp_path
    instance.machine = PanicsOnFirstBoot(tmp_path, accel)
    instance.boot_timeout = 240
    instance.versions = lambda: {"kernel": "6.12.117+deb13-cloud-amd64"}
    # The release's own image (its manifest names no user's kernel: see test_user_kernel.py).
    instance.image = Image(tmp_path / "image")
    instance.image.path.mkdir()
    (instance.image.path / "manifest.json").write_text('{"release": "trixie"}')
    return instance


def test_under_tcg_a_panicked_boot_is_booted_again_and_its_console_kept(tmp_path):
    instance = booting(tmp_path, "tcg").boot()
    assert (instance.machine.starts, instance.machine.stops) == (2, 1)
    assert (tmp_path / "console-panic-1.log").read_text() == PANICKED_CONSOLE
    assert instance.boot_seconds is not None


def test_under_kvm_a_panic_is_the_guests_own_and_is_reported(tmp_path):
    instance = booting(tmp_path, "kvm")
    with pytest.raises(GuestKernelPanic):
        instance.boot()
    assert instance.machine.starts == 1


def test_a_panic_on_every_boot_is_reported_after_the_last(tmp_path):
    instance = booting(tmp_path, "tcg")
    instance.machine.start = lambda: instance.machine.console_path.write_text(PANICKED_CONSOLE)
    with pytest.raises(GuestKernelPanic):
        instance.boot()
    assert instance.machine.stops == BOOTS_UNDER_TCG - 1
    assert sorted(p.name for p in tmp_path.glob("console-panic-*.log")) == [
        f"console-panic-{n}.log" for n in range(1, BOOTS_UNDER_TCG)]


def test_a_panicked_guests_evidence_is_saved_without_asking_it(tmp_path):
    # Asking a dead kernel for its journal would cost each command its whole timeout.
    instance = booting(tmp_path, "tcg")
    instance.machine.console_path.write_text(PANICKED_CONSOLE)
    instance.machine.running = True
    instance.machine.console_text = lambda: instance.machine.console_path.read_text()
    instance.machine.run = lambda *a, **k: pytest.fail("asked a panicked guest")
    instance.machine.monitor = type("Monitor", (), {"events": []})()
    instance.evidence, instance.fault_log, instance.unit_files = {}, [], {}
    instance.save_artifacts()
    assert (tmp_path / "journal.json").read_text().startswith("not collected: the guest kernel panicked")
