"""An experiment's watch ends as soon as each check's verdict is final: the load balancer
said unhealthy, or the check's window (derived from the load balancer's thresholds) has
passed since the fault took whole effect. No guest: the load balancers are stand-ins."""
import time

from harness.evidence import health_watch
from harness.evidence.health_watch import DEEP, EXPERIMENT_CHECK, HealthWatch, verdict_window
from harness.evidence.loadbalancer import HealthCheck


def test_the_window_is_interval_times_unhealthy_threshold_plus_timeout_lag_and_margin():
    assert verdict_window(EXPERIMENT_CHECK) == 1.0 * 2 + 2.0 + health_watch.VERDICT_MARGIN == 5.0
    assert verdict_window(EXPERIMENT_CHECK, lag=health_watch.DEEP_LAG) == 9.0
    # Derived, not fixed: ALB's own thresholds (30 s x 2 + 5 s) give ALB's window.
    assert verdict_window(HealthCheck(30, 5, 5, 2)) == 66.0


class Verdicts:
    """Checkers' stand-in: the seconds after the fault each check was called unhealthy."""
    def __init__(self, unhealthy_after: dict):
        self.after = unhealthy_after

    def unhealthy_after(self, name, since):
        return self.after.get(name)


def watch(unhealthy_after: dict, fault_at: float) -> HealthWatch:
    w = HealthWatch.__new__(HealthWatch)
    w.check, w.lb, w.names, w.fault_at = EXPERIMENT_CHECK, Verdicts(unhealthy_after), ["stock", DEEP], fault_at
    return w


def timed(w: HealthWatch, effect_at: float) -> float:
    started = time.time()
    w.wait(effect_at)
    return time.time() - started


def test_every_check_unhealthy_ends_the_watch_at_once():
    now = time.time()
    assert timed(watch({"stock": 2.0, DEEP: 3.0}, fault_at=now), effect_at=now) < 0.5


def test_a_check_never_detected_is_final_its_window_after_the_effect_not_a_fixed_wait():
    # The fault 6 s ago, systemd settled 4.6 s ago; the deep check said unhealthy; the
    # stock check never: final 5 s after settling, i.e. 0.4 s from now (a fixed 12 s
    # after the fault would be 6 s from now).
    now = time.time()
    seconds = timed(watch({DEEP: 3.0}, fault_at=now - 6), effect_at=now - 4.6)
    assert 0.3 <= seconds < 1.2


def test_the_deep_checks_never_detected_waits_for_its_daemons_lag_too():
    now = time.time()
    seconds = timed(watch({"stock": 2.0}, fault_at=now - 8.5), effect_at=now - 8.5)  # deep: 9 s window
    assert 0.4 <= seconds < 1.3


def test_a_late_effect_moves_the_window_on():
    # systemd settled 20 s after the fault: the window counts from there, not from the fault.
    now = time.time()
    seconds = timed(watch({DEEP: 3.0}, fault_at=now - 24.5), effect_at=now - 4.5)
    assert 0.4 <= seconds < 1.3


def test_without_a_fault_every_check_gets_the_plain_window():
    now = time.time()
    w = watch({}, fault_at=now - 4.6)
    started = time.time()
    w.wait(None, fault=False)  # 5 s after the start for both: 0.4 s from now (deep's 9 s would be 4.4 s)
    assert 0.3 <= time.time() - started < 1.2


def test_the_outcome_documents_each_checks_window_and_where_it_was_counted_from():
    now = time.time()
    w = watch({"stock": 1.0, DEEP: 1.0}, fault_at=now)
    w.wait(now)
    assert w.windows == {"stock": 5.0, DEEP: 9.0} and w.effect_at == round(now, 3)
