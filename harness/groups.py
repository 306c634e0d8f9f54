"""Named groups of lab instances (an auto scaling group in the story), and the backend that
lets the Chaos Monkey API act on them."""
import secrets
from dataclasses import dataclass, field

from . import faults
from .capacity import max_parallel_vms
from .errors import UserError
from .instance import Instance
from .lab import Lab


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
            self.instances[f"i-{secrets.token_hex(8)}"] = lab.instance(chain=self.chain, fs=self.fs)

    def running(self) -> list[str]:
        return [iid for iid, instance in self.instances.items() if instance.machine.running]


class LabBackend:
    """Applies SimianArmy chaos types to lab instances (see faults.STRATEGIES)."""

    def __init__(self, groups: dict[str, Group], detach_fault: str = "yank"):
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


def start_groups(lab: Lab, specs: list[str], chain: str, fs: str) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for spec in specs:
        name, size = parse_group(spec)
        if name in groups:
            raise UserError(f"group {name!r} is given twice", "give each group once")
        groups[name] = Group(name, size, chain, fs)
    total = sum(group.size for group in groups.values())
    if total > max_parallel_vms(lab.memory_mb, wanted=total):
        raise UserError(f"{total} instances need more memory than this host has free",
                        "ask for fewer instances (--group NAME:SIZE)")
    for group in groups.values():
        group.start(lab)
    return groups
