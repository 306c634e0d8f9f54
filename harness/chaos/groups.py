"""Named groups of lab instances (an auto scaling group in the story), and the backend that
lets the Chaos Monkey API act on them."""
import secrets
from dataclasses import dataclass, field, replace

from .. import faults
from .autoscaling import AutoScalingGroup
from ..capacity import max_parallel_vms
from ..evidence.health_watch import CHECKS, probe
from ..errors import UserError
from ..lab.instance import Instance
from ..lab.lab import Lab
from ..evidence.loadbalancer import LoadBalancer, preset


def parse_group(spec: str) -> tuple[str, int]:
    """'web:2' -> ('web', 2)."""
    name, _, size = spec.partition(":")
    if not name or not size.isdigit() or int(size) < 1:
        raise UserError(f"bad group {spec!r}", "write NAME:SIZE, e.g. --group web:2")
    return name, int(size)


@dataclass
class Group:
    name: str
    size: int
    chain: str = "bindsto"
    fs: str = "xfs"
    instances: dict[str, Instance] = field(default_factory=dict)

    def start(self, lab: Lab) -> None:
        for _ in range(self.size):
            # EC2-style ids, so that existing Chaos Monkey tooling sees familiar names.
            self.instances[f"i-{secrets.token_hex(8)}"] = lab.acquire(chain=self.chain, fs=self.fs)

    def running(self) -> list[str]:
        return [iid for iid, instance in self.instances.items() if instance.machine.running]


class LabBackend:
    """Applies SimianArmy chaos types to lab instances (see faults.STRATEGIES)."""

    def __init__(self, groups: dict, detach_fault: str = "yank"):
        """GROUPS: name -> a Group or an AutoScalingGroup (anything with .instances, .running())."""
        if detach_fault not in ("yank", "unplug"):
            raise UserError(f"DetachVolumes cannot map to {detach_fault!r}", "use yank or unplug")
        self._groups = groups
        self.strategies = {**faults.STRATEGIES, "DetachVolumes": detach_fault}

    def groups(self) -> dict[str, list[str]]:
        return {name: group.running() for name, group in self._groups.items()}

    def apply(self, group: str, instance_id: str, strategy: str) -> dict:
        instance = self._groups[group].instances[instance_id]
        record = instance.inject(self.strategies[strategy])
        return {"fault": record["fault"], "detail": str(record["detail"])[:500]}


def start_groups(lab: Lab, specs: list[str], chain: str, fs: str, check: str = "deep",
                 lb_scale: float = 1 / 30, grace_period: float = 10.0) -> dict[str, AutoScalingGroup]:
    """One auto scaling group per spec, each behind its own load balancer (ALB thresholds,
    durations times LB_SCALE) health-checking the CHECK ("stock" or "deep") endpoint, so
    that an instance Chaos Monkey breaks is replaced when that check notices."""
    if check not in CHECKS:
        raise UserError(f"unknown health check {check!r}", f"use one of: {', '.join(CHECKS)}")
    sizes: dict[str, int] = {}
    for spec in specs:
        name, size = parse_group(spec)
        if name in sizes:
            raise UserError(f"group {name!r} is given twice", "give each group once")
        sizes[name] = size
    total = sum(sizes.values())
    if total > max_parallel_vms(lab.memory_mb, wanted=total):
        raise UserError(f"{total} instances need more memory than this host has free",
                        "ask for fewer instances (--group NAME:SIZE)")
    groups = {}
    check_config = preset("alb", lb_scale)
    # A scaled-down timeout below 2 s would fail healthy guests that are merely busy (TCG).
    check_config = replace(check_config, timeout=max(check_config.timeout, 2.0))
    for name, size in sizes.items():
        # One target group per check: CHECK's decides replacements, the others only watch
        # (so DescribeTargetHealth can show what each check says of the same instance).
        lbs = {each: LoadBalancer(check_config) for each in CHECKS}
        probes = {each: _prober(*CHECKS[each]) for each in CHECKS}
        watchers = {each: (lbs[each], probes[each]) for each in CHECKS if each != check}
        groups[name] = AutoScalingGroup(lab, name, size, lbs[check], probes[check], chain=chain, fs=fs,
                                        grace_period=grace_period, watchers=watchers, check_name=check).start()
        for lb in lbs.values():
            lb.start()
    return groups


def _prober(port: int, path: str):
    return lambda vm: probe(vm, port, path)
