"""A load balancer's health checker with the real semantics: every `interval` seconds one
request with a `timeout`; only a 200 counts; `healthy_threshold` successes in a row make
a target healthy, `unhealthy_threshold` failures in a row make it unhealthy.

Presets follow AWS's defaults (ALB target group: 30 s / 5 s / 5 / 2; classic ELB:
30 s / 5 s / 10 / 2); `scaled(f)` shortens the durations for tests and experiments.
"""
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from ..errors import UserError

Probe = Callable[[float], "int | None"]  # timeout -> HTTP status, or None when nothing answered


@dataclass(frozen=True)
class HealthCheck:
    interval: float = 30.0
    timeout: float = 5.0
    healthy_threshold: int = 5
    unhealthy_threshold: int = 2

    def scaled(self, factor: float) -> "HealthCheck":
        return replace(self, interval=self.interval * factor, timeout=self.timeout * factor)

    def as_dict(self) -> dict:
        return {"interval": self.interval, "timeout": self.timeout,
                "healthy_threshold": self.healthy_threshold, "unhealthy_threshold": self.unhealthy_threshold}


PRESETS = {"alb": HealthCheck(30, 5, 5, 2), "elb": HealthCheck(30, 5, 10, 2)}


def preset(name: str, scale: float = 1.0) -> HealthCheck:
    try:
        return PRESETS[name].scaled(scale)
    except KeyError:
        raise UserError(f"unknown load balancer {name!r}", f"use one of: {', '.join(PRESETS)}") from None


@dataclass
class Target:
    probe: Probe
    state: str = "initial"          # initial -> healthy | unhealthy, as a target group shows it
    successes: int = 0
    failures: int = 0
    samples: list[tuple[float, int | None]] = field(default_factory=list)  # (time, status)
    changes: list[tuple[float, str]] = field(default_factory=list)         # (time, new state)


class LoadBalancer:
    def __init__(self, check: HealthCheck, on_change: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.check = check
        self.on_change = on_change
        self.clock = clock
        self.targets: dict[str, Target] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, target_id: str, probe: Probe) -> None:
        with self._lock:
            self.targets[target_id] = Target(probe)

    def deregister(self, target_id: str) -> None:
        with self._lock:
            self.targets.pop(target_id, None)

    def state(self, target_id: str) -> str:
        return self.targets[target_id].state

    def check_target(self, target_id: str) -> str:
        """One health check of TARGET_ID; returns its state afterwards."""
        target = self.targets[target_id]
        try:
            status = target.probe(self.check.timeout)
        except Exception:  # noqa: BLE001 - an instance the checker cannot reach is unhealthy, not a crash
            status = None
        now = self.clock()
        target.samples.append((now, status))
        if status == 200:
            target.successes, target.failures = target.successes + 1, 0
            if target.state != "healthy" and target.successes >= self.check.healthy_threshold:
                self._change(target_id, target, "healthy", now)
        else:
            target.successes, target.failures = 0, target.failures + 1
            if target.state != "unhealthy" and target.failures >= self.check.unhealthy_threshold:
                self._change(target_id, target, "unhealthy", now)
        return target.state

    def _change(self, target_id: str, target: Target, state: str, now: float) -> None:
        target.state = state
        target.changes.append((now, state))
        if self.on_change:
            self.on_change(target_id, state)

    def start(self) -> "LoadBalancer":
        self._thread = threading.Thread(target=self._run, name="loadbalancer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.check.timeout + 5)

    def _run(self) -> None:
        # Targets are checked one after another each interval; a probe has its own timeout.
        while not self._stop.is_set():
            started = time.monotonic()
            with self._lock:
                ids = list(self.targets)
            for target_id in ids:
                if target_id in self.targets and not self._stop.is_set():
                    self.check_target(target_id)
            self._stop.wait(max(0.0, self.check.interval - (time.monotonic() - started)))

    def first_failure(self, target_id: str, since: float) -> float | None:
        """Seconds from SINCE to the first non-200 answer (or none), if any."""
        for at, status in self.targets[target_id].samples:
            if at >= since and status != 200:
                return at - since
        return None

    def unhealthy_after(self, target_id: str, since: float) -> float | None:
        """Seconds from SINCE until the load balancer's verdict of unhealthy, if it came."""
        for at, state in self.targets[target_id].changes:
            if at >= since and state == "unhealthy":
                return at - since
        return None
