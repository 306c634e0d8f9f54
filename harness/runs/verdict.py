"""A verdict a team can gate CI on: for each volume fault, did systemd stop every must_stop
unit, did each of the chain's checks notice (and after how many seconds), and did the
workload fail. It fails when a check lies (healthy while the workload fails) or a
must_stop unit keeps running."""
from dataclasses import asdict, dataclass

from . import experiments
from .. import progress
from ..errors import GuestTimeout, UserError
from ..evidence.findings import kernel_summary
from ..evidence.outcome import Outcome
from ..lab.lab import Lab

# Every fault that breaks the volume itself (not the network, the CPU or the root disk).
VOLUME_FAULTS = ["yank", "unplug", "io-error", "pause-io", "io-latency", "xfs-shutdown", "fill-volume",
                 "exhaust-inodes", "umount", "stop-mount"]


@dataclass(frozen=True)
class CheckVerdict:
    name: str
    noticed: bool          # the load balancer gave its verdict of unhealthy
    seconds: float | None  # to the first failing answer
    lb_seconds: float | None
    lies: bool             # healthy at the end while the workload fails


@dataclass(frozen=True)
class FaultVerdict:
    fault: str
    must_stop: dict[str, str]  # unit -> state after the fault
    stopped: bool
    checks: list[CheckVerdict]
    workload_failed: bool
    workload_said: str | None
    workload_seconds: float | None  # to the first failure of the traffic (the workload once a second)
    kernel: str                # the most telling kernel message seen
    versions: dict             # the guest's kernel, systemd and the chain's packages
    error: str | None = None   # the experiment did not finish (a finding too)
    not_in_effect: str | None = None  # the fault's own words when it did not take effect

    @property
    def failed(self) -> bool:
        return self.error is not None or not self.stopped or any(c.lies for c in self.checks)


def check_faults(names: list[str]) -> list[str]:
    names = names or VOLUME_FAULTS
    for name in names:
        if experiments.get(name).fault is None:
            raise UserError(f"{name} is not a fault", f"use some of: {', '.join(VOLUME_FAULTS)}")
    return names


def of(out: Outcome) -> FaultVerdict:
    checks = [CheckVerdict(name, check.detected, check.seconds, check.lb_seconds, check.lies)
              for name, check in out.checks.items()]
    return FaultVerdict(fault=out.experiment, must_stop=out.must_stop, stopped=out.must_stop_ok,
                        checks=checks, workload_failed=not out.workload_ok,
                        workload_said=out.workload.get("error"),
                        workload_seconds=(out.workload_traffic or {}).get("first_failure"),
                        kernel=kernel_summary(out.kernel_events), versions=dict(out.guest_versions),
                        not_in_effect=None if out.took_effect else out.fault_effect.said)


def run(lab: Lab, names: list[str]) -> list[FaultVerdict]:
    verdicts = []
    for name in check_faults(names):
        progress.say(f"verdict: {name} on {lab.chain.name}")
        try:
            verdicts.append(of(experiments.run(lab, name)))
        except GuestTimeout as exc:
            # A fault whose experiment hangs fails the verdict; the other faults still run.
            verdicts.append(FaultVerdict(name, {}, False, [], True, None, None, "-", {}, error=str(exc).splitlines()[0]))
    return verdicts


def as_json(lab: Lab, verdicts: list[FaultVerdict]) -> dict:
    return {"chain": lab.chain.name, "chain_file": str(lab.chain.source), "release": lab.guest_release,
            "failed": any(v.failed for v in verdicts),
            "faults": [{**asdict(v), "failed": v.failed} for v in verdicts],
            **({"user_kernel": lab.kernel.to_json()} if lab.kernel else {})}
