"""Load balancers watching one instance through an experiment: one on each check the chain
declares (the incident's: the stock check, the agent's :51678/v1/metadata) and one on the
deep check (the guest's :51680/health), for comparison. They answer: did each check
notice the fault, how long after it the first failing answer came, and when the load
balancer gave its verdict of unhealthy."""
import threading
import time

from ..lab.instance import Instance
from .loadbalancer import HealthCheck, LoadBalancer
from ..errors import GuestTimeout
from ..lab.instance import AGENT_PORT, HEALTH_PORT
from ..waiting import wait_until

# ALB's thresholds with the durations scaled down (30 s -> 1 s interval) so an experiment
# sees the verdict in seconds; `lb_seconds` scales back up by the same factor.
EXPERIMENT_CHECK = HealthCheck(interval=1.0, timeout=2.0, healthy_threshold=5, unhealthy_threshold=2)
CHECKS = {"stock": (AGENT_PORT, "/v1/metadata"), "deep": (HEALTH_PORT, "/health")}
# How long the deep check can lag behind what it checks: its daemon runs each check every
# --interval (1 s) and counts an I/O probe as hung after --io-timeout (3 s)
# (vm/guest/usr/local/sbin/unitchaos-health's defaults).
DEEP_LAG = 1.0 + 3.0
# For a host busier than the probes assume: the load balancer's thread and the guest's
# daemons late by up to a second on a 2-core host at load 5-8.
VERDICT_MARGIN = 1.0


def verdict_window(check: HealthCheck, lag: float = 0.0) -> float:
    """Seconds after a fault took whole effect until a check's "never detected" is final.
    A check that is going to fail fails at its next probe (within one interval); the load
    balancer says unhealthy after unhealthy_threshold failing probes in a row, the last of
    which may take its whole timeout: interval x unhealthy_threshold + timeout, plus LAG
    (a check that learns from a daemon of its own, like the deep one) and VERDICT_MARGIN.
    With EXPERIMENT_CHECK: 1 x 2 + 2 + 1 = 5 s; the deep check 9 s. (A fixed 12 s after the
    fault was both too long for a fault that settles at once and too short for one that
    settled late.)"""
    return check.interval * check.unhealthy_threshold + check.timeout + lag + VERDICT_MARGIN
DEEP = "deep"
WORKLOAD = "workload"


def probe(instance: Instance, port: int, path: str, record=None):
    """The load balancer's probe of PORT/PATH; with RECORD, every answer is also passed to
    RECORD(started, latency, status, body) for the evidence."""
    def check(timeout: float) -> int | None:
        started = time.time()
        if not instance.machine.running:
            status, body = None, "instance terminated"
        else:
            status, body = instance.machine.http_get(port, path, timeout)
        if record is not None:
            record(started, time.time() - started, status, body)
        return status
    return check


def declared_probe(instance: Instance, check, record=None):
    """The load balancer's probe of one of the chain's checks (see Instance.check_answer)."""
    def run(timeout: float) -> int | None:
        started = time.time()
        if not instance.machine.running:
            status, body = None, "instance terminated"
        else:
            status, body = instance.check_answer(check, timeout)
        if record is not None:
            record(started, time.time() - started, status, body)
        return status
    return run


def workload_probe(instance: Instance, record=None):
    def run(timeout: float) -> int | None:
        started = time.time()
        if not instance.machine.running:
            work = {"ok": False, "error": "instance terminated"}
        else:
            work = instance.workload(timeout)
        if record is not None:
            record(started, time.time() - started, 200 if work["ok"] else None, work.get("error"))
        return 200 if work["ok"] else None
    return run


def _failing(body) -> str | None:
    """Why a check failed, in a few words: the deep daemon's failing checks, or the error."""
    if isinstance(body, dict) and isinstance(body.get("checks"), dict):
        reasons = [f"{name}: {check.get('reason')}" for name, check in body["checks"].items()
                   if isinstance(check, dict) and check.get("status") != "ok"]
        return "; ".join(reasons) or None
    if isinstance(body, str) and body:
        return body[:300]
    return None


class Checkers:
    """One load balancer per check, each with its own thread, as a real load balancer
    checks its targets independently: a command check that hangs on a dead disk must not
    delay the tcp check's next probe (one shared loop put 8-15 s between a Redis chain's
    tcp probes under yank on a loaded 2-core host). Reads like one LoadBalancer."""

    def __init__(self, check: HealthCheck):
        self.check = check
        self.lbs: dict[str, LoadBalancer] = {}

    def register(self, name: str, probe_) -> None:
        self.lbs[name] = LoadBalancer(self.check)
        self.lbs[name].register(name, probe_)

    @property
    def targets(self) -> dict:
        return {name: lb.targets[name] for name, lb in self.lbs.items()}

    def start(self) -> None:
        for lb in self.lbs.values():
            lb.start()

    def stop(self) -> None:
        for lb in self.lbs.values():
            lb.stop()

    def first_failure(self, name: str, since: float) -> float | None:
        return self.lbs[name].first_failure(name, since)

    def unhealthy_after(self, name: str, since: float) -> float | None:
        return self.lbs[name].unhealthy_after(name, since)


class HealthWatch:
    def __init__(self, instance: Instance, check: HealthCheck = EXPERIMENT_CHECK):
        self.check = check
        self.lb = Checkers(check)
        self.samples: list[dict] = []
        self._lock = threading.Lock()
        for check in instance.chain.checks:
            self.lb.register(check.name, declared_probe(instance, check, self._recorder(check.name, check.describe)))
        port, path = CHECKS[DEEP]
        self.lb.register(DEEP, probe(instance, port, path, self._recorder(DEEP, f":{port}{path}")))
        self.names = [check.name for check in instance.chain.checks] + [DEEP]
        # Traffic: the workload once a second, as clients keep using the service through
        # the fault (with the check's timeout, as a client's). It tells when the service
        # stopped doing its job, and a service may only find out on a write: Redis under
        # yank acknowledged the first SET after the fault and refused the next ones. The
        # incident's workload (a container start through the agent) is too heavy for this.
        self.traffic = LoadBalancer(self.check)
        if not instance.chain.has_agent:
            self.traffic.register(WORKLOAD, workload_probe(instance, self._recorder(WORKLOAD, "workload")))
        self.fault_at: float | None = None
        self.windows: dict[str, float] = {}  # each check's "never detected" window (see wait)
        self.effect_at: float | None = None  # when the windows began

    def _recorder(self, name: str, url: str):
        def record(started: float, latency: float, status, body) -> None:
            # Stamped when the answer came, as the load balancer stamps its own samples.
            sample = {"check": name, "url": url, "at": round(started + latency, 3),
                      "latency_ms": round(latency * 1000, 1),
                      "status": status, "why": None if status == 200 else _failing(body)}
            with self._lock:
                self.samples.append(sample)
        return record

    def samples_json(self, t0: float | None = None) -> dict:
        """Every probe's answer (the health.json artifact), with seconds from T0 (the
        fault's moment on the timeline; default: when the fault was marked)."""
        t0 = self.fault_at if t0 is None else t0
        with self._lock:
            samples = [{**s, "t": None if t0 is None else round(s["at"] - t0, 3)} for s in self.samples]
        return {"fault_at": t0, "load_balancer": self.check.as_dict(), "samples": samples,
                "verdicts": [{"check": name, "at": round(at, 3), "t": None if t0 is None else round(at - t0, 3),
                              "state": state}
                             for name, target in self.lb.targets.items() for at, state in target.changes]}

    def start(self) -> "HealthWatch":
        self.lb.start()
        if self.traffic.targets:
            self.traffic.start()
        return self

    def mark_fault(self, at: float) -> None:
        self.fault_at = at

    def window(self, name: str, fault: bool = True) -> float:
        """Seconds after the fault's whole effect until NAME's "never detected" is final.
        Without a FAULT nothing changes for the deep check's daemon to lag behind."""
        return verdict_window(self.check, lag=DEEP_LAG if name == DEEP and fault else 0.0)

    def wait(self, effect_at: float | None = None, fault: bool = True) -> None:
        """Watches until each check's verdict is final: the load balancer said unhealthy, or
        its window (verdict_window) has passed since EFFECT_AT (time.time() when the fault
        took whole effect, e.g. systemd settled; default: the fault's moment, or now).
        FAULT=False: an experiment without one (healthy), watched for the plain window."""
        since = self.fault_at or 0.0
        effect_at = effect_at or self.fault_at or time.time()
        windows = self.windows = {name: self.window(name, fault) for name in self.names}
        self.effect_at = round(effect_at, 3)

        def final() -> bool:
            now = time.time()
            return all(self.lb.unhealthy_after(name, since) is not None or now >= effect_at + windows[name]
                       for name in self.names)
        # A window of observation, not a timeout: real seconds, and its end is no error.
        left = effect_at + max(windows.values()) - time.time()
        try:
            wait_until(final, max(left, 0.0) + 1.0, "every check's verdict", scale=False, interval=0.1)
        except GuestTimeout:
            pass  # cannot happen (final() holds once the last window is over); a bound all the same

    def stop(self) -> None:
        self.lb.stop()
        self.traffic.stop()

    def workload_result(self) -> dict | None:
        """When the traffic's first failure came after the fault, and how many tries failed."""
        if not self.traffic.targets:
            return None
        since = self.fault_at or 0.0
        seconds = self.traffic.first_failure(WORKLOAD, since)
        tries = [status for at, status in self.traffic.targets[WORKLOAD].samples if at >= since]
        return {"first_failure": None if seconds is None else round(seconds, 2),
                "tries": len(tries), "failed": sum(status != 200 for status in tries)}

    def result(self) -> dict:
        since = self.fault_at or 0.0
        out = {}
        for name in self.names:
            seconds = self.lb.first_failure(name, since)
            verdict = self.lb.unhealthy_after(name, since)
            out[name] = {"detected": verdict is not None,
                         "seconds": None if seconds is None else round(seconds, 2),
                         "lb_seconds": None if verdict is None else round(verdict, 2),
                         "samples": len([s for s in self.lb.targets[name].samples if s[0] >= since])}
        out["lb"] = {**self.check.as_dict(), "scaled_from": "ALB 30 s / 5 s / 5 / 2",
                     # The watch's documented window (verdict_window), counted from effect_at.
                     "never_detected_after_s": self.windows, "counted_from": self.effect_at}
        return out
