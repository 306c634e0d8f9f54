"""An auto scaling group: keeps `desired` lab instances in service behind a load balancer
and replaces any the load balancer marks unhealthy (terminate, then launch anew), as EC2
Auto Scaling does with ELB health checks. Instances in their grace period are left alone.
"""
import queue
import secrets
import threading
import time
from typing import Callable

from ..errors import GuestError, UserError
from ..lab.instance import Instance
from ..lab.lab import Lab
from ..evidence.loadbalancer import LoadBalancer, Probe


class AutoScalingGroup:
    def __init__(self, lab: Lab, name: str, desired: int, lb: LoadBalancer,
                 probe_for: Callable[[Instance], Probe], chain: str = "bindsto", fs: str = "xfs",
                 grace_period: float = 300.0, launch_attempts: int = 3):
        self.lab, self.name, self.desired, self.lb = lab, name, desired, lb
        self.probe_for, self.chain, self.fs = probe_for, chain, fs
        self.grace_period, self.launch_attempts = grace_period, launch_attempts
        self.instances: dict[str, Instance] = {}
        self.launched_at: dict[str, float] = {}
        self.events: list[dict] = []
        self._unhealthy: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        lb.on_change = self._on_change

    def start(self) -> "AutoScalingGroup":
        for _ in range(self.desired):
            self._launch(reason="desired capacity")
        self._worker = threading.Thread(target=self._replace_unhealthy, name=f"asg-{self.name}", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._unhealthy.put("")
        if self._worker:
            self._worker.join(timeout=60)

    def running(self) -> list[str]:
        """Instances whose VM is up (what the Chaos Monkey API may pick from)."""
        return [iid for iid, instance in list(self.instances.items()) if instance.machine.running]

    def in_service(self) -> list[str]:
        return [iid for iid in self.instances if self.lb.targets.get(iid) and self.lb.state(iid) == "healthy"]

    def _log(self, action: str, instance_id: str | None, **details) -> None:
        self.events.append({"time": time.time(), "action": action, "instance": instance_id, **details})

    def _launch(self, reason: str) -> str | None:
        for attempt in range(1, self.launch_attempts + 1):
            try:
                instance = self.lab.instance(chain=self.chain, fs=self.fs)
            except (GuestError, UserError, OSError) as exc:
                self._log("LaunchFailed", None, attempt=attempt, error=str(exc).splitlines()[0])
                continue
            instance_id = f"i-{secrets.token_hex(8)}"
            self.instances[instance_id] = instance
            self.launched_at[instance_id] = time.time()
            self.lb.register(instance_id, self.probe_for(instance))
            self._log("Launch", instance_id, reason=reason, seconds=round(instance.boot_seconds, 2))
            return instance_id
        self._log("GaveUp", None, reason=f"no instance launched after {self.launch_attempts} attempts")
        return None

    def _on_change(self, instance_id: str, state: str) -> None:
        if state == "unhealthy":
            self._unhealthy.put(instance_id)

    def _replace_unhealthy(self) -> None:
        while not self._stop.is_set():
            instance_id = self._unhealthy.get()
            if self._stop.is_set() or instance_id not in self.instances:
                continue
            age = time.time() - self.launched_at[instance_id]
            if age < self.grace_period:
                self._log("Ignored", instance_id, reason=f"unhealthy within its grace period ({age:.0f} s)")
                continue
            self._terminate(instance_id, reason="load balancer health check: unhealthy")
            self._launch(reason=f"replacing {instance_id}")

    def _terminate(self, instance_id: str, reason: str) -> None:
        self.lb.deregister(instance_id)
        instance = self.instances.pop(instance_id)
        self.lab.release_instance(instance)
        self._log("Terminate", instance_id, reason=reason)
