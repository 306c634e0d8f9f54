"""An auto scaling group: keeps `desired` lab instances in service behind a load balancer
and re-evaluates every member's health continuously, as EC2 Auto Scaling does:

- an instance that is not running (its VM is gone, or it was stopped) fails its EC2
  status check and is replaced at once, grace period or not;
- an instance the load balancer's check (or SetInstanceHealth) calls unhealthy is replaced
  as soon as its grace period is over. Inside the grace period it stays a member and is
  looked at again on every pass: an earlier version dropped the load balancer's one
  "unhealthy" transition and never replaced the instance (issue 15);
- fewer members than desired: launch; more: terminate the newest.

Replacing is terminate, then launch anew. A launch that fails `launch_attempts` times in a
row is retried after `launch_backoff` seconds, as EC2 Auto Scaling keeps retrying.
"""
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import GuestError, UserError
from ..lab.instance import Instance
from ..lab.lab import Lab
from ..evidence.loadbalancer import LoadBalancer, Probe


def new_instance_id() -> str:
    # EC2's current form: i- and 17 hex digits.
    return "i-" + secrets.token_hex(9)[:17]


@dataclass
class Member:
    instance: Instance
    launched_at: float
    lifecycle: str = "InService"        # as DescribeAutoScalingInstances shows it
    health: str = "Healthy"             # what SetInstanceHealth last said
    respect_grace: bool = True          # SetInstanceHealth's ShouldRespectGracePeriod
    stopped: bool = False               # StopInstances: the VM is paused, EC2 says "stopped"
    noted_grace: bool = False           # "unhealthy within its grace period" logged once


class AutoScalingGroup:
    def __init__(self, lab: Lab, name: str, desired: int, lb: LoadBalancer,
                 probe_for: Callable[[Instance], Probe], chain: str = "bindsto", fs: str = "xfs",
                 grace_period: float = 300.0, launch_attempts: int = 3, launch_backoff: float = 30.0,
                 min_size: int = 0, max_size: int | None = None,
                 watchers: dict[str, tuple[LoadBalancer, Callable[[Instance], Probe]]] | None = None,
                 check_name: str = "lb"):
        self.lab, self.name, self.desired, self.lb = lab, name, desired, lb
        self.probe_for, self.chain, self.fs = probe_for, chain, fs
        self.grace_period, self.launch_attempts, self.launch_backoff = grace_period, launch_attempts, launch_backoff
        self.min_size, self.max_size = min_size, max(desired, max_size or desired)
        self.members: dict[str, Member] = {}
        # More target groups the members are registered with, by name: their verdicts are
        # shown (DescribeTargetHealth) but never acted on; only LB's decide a replacement.
        self.watchers = watchers or {}
        self.check_name = check_name
        self.events: list[dict] = []
        # A pass at least once per health-check interval (and at once when woken), so a
        # gone VM is seen within one interval of going.
        self.pass_every = min(1.0, lb.check.interval)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._next_launch_at = 0.0
        self._worker: threading.Thread | None = None
        lb.on_change = lambda instance_id, state: self._wake.set()

    @property
    def instances(self) -> dict[str, Instance]:
        with self._lock:
            return {iid: member.instance for iid, member in self.members.items()}

    @property
    def launched_at(self) -> dict[str, float]:
        with self._lock:
            return {iid: member.launched_at for iid, member in self.members.items()}

    def start(self) -> "AutoScalingGroup":
        for _ in range(self.desired):
            self._launch(reason="desired capacity")
        self._worker = threading.Thread(target=self._run, name=f"asg-{self.name}", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        for watcher, _ in self.watchers.values():
            watcher.stop()
        self._stop.set()
        self._wake.set()
        if self._worker:
            self._worker.join(timeout=300)

    def running(self) -> list[str]:
        """Instances whose VM is up and not stopped (what the Chaos Monkey API may pick from)."""
        with self._lock:
            return [iid for iid, member in self.members.items()
                    if member.instance.machine.running and not member.stopped]

    def in_service(self) -> list[str]:
        return [iid for iid in self.instances if self.lb.targets.get(iid) and self.lb.state(iid) == "healthy"]

    # -- what the AWS API (and tests) ask of the group -------------------------------

    def set_instance_health(self, instance_id: str, health: str, respect_grace: bool = True) -> None:
        with self._lock:
            member = self._member(instance_id)
            member.health, member.respect_grace = health, respect_grace
        self._log("SetInstanceHealth", instance_id, reason=f"set to {health}")
        self._wake.set()

    def set_desired(self, desired: int) -> None:
        if not self.min_size <= desired <= self.max_size:
            raise UserError(f"desired capacity {desired} is outside {self.min_size}..{self.max_size}",
                            "ask for a capacity within the group's minimum and maximum size")
        self.desired = desired
        self._wake.set()

    def terminate_instance(self, instance_id: str, decrement_desired: bool, reason: str) -> None:
        """Terminates INSTANCE_ID now; the next pass launches a replacement unless DECREMENT_DESIRED."""
        with self._lock:
            self._member(instance_id)
            if decrement_desired:
                self.set_desired(self.desired - 1)
            self._terminate(instance_id, reason)
        self._wake.set()

    def mark_stopped(self, instance_id: str, stopped: bool) -> None:
        with self._lock:
            self._member(instance_id).stopped = stopped
        self._wake.set()

    def _member(self, instance_id: str) -> Member:
        try:
            return self.members[instance_id]
        except KeyError:
            raise UserError(f"instance {instance_id} is not in group {self.name}", "use one of its instances") from None

    # -- the health loop ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self.reconcile()
            self._wake.wait(self.pass_every)
            self._wake.clear()

    def reconcile(self) -> None:
        """One pass: replace every member found unhealthy, then launch or terminate to desired."""
        for instance_id in list(self.members):
            if self._stop.is_set():
                return
            with self._lock:
                reason = self._why_replace(instance_id) if instance_id in self.members else None
                if reason:
                    self._terminate(instance_id, reason)
        with self._lock:
            extra = sorted(self.members, key=lambda iid: self.members[iid].launched_at)[self.desired:]
            for instance_id in reversed(extra):
                self._terminate(instance_id, f"desired capacity is {self.desired}")
        while len(self.members) < self.desired and not self._stop.is_set() and time.time() >= self._next_launch_at:
            self._launch(reason=f"desired capacity is {self.desired}, {len(self.members)} in the group")

    def _why_replace(self, instance_id: str) -> str | None:
        member = self.members[instance_id]
        if not member.instance.machine.running:
            return "EC2 health check: the instance is terminated (its VM is gone)"
        if member.stopped:
            return "EC2 health check: the instance is stopped"
        target = self.lb.targets.get(instance_id)
        if target is not None and target.state == "unhealthy":
            reason, respect = "ELB health check: unhealthy", True
        elif member.health == "Unhealthy":
            reason, respect = "SetInstanceHealth: Unhealthy", member.respect_grace
        else:
            return None
        age = time.time() - member.launched_at
        if respect and age < self.grace_period:
            if not member.noted_grace:
                member.noted_grace = True
                self._log("InGracePeriod", instance_id, reason=f"{reason} {age:.0f} s into its grace period of "
                          f"{self.grace_period:.0f} s: replaced when it ends unless it recovers")
            return None
        return reason

    def _launch(self, reason: str) -> str | None:
        for attempt in range(1, self.launch_attempts + 1):
            try:
                instance = self.lab.acquire(chain=self.chain, fs=self.fs)
            except (GuestError, UserError, OSError) as exc:
                self._log("LaunchFailed", None, attempt=attempt, error=str(exc).splitlines()[0])
                continue
            instance_id = new_instance_id()
            with self._lock:
                self.members[instance_id] = Member(instance, time.time())
            self.lb.register(instance_id, self.probe_for(instance))
            for watcher, probe_for in self.watchers.values():
                watcher.register(instance_id, probe_for(instance))
            self._log("Launch", instance_id, reason=reason, seconds=round(instance.boot_seconds, 2))
            return instance_id
        self._next_launch_at = time.time() + self.launch_backoff
        self._log("GaveUp", None, reason=f"no instance launched after {self.launch_attempts} attempts; "
                  f"trying again in {self.launch_backoff:.0f} s")
        return None

    def _terminate(self, instance_id: str, reason: str) -> None:
        self.lb.deregister(instance_id)
        for watcher, _ in self.watchers.values():
            watcher.deregister(instance_id)
        member = self.members.pop(instance_id)
        self.lab.release(member.instance, keep=self.lab.keep)
        self._log("Terminate", instance_id, reason=reason)

    def _log(self, action: str, instance_id: str | None, **details) -> None:
        self.events.append({"time": time.time(), "action": action, "instance": instance_id, **details})
