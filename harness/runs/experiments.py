"""Experiments: boot a healthy instance, break it one way, wait for the kernel's word and
for systemd to finish reacting, then record what everything says.

The outcome is an Outcome (evidence/outcome.py; the CLI prints its JSON), one per experiment.
"""
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .. import faults, timeouts, units
from ..evidence import fs_error, timeline, timeline_svg
from ..errors import GuestTimeout, UserError
from ..evidence.health_watch import HealthWatch
from ..evidence.outcome import Outcome, Seconds
from ..lab.instance import Instance
from ..lab.lab import Lab
from ..paths import artifacts_dir
from ..waiting import wait_until


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


STOPPED = ("inactive", "failed")


def filesystems(name: str, fs: str | None) -> list[str | None]:
    """The filesystems to run experiment NAME on in a matrix: FS if given; else each one its
    fault differs on by design (exhaust-inodes: ext4 and XFS); else the chain's (None)."""
    fault = get(name).fault
    if fs or not fault:
        return [fs]
    return list(faults.get(fault).filesystems) or [None]


def get(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise UserError(f"unknown experiment {name!r}", f"use one of: {', '.join(EXPERIMENTS)}") from None


def run(lab: Lab, name: str, chain: str | None = None, fs: str | None = None, units_dir=None,
        params: dict | None = None, remedy: str | None = None, act=None) -> Outcome:
    """Runs experiment NAME on a fresh instance of the lab's chain (CHAIN and FS override
    the chain file's; REMEDY lays vm/remedies/REMEDY over its units). Each of the chain's
    checks and the deep check are watched by a load balancer from just before the fault
    until each has given its verdict: unhealthy, or never detected once its window
    (health_watch.verdict_window) has passed since the fault took whole effect.

    ACT(instance, on_injected) -> dict, when given, breaks the instance instead of NAME's
    fault (an FIS template's actions); NAME then only names the outcome."""
    experiment = get(name) if act is None else Experiment(name, None, "actions of its own")
    if params and not experiment.fault:
        experiment.parse_params(list(params))  # says it takes none
    if experiment.boot and not lab.chain.has_agent:
        raise UserError(f"{name} is an experiment on the incident's chain",
                        "run it without --chain-file (chains/ecs-docker.toml)")
    started = time.monotonic()
    instance = lab.acquire(chain=chain, fs=fs, units_dir=units_dir, remedy=remedy, **dict(experiment.boot))
    marks = {"start": time.monotonic()}
    chain, fs = instance.variant.chain, instance.variant.fs
    watch = HealthWatch(instance).start()
    try:
        if not instance.restored and not experiment.boot and not lab.chain.has_agent:
            # A warm snapshot was saved only once the workload succeeded; a cold boot has
            # to show it here, or its findings would be about a chain that never worked.
            instance.wait_for_workload()
        outcome = {"experiment": name, "release": lab.guest_release, "chain_file": lab.chain.name, "chain": chain,
                   "fs": fs, "fault": experiment.fault if act is None else name,
                   "units_dir": str(instance.variant.units_dir), "remedy": remedy}
        fault_started = time.monotonic()
        watch.mark_fault(time.time())
        if act is not None:
            outcome["fault_detail"] = act(instance, watch.mark_fault)
        elif experiment.fault:
            outcome["fault_detail"] = inject_and_wait(instance, experiment.fault, fs, params or {},
                                                      on_injected=watch.mark_fault)
        # Over once every check's verdict is final: unhealthy, or never detected a window
        # (health_watch.verdict_window) after the fault took whole effect (systemd settled).
        effect_at = (outcome.get("fault_detail") or {}).get("settled_at") if experiment.fault else None
        marks["fault"] = time.monotonic()
        watch.wait(effect_at, fault=bool(experiment.fault or act))
        watch.stop()
        marks["verdict_window"] = time.monotonic()
        outcome["health"] = watch.result()
        traffic = watch.workload_result()
        if traffic is not None:
            outcome["workload_traffic"] = traffic
        outcome["timeline"] = timeline.build(instance, watch.lb)
        if traffic and traffic["first_failure"] is not None:
            why = next((x["why"] for x in watch.samples_json()["samples"]
                        if x["check"] == "workload" and x["status"] != 200 and (x["t"] or 0) >= 0), None)
            outcome["timeline"].append({"t": traffic["first_failure"], "source": "workload",
                                        "event": f"fails first: {why}"})
            outcome["timeline"].sort(key=lambda e: e["t"])
        outcome["badness"] = timeline.badness(instance)
        verdict_at = time.time()
        observed = observe(instance) if instance.machine.running else terminated(instance)
        marks["observe"] = time.monotonic()
        # One entry per declared check: what the load balancer saw, and what it says now.
        observed["checks"] = {name: {**outcome["health"][name], **seen}
                              for name, seen in observed["checks"].items()}
        outcome.update(observed)
        t_seen = time.time() - (instance.fault_log[-1]["at"] if instance.fault_log else time.time())
        for name, check in observed["checks"].items():
            if check["lies"]:
                outcome["timeline"].append({"t": round(t_seen, 2), "source": f"{name} check",
                                            "event": f"LIES: answers healthy while the workload fails "
                                                     f"({observed['workload']['error']})"})
        t0 = instance.fault_log[-1]["at"] if instance.fault_log else verdict_at
        if instance.chain.has_agent and instance.machine.running:
            _after_the_verdict(instance, outcome, t0, verdict_at)
        marks["after_verdict"] = time.monotonic()
        if experiment.fault and "fault_detail" in outcome:
            effect = faults.get(experiment.fault).took_effect(outcome["fault_detail"])
            if effect is not None:
                outcome["fault_effect"] = {"took_effect": effect[0], "said": effect[1]}
                if not effect[0]:
                    outcome["timeline"].append({"t": round(verdict_at - t0, 2), "source": "fault",
                                                "event": f"did not take effect: {effect[1]}"})
        outcome["timeline"].sort(key=lambda e: e["t"])
        now = time.monotonic()
        # Observed as plain data (a chain's named checks); typed from here on.
        outcome = Outcome.from_json(_jsonable(outcome))
        outcome.start = "warm snapshot" if instance.restored else "cold boot"
        outcome.backend, outcome.guest = lab.backend, lab.guest
        outcome.user_kernel = lab.kernel
        outcome.seconds = Seconds(boot=round(instance.boot_seconds, 1), fault_to_verdict=round(now - fault_started, 1),
                                  total=round(now - started, 1))
        if instance.machine.up_seconds is not None:
            outcome.seconds.vagrant_up = round(instance.machine.up_seconds, 1)
        outcome.seconds.phases = phases(started, marks, outcome.fault_detail or {}, now)
        if lab.keep:
            outcome.artifacts = str(artifacts_dir() / instance.run_dir.name)
        # Written only if the run directory is kept (--keep-artifacts, or a failed test).
        health = watch.samples_json(instance.fault_log[-1]["at"] if instance.fault_log else None)
        instance.evidence.update({
            "outcome.json": json.dumps(_jsonable(outcome.to_json()), indent=2) + "\n",
            "health.json": json.dumps(_jsonable(health), indent=1) + "\n",
        })
        if outcome.timeline:  # No fault, no timeline: nothing to draw.
            instance.evidence["timeline.svg"] = timeline_svg.render(
                outcome.timeline, title=outcome.describe(), end=outcome.seconds.fault_to_verdict,
                samples=health["samples"])
        return outcome
    finally:
        watch.stop()
        lab.release(instance)  # a test's lab keeps it until it knows whether the test failed


def _after_the_verdict(instance: Instance, outcome: dict, t0: float, verdict_at: float) -> None:
    """The incident's chain, after its state at the verdict is recorded: the facts that come
    later, each on the timeline in the order it happened.

    - dockerd stopped: the workload as a user runs it (`docker run` through docker.sock)
      wakes docker.socket, which starts docker.service, which pulls the mount back in
      (stop-mount). That is the lab's own doing, after the verdict: `after_verdict`.
    - containers cannot start by the deep check's own test while the deep check passed:
      its container test runs every 30 s, so its answer may predate the fault. Wait for
      its next one: `deep_after_verdict`."""
    start = outcome["container_start"]
    states = ", ".join(f"{unit.removesuffix('.service')} {state}" for unit, state in outcome["units"].items()
                       if unit in instance.chain.must_stop)
    outcome["timeline"].append({"t": round(verdict_at - t0, 2), "source": "verdict", "event":
                                f"{states}; mount {'listed' if outcome['mount_listed'] else 'not listed'}; "
                                f"containers start: {'yes' if start['ok'] else 'no, ' + str(start.get('error'))}"})
    if start.get("dockerd") is False:
        outcome["after_verdict"] = aftermath(instance, t0, outcome["units"], outcome["mount_listed"])
        outcome["timeline"] += [{"t": line["t"], "source": "after verdict", "event": line["event"]}
                                for line in outcome["after_verdict"]["systemd"]]
    elif not start["ok"] and start.get("budget") and (outcome["health"].get("deep") or {}).get("seconds") is None:
        outcome["deep_after_verdict"] = deep_catch_up(instance, start, t0)
        if outcome["deep_after_verdict"]["failed"]:
            outcome["timeline"].append({"t": outcome["deep_after_verdict"]["seconds"], "source": "deep check",
                                        "event": f"fails (after the window): {outcome['deep_after_verdict']['reason']}"})


def aftermath(instance: Instance, t0: float, states: dict[str, str], listed: bool) -> dict:
    """Runs the workload the way a user does (agent gone: `docker run` through docker.sock)
    and records what it brought back, against the verdict's STATES and mount LISTED: units
    changed, the mount, systemd's lines in order."""
    began = time.time()
    work, held = _workload_unless_held(instance)
    # The chain's own units (and docker.socket, which does the waking); not the container
    # scopes and overlay mounts a container start brings along.
    names = [*instance.chain.units, "docker.socket"]
    lines = [{"t": round(event["t"] + began - t0, 2), "event": event["event"]}
             for event in timeline.systemd_since(instance, began)
             if any(event["event"].startswith(name) or f" {name}" in event["event"] for name in names)]
    now = instance.unit_states()
    error = work.get("error")
    if held:
        gives_up = f"after {held['gives_up_after']}" if held["gives_up_after"] else "never"
        error = (f"it waits: the start of {', '.join(held['waiting'])} waits for {held['device']}, which is gone "
                 f"(systemd gives up {gives_up})")
    return {"action": "docker run via docker.sock" if work.get("via") == "docker" else "a task through the agent",
            "ok": work["ok"], "error": error, "held_by": held,
            "changed": {unit: f"{states.get(unit)} -> {state}" for unit, state in now.items() if states.get(unit) != state},
            "remounted": not listed and instance.mount_listed(), "systemd": lines}


def _workload_unless_held(instance: Instance) -> tuple[dict, dict | None]:
    """The workload, and what holds it up: once systemd's start jobs can only wait for a
    device that is gone (Instance.starts_held_by_a_gone_device), its `docker run` is ended
    there instead of at its budget, since that state ends only at the device's job timeout.
    After a warm bookworm unplug (2026-12-02) the jobs stood unchanged from 5 s on, and the
    30 s until the budget ran out were a third of the experiment."""
    pool = ThreadPoolExecutor(max_workers=1)
    work = pool.submit(instance.workload)
    try:
        held = wait_until(lambda: None if work.done() else instance.starts_held_by_a_gone_device(),
                          instance.container_budget + 20, "the workload to end or wait for a device that is gone",
                          done=lambda found: found is not None or work.done(), interval=1)
        if held is not None:
            instance.end_container_start()
        return work.result(), held
    finally:
        # On Ctrl-C or a timeout, teardown must not wait for the workload's own budget:
        # its command ends when the guest goes.
        pool.shutdown(wait=False)


def deep_catch_up(instance: Instance, start: dict, t0: float) -> dict:
    """Polls the deep check until it fails, for at most its container test's cadence plus
    budget (scaled): the first answer after the fault that includes a container test."""
    began = time.monotonic()
    try:
        status, body = wait_until(lambda: instance.deep_health(timeout=5),
                                  float(start.get("every") or 30) + float(start["budget"]) + 5,
                                  "the deep check to fail", done=lambda answer: answer[0] not in (None, 200),
                                  interval=1)
    except GuestTimeout:
        return {"failed": False, "waited": round(time.monotonic() - began, 1)}
    checks = body.get("checks", {}) if isinstance(body, dict) else {}
    reason = "; ".join(f"{name}: {check.get('reason')}" for name, check in checks.items()
                       if check.get("status") != "ok") or str(body)[:200]
    return {"failed": True, "seconds": round(time.time() - t0, 2), "reason": reason,
            "waited": round(time.monotonic() - began, 1)}


def describe(outcome: dict) -> str:
    """One line naming an experiment: "yank (bindsto, xfs)"."""
    return f"{outcome['experiment']} ({outcome['chain']}, {outcome['fs']})"


# Where an experiment's time goes, in order (Seconds.phases). GUESTS_OWN are the guest's own
# behaviour (the kernel noticing, systemd's jobs): an experiment's floor, not the lab's.
PHASES = {
    "start": "restore from the warm snapshot (or cold boot) to confirmed healthy",
    "fault_to_kernel_word": "the fault injected until the kernel's word on it (the guest's own time)",
    "to_settled": "then until systemd's job queue was empty for good (the guest's own time)",
    "fault_to_settled": "the fault injected until that, where no kernel word is expected (the guest's own time)",
    "quiet_window": "the queue seen empty for 2 s more, so that its reaction is known to be over",
    "fault": "the fault until its effect was whole, where there is nothing to split (none, or an FIS template's actions)",
    "verdict_window": "until every check's verdict is final (health_watch.verdict_window)",
    "observe": "the verdict: the guest's reads, the timeline, the container test",
    "after_verdict": "what came after it (the workload waking Docker, the deep check's next test)",
    "rest": "the harness's own bookkeeping and teardown of the watch",
}
GUESTS_OWN = ("fault_to_kernel_word", "to_settled", "fault_to_settled", "fault")


def phases(started: float, marks: dict[str, float], fault_detail: dict, now: float) -> dict[str, float]:
    """Seconds per PHASES entry from the monotonic MARKS (each phase's end, in order) and the
    fault's wall-clock moments in FAULT_DETAIL (injected at, the kernel's word, settled)."""
    out, previous = {}, started
    for name, end in marks.items():
        out[name] = end - previous
        previous = end
    injected, word, settled, confirmed = (fault_detail.get(key) for key in (
        "injected_at", "kernel_word_at", "settled_at", "settle_confirmed_at"))
    if "fault" in out and injected and settled and confirmed:
        fault = out.pop("fault")
        guests = {"fault_to_kernel_word": word - injected} if word else {}
        guests["to_settled" if word else "fault_to_settled"] = max(settled - (word or injected), 0.0)
        guests["quiet_window"] = confirmed - max(settled, word or injected)
        out = {**{k: v for k, v in out.items() if k == "start"}, **guests,
               **{k: v for k, v in out.items() if k != "start"}}
        out["rest"] = max(fault - (confirmed - injected), 0.0)
    out["rest"] = out.get("rest", 0.0) + max(now - previous, 0.0)
    return {name: round(seconds, 2) for name, seconds in out.items()}


def inject_and_wait(instance: Instance, fault_name: str, fs: str, params: dict | None = None,
                    on_injected=None) -> dict:
    """Injects the fault, then waits for the kernel's word on it and for systemd to settle.
    ON_INJECTED(at) learns the fault's moment: the checks' seconds count from there, not
    from before the uptime read that precedes it (which took seconds on a just-restored
    guest on a loaded host)."""
    record = instance.inject(fault_name, **(params or {}))
    if on_injected is not None:
        on_injected(record["at"])
    word = faults.get(fault_name).kernel_word.get(fs)
    detail = {**record["detail"], "injected_at": record["at"], "kernel_word": None, "settled": None}
    if not instance.machine.running:
        return _jsonable(detail)
    if word:
        try:
            detail["kernel_word"] = instance.wait_for_kernel_message(word, timeout=60)
            detail["kernel_word_at"] = time.time()
        except GuestTimeout:
            pass  # The outcome says the kernel stayed silent; that is a finding, not an error.
    try:
        # When the fault's effect was whole: the load balancer's window counts from here.
        detail["settled_at"] = instance.wait_until_settled(timeout=60)
        detail["settle_confirmed_at"] = time.time()
        detail["settled"] = True
    except GuestTimeout:
        detail["settled"] = False  # systemd keeps restarting something: also a finding.
        detail["settled_at"] = time.time()
    return _jsonable(detail)


def terminated(instance: Instance) -> dict:
    """What is left to see of an instance whose QEMU is gone: only what the network says."""
    gone = {"via": None, "ok": False, "error": "instance terminated"}
    return {"units": {unit: "terminated" for unit in instance.chain.units}, "volume_device": "terminated",
            "data_dir_device": None, "mount_listed": False, "mount": "",
            **({"metadata_status": None, "docker_dir_device": None, "container_start_ok": False,
                "container_start": gone} if instance.chain.has_agent else {}),
            "workload_ok": False, "workload": gone,
            "checks": {check.name: {"now": None, "lies": False} for check in instance.chain.checks},
            "must_stop": {unit: "terminated" for unit in instance.chain.must_stop}, "must_stop_ok": True,
            "health_check_lies": False,
            "kernel_events": [event["line"] for event in instance.kernel_events()],
            "kernel_lines": instance.kernel_lines(),
            **instance.guest_versions, "accel": instance.machine.accel, "timeout_scale": timeouts.scale()}


def observe(instance: Instance) -> dict:
    """What systemd, the kernel, the mount table, the checks and the workload say right now.
    The reads are asked as many at a time as the guest has vCPUs (the guest answers each
    command in a thread of its own; each costs 0.5-1 s of bash and systemctl under TCG, all
    of it vCPU time); the workload comes after them, alone, so that they do not eat into its
    time budget."""
    chain = instance.chain
    device_unit = "dev-" + units.DEVICE.removeprefix("/dev/") + ".device"
    reads = {
        "units": instance.unit_states,
        "volume_device": lambda: instance.machine.unit_state(device_unit),
        "mount_listed": instance.mount_listed,
        "mount": instance.mount_options,
        # Where the service's files really go: the volume, or (unmounted) the small root disk.
        "data_dir_device": lambda: instance.machine.run(f"findmnt -n -o SOURCE --target {chain.mount_point}",
                                                        timeout=10).stdout.strip(),
        **{f"check {check.name}": (lambda check=check: instance.check_answer(check)[0]) for check in chain.checks},
        **({"metadata_status": instance.metadata_status, "fs_error": lambda: fs_error.observe(instance)}
           if chain.has_agent else {}),
    }
    with ThreadPoolExecutor(max_workers=instance.machine.vcpus) as pool:
        futures = {name: pool.submit(read) for name, read in reads.items()}
        answers = {name: future.result() for name, future in futures.items()}
    states = answers["units"]
    seen = {
        **{name: answers[name] for name in ("units", "volume_device", "mount_listed", "mount", "data_dir_device")},
        "must_stop": {unit: states[unit] for unit in chain.must_stop},
        # Stopped means stopped: a unit left "deactivating" still runs (Debian's Redis, whose
        # TimeoutStopSec=0 lets a stop that cannot write its last AOF wait for ever).
        "must_stop_ok": all(states[unit] in STOPPED for unit in chain.must_stop),
    }
    now = {check.name: answers[f"check {check.name}"] for check in chain.checks}
    if chain.has_agent:
        seen["metadata_status"] = answers["metadata_status"]
        seen["docker_dir_device"] = seen["data_dir_device"]
        word, healer = answers["fs_error"]
        seen.update({"fan_fs_error": word.to_json(), "xfs_healer": healer.to_json()})
        # The deep check's own container test (one definition, one budget): through Docker's
        # own socket, so it wakes nothing; the user's way, which can, comes after the verdict.
        work = instance.containers_start()
    else:
        # Last, because it may change what it looks at.
        work = instance.workload()
    # A check lies when it says healthy while the workload fails.
    checks = {name: {"now": status, "lies": status == 200 and not work["ok"]} for name, status in now.items()}
    return {
        **seen,
        "workload_ok": work["ok"],
        "workload": work,
        **({"container_start_ok": work["ok"], "container_start": work} if chain.has_agent else {}),
        "checks": checks,
        "health_check_lies": any(check["lies"] for check in checks.values()),
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
