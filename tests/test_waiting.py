"""Tests for harness/waiting.py: the one wait scales its timeout once, stops at once when
the guest cannot answer any more, and says what it last saw."""
import itertools
import time

import pytest

from harness.errors import GuestKernelPanic, GuestTimeout, UserError
from harness.waiting import Deadline, wait_until


class FakeMachine:
    """What wait_until asks of a machine: check_alive (Machine's own is used)."""

    def __init__(self, tmp_path, console: str = "", running: bool = True):
        from harness.machines.machine import Machine
        self.run_dir = tmp_path
        self.console = console
        self.running = running
        self.check_alive = Machine.check_alive.__get__(self)

    def console_text(self) -> str:
        return self.console


def test_returns_the_first_value_that_is_done():
    values = iter([0, 1, 2, 3])
    assert wait_until(lambda: next(values), 5, "a value above 1", done=lambda v: v > 1, interval=0) == 2


def test_gives_up_with_the_last_value_and_the_scaled_seconds(monkeypatch):
    monkeypatch.setenv("UNITCHAOS_TIMEOUT_SCALE", "2")
    counter = itertools.count()
    started = time.monotonic()
    with pytest.raises(GuestTimeout) as caught:
        wait_until(lambda: next(counter), 0.1, "the counter to go negative", done=lambda v: v < 0, interval=0.01)
    took = time.monotonic() - started
    assert 0.2 <= took < 1.5  # scaled once: 0.1 s x 2
    message = str(caught.value)
    assert message.startswith("waiting for the counter to go negative: gave up after 0 s (0 s x UNITCHAOS_TIMEOUT_SCALE 2)")
    assert "last seen: " in message and int(message.rsplit("last seen: ", 1)[1]) > 3


def test_unscaled_bounds_are_real_seconds(monkeypatch):
    monkeypatch.setenv("UNITCHAOS_TIMEOUT_SCALE", "50")
    started = time.monotonic()
    with pytest.raises(GuestTimeout):
        wait_until(lambda: False, 0.1, "nothing", scale=False, interval=0.01)
    assert time.monotonic() - started < 1


def test_on_timeout_chooses_the_error():
    with pytest.raises(UserError, match="libvirtd did not answer"):
        wait_until(lambda: None, 0.05, "libvirtd", interval=0.01,
                   on_timeout=lambda message, last: UserError("libvirtd did not answer", "start it"))


def test_a_machine_whose_qemu_exited_ends_the_wait_at_once(tmp_path):
    started = time.monotonic()
    with pytest.raises(GuestTimeout, match="QEMU exited while waiting for the agent") as caught:
        wait_until(lambda: False, 60, "the agent", machine=FakeMachine(tmp_path, running=False))
    assert time.monotonic() - started < 1
    assert caught.value.evidence == tmp_path


def test_a_guest_kernel_panic_ends_the_wait_at_once_naming_the_first_oops(tmp_path):
    console = ("[    4.700000] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n"
               "[    4.800000] Kernel panic - not syncing: Fatal exception in interrupt\n")
    with pytest.raises(GuestKernelPanic, match=r"while waiting for the agent: Oops: int3.* \.\.\. Kernel panic"):
        wait_until(lambda: False, 60, "the agent", machine=FakeMachine(tmp_path, console))


def test_a_panic_before_the_console_offset_does_not_count(tmp_path):
    old = "[    1.0] Kernel panic - not syncing: an old one\n"
    machine = FakeMachine(tmp_path, old + "later\n")
    with pytest.raises(GuestTimeout, match="gave up after") as caught:
        wait_until(lambda: False, 0.05, "the agent", machine=machine, since=len(old), interval=0.01)
    assert not isinstance(caught.value, GuestKernelPanic)


def test_a_value_that_is_done_wins_over_a_dead_machine(tmp_path):
    # As before: a match already on the console of an exited QEMU is still the answer.
    assert wait_until(lambda: "booted", 5, "boot", machine=FakeMachine(tmp_path, running=False)) == "booted"


def test_deadline_counts_down():
    deadline = Deadline(0.05)
    assert 0 < deadline.left() <= 0.05 and not deadline.passed()
    time.sleep(0.06)
    assert deadline.passed() and deadline.left() < 0
