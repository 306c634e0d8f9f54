"""Two load balancers watching one instance through an experiment: one on the stock check
(the agent's :51678/v1/metadata), one on the deep check (the guest's :51680/health).
They answer: did each check notice the fault, how long after it the first failing answer
came, and when the load balancer gave its verdict of unhealthy."""
import time

from .instance import Instance
from .loadbalancer import HealthCheck, LoadBalancer
from .machine import AGENT_PORT, HEALTH_PORT

# ALB's thresholds with the durations scaled down (30 s -> 1 s interval) so an experiment
# sees the verdict in seconds; `lb_seconds` scales back up by the same factor.
EXPERIMENT_CHECK = HealthCheck(interval=1.0, timeout=2.0, healthy_threshold=5, unhealthy_threshold=2)
CHECKS = {"stock": (AGENT_PORT, "/v1/metadata"), "deep": (HEALTH_PORT, "/health")}


def probe(instance: Instance, port: int, path: str):
    def check(timeout: float) -> int | None:
        if not instance.machine.running:
            return None
        return instance.machine.http_get(port, path, timeout)[0]
    return check


class HealthWatch:
    def __init__(self, instance: Instance, check: HealthCheck = EXPERIMENT_CHECK):
        self.check = check
        self.lb = LoadBalancer(check)
        for name, (port, path) in CHECKS.items():
            self.lb.register(name, probe(instance, port, path))
        self.fault_at: float | None = None

    def start(self) -> "HealthWatch":
        self.lb.start()
        return self

    def mark_fault(self, at: float) -> None:
        self.fault_at = at

    def wait(self, window: float) -> None:
        """Watches until both checks have given their verdict, or WINDOW seconds after the fault."""
        deadline = (self.fault_at or time.time()) + window
        while time.time() < deadline:
            if all(self.lb.unhealthy_after(name, self.fault_at or 0) is not None for name in CHECKS):
                return
            time.sleep(0.2)

    def stop(self) -> None:
        self.lb.stop()

    def result(self) -> dict:
        since = self.fault_at or 0.0
        out = {}
        for name in CHECKS:
            seconds = self.lb.first_failure(name, since)
            verdict = self.lb.unhealthy_after(name, since)
            out[name] = {"detected": verdict is not None,
                         "seconds": None if seconds is None else round(seconds, 2),
                         "lb_seconds": None if verdict is None else round(verdict, 2),
                         "samples": len([s for s in self.lb.targets[name].samples if s[0] >= since])}
        out["lb"] = {**self.check.as_dict(), "scaled_from": "ALB 30 s / 5 s / 5 / 2"}
        return out
