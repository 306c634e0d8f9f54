"""Experiments: boot a healthy instance, break it one way, wait for the kernel's word and
for systemd to finish reacting, then record what everything says.

The outcome is a plain dict (the CLI prints it as JSON), one per experiment.
"""
import json
import time
from dataclasses import dataclass

from . import faults, fs_error, timeline, timeline_svg, timeouts, units
from .errors import GuestTimeout, UserError
from .health_watch import HealthWatch
from .instance import Instance
from .lab import Lab
from .paths import artifacts_dir


@dataclass(frozen=True)
class Experiment:
    name: str
    fault: str | None
    summary: str
    boot: tuple = ()  # Variant changes the instance boots with (a fault present from boot on)

    def parse_params(self, pairs: list[str]) -> dict:
        """KEY=VALUE strings for this experiment's fault, typed; none for an experiment without one."""
        if pairs and not self.fault:
            raise UserError(f"{self.name} takes no parameters", f"drop {', '.join(pairs)}")
        return faults.get(self.fault).parse_params(pairs) if pairs else {}


EXPERIMENTS = {exp.name: exp for exp in [
    Experiment("healthy", None, "no fault: the chain as it boots"),
    *[Experiment(f.name, f.name, f.summary) for f in faults.FAULTS.values()],
    Experiment("mkfs-refuses", None, "the volume holds an old filesystem and the format unit runs mkfs "
               "without -f: formatting fails at boot", boot=(("old_fs", True),)),
    Experiment("mkfs-refuses-docker-on-root", None, "as mkfs-refuses, but docker.service does not require "
               "the mount: Docker writes to the small root disk", boot=(("old_fs", True), ("docker_requires_mount", False))),
]}

# The incident, one row each: (experiment, chain, fs).
INCIDENT_SUITE = [
    ("healthy", "bindsto", "xfs"),
    ("umount", "requires", "xfs"),
    ("umount", "bindsto", "xfs"),
    ("stop-mount", "bindsto", "xfs"),
    ("yank", "bindsto", "xfs"),
    ("unplug", "bindsto", "xfs"),
    ("yank", "bindsto", "ext4"),
]


def get(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise UserError(f"unknown experiment {name!r}", f"use one of: {', '.join(EXPERIMENTS)}") from None


def run(lab: Lab, name: str, chain: str = "bindsto", fs: str = "xfs", units_dir=None,
        health_window: float = 12.0, params: dict | None = None, remedy: str | None = None) -> dict:
    """Runs experiment NAME on a fresh instance. The stock and the deep health checks are
    watched by a load balancer from just before the fault until both have given their
    verdict or HEALTH_WINDOW seconds have passed."""
    experiment = get(name)
    if params and not experiment.fault:
        experiment.parse_params(list(params))  # says it takes none
    started = time.monotonic()
    instance = lab.instance(chain=chain, fs=fs, units_dir=units_dir, remedy=remedy, **dict(experiment.boot))
    watch = HealthWatch(instance).start()
    try:
        outcome = {"experiment": name, "release": lab.release, "chain": chain, "fs": fs, "fault": experiment.fault,
                   "units_dir": str(instance.variant.units_dir), "remedy": remedy}
        fault_started = time.monotonic()
        watch.mark_fault(time.time())
        if params:
            outcome["params"] = params
        if experiment.fault:
            outcome["fault_detail"] = inject_and_wait(instance, experiment.fault, fs, params or {})
        watch.wait(health_window if experiment.fault else 3.0)
        watch.stop()
        outcome["health"] = watch.result()
        outcome["timeline"] = timeline.build(instance, watch.lb)
        outcome["badness"] = timeline.badness(instance)
        outcome.update(observe(instance) if instance.machine.running else terminated(instance))
        now = time.monotonic()
        outcome["start"] = "warm snapshot" if instance.restored else "cold boot"
        outcome["backend"], outcome["guest"] = lab.backend, lab.guest
        outcome["seconds"] = {"boot": round(instance.boot_seconds, 1),
                              "fault_to_verdict": round(now - fault_started, 1),
                              "total": round(now - started, 1)}
        if getattr(instance.machine, "up_seconds", None) is not None:
            outcome["seconds"]["vagrant_up"] = round(instance.machine.up_seconds, 1)
        if lab.keep:
            outcome["artifacts"] = str(artifacts_dir() / instance.run_dir.name)
        # Written only if the run directory is kept (--keep-artifacts, or a failed test).
        health = watch.samples_json(instance.fault_log[-1]["at"] if instance.fault_log else None)
        instance.evidence.update({
            "outcome.json": json.dumps(_jsonable(outcome), indent=2) + "\n",
            "health.json": json.dumps(_jsonable(health), indent=1) + "\n",
        })
        if outcome["timeline"]:  # No fault, no timeline: nothing to draw.
            instance.evidence["timeline.svg"] = timeline_svg.render(
                outcome["timeline"], title=describe(outcome), end=outcome["seconds"]["fault_to_verdict"],
                samples=health["samples"])
        return outcome
    finally:
        watch.stop()
        lab.done_with(instance)


def describe(outcome: dict) -> str:
    """One line naming an experiment: "yank (bindsto, xfs)"."""
    return f"{outcome['experiment']} ({outcome['chain']}, {outcome['fs']})"


def inject_and_wait(instance: Instance, fault_name: str, fs: str, params: dict | None = None) -> dict:
    """Injects the fault, then waits for the kernel's word on it and for systemd to settle."""
    record = instance.inject(fault_name, **(params or {}))
    word = faults.get(fault_name).kernel_word.get(fs)
    detail = {**record["detail"], "kernel_word": None, "settled": None}
    if not instance.machine.running:
        return _jsonable(detail)
    if word:
        try:
            detail["kernel_word"] = instance.wait_for_kernel_message(word, timeout=60)
        except GuestTimeout:
            pass  # The outcome says the kernel stayed silent; that is a finding, not an error.
    try:
        instance.wait_until_settled(timeout=60)
        detail["settled"] = True
    except GuestTimeout:
        detail["settled"] = False  # systemd keeps restarting something: also a finding.
    return _jsonable(detail)


def terminated(instance: Instance) -> dict:
    """What is left to see of an instance whose QEMU is gone: only what the network says."""
    return {"units": {unit: "terminated" for unit in units.CHAIN}, "volume_device": "terminated", "docker_dir_device": None,
            "mount_listed": False, "mount": "", "metadata_status": None, "container_start_ok": False,
            "container_start": {"via": None, "ok": False, "error": "instance terminated"},
            "health_check_lies": False,
            "kernel_events": [event["line"] for event in instance.kernel_events()],
            "kernel_lines": instance.kernel_lines(),
            **instance.guest_versions, "accel": instance.machine.accel, "timeout_scale": timeouts.scale()}


def observe(instance: Instance) -> dict:
    """What systemd, the kernel, the mount table and the health check say right now."""
    seen = {
        "units": instance.unit_states(),
        "volume_device": instance.machine.unit_state("dev-vdb.device"),
        "mount_listed": instance.mount_listed(),
        "mount": instance.mount_options(),
        "metadata_status": instance.metadata_status(),
        # Where Docker's files really go: the volume, or (unmounted) the small root disk.
        "docker_dir_device": instance.machine.run("findmnt -n -o SOURCE --target /var/lib/docker",
                                                  timeout=10).stdout.strip(),
    }
    # Before the container start, which can wake Docker and remount the volume.
    seen.update(fs_error.observe(instance))
    # Last, because it changes what it looks at: with the agent gone, asking Docker wakes
    # docker.socket, which starts docker.service, which pulls the mount back in.
    container = instance.start_container()
    return {
        **seen,
        "container_start_ok": container["ok"],
        "container_start": container,
        "health_check_lies": seen["metadata_status"] == 200 and not container["ok"],
        "kernel_events": [event["line"] for event in instance.kernel_events()],
        "kernel_lines": instance.kernel_lines(),
        **instance.guest_versions,
        "accel": instance.machine.accel,
        "timeout_scale": timeouts.scale(),
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
