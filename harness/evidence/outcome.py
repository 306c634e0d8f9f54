"""What one experiment found, typed. `Outcome.to_json()` is what `unitchaos run --json`
prints and what outcome.json holds: the same keys as ever, so the bars and users' scripts
keep working. `Outcome.from_json()` reads it back (the report, older runs), taking a
missing key as "not known"."""
from dataclasses import dataclass, field, fields

from ..images.user_kernel import UserKernel
from ..lab.instance import VERSION_KEYS


@dataclass
class CheckVerdict:
    """One health check under the load balancer: did it notice the fault, after how many
    seconds (its first failed probe), and when the load balancer took the target out."""
    detected: bool = False
    seconds: float | None = None
    lb_seconds: float | None = None
    samples: int | None = None  # answers seen after the fault

    @classmethod
    def from_json(cls, data: dict) -> "CheckVerdict":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_json(self) -> dict:
        return {"detected": self.detected, "seconds": self.seconds, "lb_seconds": self.lb_seconds,
                "samples": self.samples}


@dataclass
class ChainCheck(CheckVerdict):
    """One of a chain file's declared checks: what its load balancer saw (CheckVerdict), what
    it answered at the end (`now`: 200 healthy, else the status or None) and whether it
    LIES: healthy while the workload fails."""
    now: int | None = None
    lies: bool = False

    def to_json(self) -> dict:
        return {**super().to_json(), "now": self.now, "lies": self.lies}


@dataclass
class Health:
    """The stock check (:51678/v1/metadata) and the deep one (:51680/health), and the load
    balancer's settings they were judged by."""
    stock: CheckVerdict | None = None
    deep: CheckVerdict | None = None
    lb: dict = field(default_factory=dict)
    others: dict[str, CheckVerdict] = field(default_factory=dict)  # a chain file's named checks

    @classmethod
    def from_json(cls, data: dict) -> "Health":
        return cls(**{name: CheckVerdict.from_json(data[name]) for name in ("stock", "deep") if name in data},
                   lb=data.get("lb", {}),
                   others={name: CheckVerdict.from_json(value) for name, value in data.items()
                           if name not in ("stock", "deep", "lb") and isinstance(value, dict)})

    def named(self) -> dict[str, CheckVerdict]:
        """Every check by name: a chain's own, then the deep check."""
        out = {"stock": self.stock} if self.stock else {}
        out.update(self.others)
        return {**out, **({"deep": self.deep} if self.deep else {})}

    def to_json(self) -> dict:
        out = {name: verdict.to_json() for name, verdict in self.named().items()}
        return {**out, "lb": self.lb} if self.lb else out


@dataclass
class Seconds:
    """How long the boot (or restore), the fault to the last verdict, and the whole run took,
    and where the run's time went (PHASES, in order; see experiments.PHASES)."""
    boot: float | None = None
    fault_to_verdict: float | None = None
    total: float | None = None
    vagrant_up: float | None = None  # the Vagrant backend's `vagrant up`
    phases: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"boot": self.boot, "fault_to_verdict": self.fault_to_verdict, "total": self.total}
        if self.vagrant_up is not None:
            out["vagrant_up"] = self.vagrant_up
        return {**out, "phases": self.phases} if self.phases else out


class _Plain:
    """A record whose JSON is its fields, under their own names."""

    @classmethod
    def from_json(cls, data: dict):
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class KernelWord(_Plain):
    """What the kernel itself told userspace about the volume's filesystem: FAN_FS_ERROR
    as the guest's deep check received it (fanotify, FAN_REPORT_FID, a filesystem mark).
    Seconds are on the guest's clock (CLOCK_MONOTONIC), so host load does not enter them."""
    supported: bool | None = None       # None: the deep check did not say
    reason: str | None = None           # why not: "not supported by kernel X"
    arrived: bool = False
    error: str | None = None            # "EIO"
    errors_counted: int = 0
    seconds_from_first_failed_io: float | None = None
    deep_unhealthy_after_shutdown_line: float | None = None
    agent_stopping_after_shutdown_line: float | None = None  # systemd's "Stopping ecs-agent.service"


@dataclass
class Healer(_Plain):
    """xfs_healer@<volume>.service (xfsprogs 7): present at all, its state after the fault,
    and whether its journal said anything of the shutdown."""
    present: bool = False
    unit: str | None = None
    state: str | None = None            # "active (running)", or why there is no unit
    result: str | None = None
    exit_status: str | None = None
    saw_shutdown: bool = False
    journal: list[str] = field(default_factory=list)
    start: str | None = None            # xfs_healer_start.service, when no healer unit ran


@dataclass
class FaultEffect(_Plain):
    """Whether the fault took effect, in the fault's own words: "inodes were not exhausted
    after 180000 files" is not a check that missed something, there was nothing to miss."""
    took_effect: bool
    said: str


@dataclass
class Aftermath(_Plain):
    """What happened AFTER the verdict, caused by the lab's own next step: with dockerd
    stopped, the workload as a user runs it (`docker run` through docker.sock) wakes
    docker.socket, which starts docker.service, which pulls the volume's mount back in.
    A fact of its own, never mixed into the state at the verdict."""
    action: str                         # what the lab did
    ok: bool                            # did that container start
    error: str | None = None
    changed: dict[str, str] = field(default_factory=dict)  # unit -> "inactive -> active", from the verdict's state
    remounted: bool = False             # the volume's mount, gone at the verdict, listed again
    systemd: list[dict] = field(default_factory=list)     # systemd's lines after the verdict, in order: {"t", "event"}
    # what held it up, when systemd could only wait for a device that is gone:
    # {"waiting": [units], "device": "dev-vdb.device", "gives_up_after": "1min 30s"}
    held_by: dict | None = None

    def woke(self) -> str:
        """One line: what the action brought back ("" when nothing changed)."""
        back = [unit.removesuffix(".service") for unit, change in self.changed.items()
                if change.endswith("-> active") and not unit.endswith(".mount")]
        said = ", ".join(back) + " active again" if back else ""
        if self.remounted:
            said += (", " if said else "") + "volume mounted again"
        return said


@dataclass
class DeepCatchUp(_Plain):
    """The deep check after the verdict, when the verdict's container test failed while the
    deep check still passed: it tests a container start every `every` seconds, so its
    answer in the health window can predate the fault. Waited for up to every + budget."""
    failed: bool
    seconds: float | None = None        # from the fault to its first failing answer
    reason: str | None = None           # its docker check's reason then
    waited: float | None = None


@dataclass
class Outcome:
    """One experiment's findings: what systemd, the kernel, the mount table and the health
    checks said after the fault, with the versions and timings they depend on."""
    experiment: str
    chain: str
    fs: str
    release: str | None = None
    chain_file: str | None = None       # the chain file's name (ecs-docker: the incident's)
    fault: str | None = None
    units_dir: str | None = None
    params: dict | None = None          # the fault's parameters, when given
    fault_detail: dict | None = None    # what the fault did and the kernel's word on it
    health: Health = field(default_factory=Health)
    timeline: list[dict] = field(default_factory=list)
    badness: list[str] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)
    volume_device: str | None = None
    mount_listed: bool = False
    mount: str = ""
    metadata_status: int | None = None
    docker_dir_device: str | None = None
    container_start_ok: bool = False
    container_start: dict = field(default_factory=dict)
    health_check_lies: bool = False
    kernel_events: list[str] = field(default_factory=list)
    kernel_lines: list[str] = field(default_factory=list)
    # "kernel", "systemd", and on Debian "packages": exact linux-image, systemd, xfsprogs versions
    guest_versions: dict[str, str] = field(default_factory=dict)
    accel: str | None = None
    timeout_scale: float | None = None
    start: str | None = None            # "warm snapshot" or "cold boot"
    backend: str | None = None
    guest: str | None = None
    seconds: Seconds = field(default_factory=Seconds)
    artifacts: str | None = None        # the kept run directory
    # A chain file's: its declared checks by name; the workload (the incident's is the
    # container start); what must_stop units did.
    checks: dict[str, ChainCheck] = field(default_factory=dict)
    workload_ok: bool | None = None
    workload: dict = field(default_factory=dict)
    workload_traffic: dict | None = None
    must_stop: dict[str, str] = field(default_factory=dict)
    must_stop_ok: bool = True
    data_dir_device: str | None = None
    remedy: str | None = None           # the vm/remedies/ unit files laid over the chain's
    fan_fs_error: KernelWord | None = None
    xfs_healer: Healer | None = None
    # A user's kernel package (--kernel FILE.deb) the guest booted; "kernel" says its uname -r.
    user_kernel: UserKernel | None = None
    fault_effect: FaultEffect | None = None   # None: the fault cannot tell (assumed in effect)
    after_verdict: Aftermath | None = None
    deep_after_verdict: DeepCatchUp | None = None

    @property
    def took_effect(self) -> bool:
        """False only when the fault said it did not take effect."""
        return self.fault_effect is None or self.fault_effect.took_effect

    @property
    def is_incident(self) -> bool:
        return self.chain_file in (None, "ecs-docker")

    @property
    def kernel(self) -> str | None:
        return self.guest_versions.get("kernel")

    @property
    def systemd(self) -> str | None:
        return self.guest_versions.get("systemd")

    def describe(self) -> str:
        """One line naming the experiment: "yank (bindsto, xfs)"."""
        return f"{self.experiment} ({self.chain}, {self.fs})"

    def to_json(self) -> dict:
        """The JSON object, keys in the order `unitchaos run --json` has always printed them."""
        out = {"experiment": self.experiment, "release": self.release, "chain_file": self.chain_file,
               "chain": self.chain, "fs": self.fs, "fault": self.fault, "units_dir": self.units_dir}
        if self.params:
            out["params"] = self.params
        if self.fault_detail is not None:
            out["fault_detail"] = self.fault_detail
        out.update({"health": self.health.to_json(), "timeline": self.timeline, "badness": self.badness,
                    "units": self.units, "volume_device": self.volume_device, "mount_listed": self.mount_listed,
                    "mount": self.mount, "metadata_status": self.metadata_status,
                    "docker_dir_device": self.docker_dir_device, "container_start_ok": self.container_start_ok,
                    "container_start": self.container_start, "health_check_lies": self.health_check_lies,
                    "kernel_events": self.kernel_events, "kernel_lines": self.kernel_lines, **self.guest_versions,
                    "accel": self.accel, "timeout_scale": self.timeout_scale, "start": self.start,
                    "backend": self.backend, "guest": self.guest, "seconds": self.seconds.to_json(),
                    "checks": {name: check.to_json() for name, check in self.checks.items()}, "workload_ok": self.workload_ok, "workload": self.workload,
                    "workload_traffic": self.workload_traffic, "must_stop": self.must_stop,
                    "must_stop_ok": self.must_stop_ok, "data_dir_device": self.data_dir_device})
        if not self.is_incident:  # the agent's metadata and container start are the incident's
            for key in ("metadata_status", "docker_dir_device", "container_start_ok", "container_start"):
                out.pop(key)
        if self.remedy is not None:
            out["remedy"] = self.remedy
        if self.fan_fs_error is not None:
            out["fan_fs_error"] = self.fan_fs_error.to_json()
        if self.xfs_healer is not None:
            out["xfs_healer"] = self.xfs_healer.to_json()
        if self.user_kernel is not None:
            out["user_kernel"] = self.user_kernel.to_json()
        for key in ("fault_effect", "after_verdict", "deep_after_verdict"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_json()
        if self.artifacts is not None:
            out["artifacts"] = self.artifacts
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Outcome":
        """An Outcome from its JSON object; keys it lacks keep their defaults."""
        typed = {"fault_effect": FaultEffect, "after_verdict": Aftermath, "deep_after_verdict": DeepCatchUp}
        simple = {f.name for f in fields(cls)} - {"health", "seconds", "guest_versions", "fan_fs_error", "xfs_healer",
                                                  "checks", "user_kernel"} - set(typed)
        return cls(**{name: data[name] for name in simple if name in data},
                   **{name: kind.from_json(data[name]) for name, kind in typed.items() if data.get(name)},
                   checks={name: ChainCheck.from_json(check) for name, check in data.get("checks", {}).items()},
                   fan_fs_error=KernelWord.from_json(data["fan_fs_error"]) if data.get("fan_fs_error") else None,
                   xfs_healer=Healer.from_json(data["xfs_healer"]) if data.get("xfs_healer") else None,
                   user_kernel=UserKernel.from_json(data["user_kernel"]) if data.get("user_kernel") else None,
                   health=Health.from_json(data.get("health", {})),
                   seconds=Seconds(**{k: v for k, v in data.get("seconds", {}).items()
                                      if k in {f.name for f in fields(Seconds)}}),
                   guest_versions={key: data[key] for key in VERSION_KEYS if key in data})
