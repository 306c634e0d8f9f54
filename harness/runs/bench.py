"""`unitchaos bench`: what a warm snapshot buys, measured in one run on this machine.

Figures (medians, with min and max): image lookup from cache, cold boot to healthy,
snapshot restore to healthy and the ratio; each incident experiment's wall time cold and
warm; the whole incident suite cold and warm, serial and in parallel. Each experiment
in a suite run is a separate `unitchaos run --json` process, as a user would run it.
"""
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from ..images import image
from .. import progress, units
from ..lab import snapshots
from ..capacity import max_parallel_vms
from .experiments import GUESTS_OWN, INCIDENT_SUITE
from ..errors import GuestError, UserError
from ..lab.lab import Lab

# The lead over booting cold for every experiment that the project aims at (issue #16).
GOALS = {"restore_speedup": 60, "suite_speedup": 8}


def summary(samples: list[float]) -> dict:
    return {"median": round(statistics.median(samples), 3), "min": round(min(samples), 3),
            "max": round(max(samples), 3), "runs": len(samples)}


def measure_image_cached(runs: int) -> list[float]:
    image.ensure_image()
    samples = []
    for _ in range(runs):
        started = time.monotonic()
        image.ensure_image()
        samples.append(time.monotonic() - started)
    return samples


def measure_start(lab: Lab, cold: bool, runs: int) -> tuple[list[float], list[dict[str, float]]]:
    """Seconds from nothing running to healthy, and where each start's time went.
    Cold: booted, units active, metadata 200, commands answered (require_healthy); the
    split is the guest's own boot (boot_split). Warm: restored and confirmed healthy by the
    load balancer's probes over the forwarded ports (Instance.restore); the split is the
    restore's (disks, QEMU launch, incoming, clock, first answer)."""
    if not cold:
        snapshots.ensure(lab, units.Variant())  # Made once, outside the measurement.
    samples, splits = [], []
    for _ in range(runs):
        started = time.monotonic()
        instance = lab.acquire(cold=cold)
        if cold:
            instance.require_healthy()
        samples.append(time.monotonic() - started)
        # Asked after the clock stopped: these guest commands are no part of the figure.
        splits.append(boot_split(instance, samples[-1]) if cold else dict(instance.restore_split))
        lab.release(instance, keep=lab.keep)
    return samples, splits


# The guest's own record of its boot, in microseconds since the kernel started (CLOCK_MONOTONIC):
# the manager's UserspaceTimestampMonotonic is when systemd began (kernel and any initramfs
# before it), each unit's InactiveExit/ActiveEnter when it began and finished starting.
# unitchaos-ready is a oneshot: it never enters "active" (ActiveEnter stays 0; reading it
# made the split fall back to multi-user.target, which the agent reaches as soon as its
# `docker run` is forked, and so put the agent's 24 s to its first answer "outside the
# guest"). Its InactiveEnter is when it saw metadata 200 and printed the line the host waits for.
BOOT_UNITS = ("basic.target", "containerd.service", "docker.service", "ecs-agent.service", "unitchaos-ready.service")
BOOT_SPLIT_COMMAND = ("systemctl show -p UserspaceTimestampMonotonic; echo; systemctl show -p Id "
                      "-p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic "
                      "-p InactiveEnterTimestampMonotonic " + " ".join(BOOT_UNITS))


def boot_split(instance, total: float) -> dict[str, float]:
    """Where a cold boot's TOTAL seconds (host side, QEMU start to healthy) went, from the guest."""
    return parse_boot_split(instance.machine.succeed(BOOT_SPLIT_COMMAND, timeout=30), total)


def parse_boot_split(text: str, total: float) -> dict[str, float]:
    """kernel: kernel start to systemd (the initramfs included); systemd_to_basic: systemd
    to basic.target (the OS's own units, before anything of the chain's but the volume);
    containerd, docker: each service's own start; agent_start_pre: ecs-agent.service's
    ExecStartPre (`docker rm`, its container image load); agent_answer: the agent's
    `docker run` forked until unitchaos-ready saw metadata 200; *_at: moments since kernel
    start; outside_guest: the rest of TOTAL (QEMU and firmware before the kernel, then the
    harness seeing the ready line and asking its checks). Meaningful only while the guest's
    clock keeps up with the host's: on a busy host it falls behind."""
    blocks, current = {}, {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                blocks[current.get("Id", "manager")] = current
            current = {}
            continue
        key, _, value = line.partition("=")
        current[key] = value
    manager = next(block for name, block in blocks.items() if "UserspaceTimestampMonotonic" in block)

    def us(name: str, key: str) -> float:
        return int(blocks.get(name, {}).get(key) or 0) / 1e6

    def took(name: str) -> float:
        return us(name, "ActiveEnterTimestampMonotonic") - us(name, "InactiveExitTimestampMonotonic")
    userspace = int(manager["UserspaceTimestampMonotonic"]) / 1e6
    agent_active = us("ecs-agent.service", "ActiveEnterTimestampMonotonic")
    ready = us("unitchaos-ready.service", "InactiveEnterTimestampMonotonic")
    split = {"kernel": userspace,
             "systemd_to_basic": us("basic.target", "ActiveEnterTimestampMonotonic") - userspace,
             "containerd": took("containerd.service"),
             "docker": took("docker.service"),
             "agent_start_pre": took("ecs-agent.service"),
             "agent_answer": ready - agent_active,
             "docker_active_at": us("docker.service", "ActiveEnterTimestampMonotonic"),
             "agent_active_at": agent_active,
             "guest_ready_at": ready}
    split["outside_guest"] = total - ready
    return {name: round(max(seconds, 0.0), 3) for name, seconds in split.items()}


def split_medians(splits: list[dict[str, float]]) -> dict[str, float]:
    """Each phase's median over the runs."""
    return {name: round(statistics.median(s[name] for s in splits if name in s), 3)
            for name in dict.fromkeys(name for s in splits for name in s)}


class SuiteRun(NamedTuple):
    """One run of the whole incident suite."""
    wall: float                   # the suite's wall time
    times: dict[str, float]       # each experiment's own wall time
    failed: dict[str, str]        # why an experiment failed (a figure with a failure in it is reported, not dropped)
    phases: dict[str, dict]       # where each experiment's time went inside its run (seconds.phases)


def run_suite(cold: bool, workers: int) -> SuiteRun:
    """The whole incident suite, each experiment a `unitchaos run --json` of its own."""
    def one(row):
        name, chain, fs = row
        argv = [sys.executable, "-m", "harness", "run", name, "--chain", chain, "--fs", fs, "--json"]
        started = time.monotonic()
        done = subprocess.run(argv + (["--cold"] if cold else []), capture_output=True, text=True)
        error, phases = None, {}
        if done.returncode != 0:
            error = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:300]
        try:
            phases = json.loads(done.stdout).get("seconds", {}).get("phases", {})
        except (ValueError, AttributeError):
            pass  # No outcome printed: the error above says why.
        return f"{name}/{chain}/{fs}", time.monotonic() - started, error, phases

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, INCIDENT_SUITE))
    return SuiteRun(time.monotonic() - started, {name: seconds for name, seconds, _, _ in results},
                    {name: error for name, _, error, _ in results if error},
                    {name: phases for name, _, _, phases in results if phases})


def run(runs: int = 3, workers: int | None = None, suites: bool = True, cold_suites: bool = True) -> dict:
    """Every figure, in one run. COLD_SUITES=False: the cold boot per experiment is computed
    (cold boot to healthy + the warm experiment - restore to healthy, all from this run)
    instead of measured by running the whole suite cold, serial and parallel (half an hour
    of a 2-core host's time)."""
    workers = workers or max_parallel_vms()
    figures: dict = {"machine": _machine(), "goals": GOALS}
    with progress.step("bench: image lookup from cache"):
        figures["image_cached_s"] = summary(measure_image_cached(max(runs, 5)))
    with Lab() as lab:
        with progress.step(f"bench: restore from snapshot to healthy x{max(runs, 5)}"):
            restore, restore_splits = measure_start(lab, cold=False, runs=max(runs, 5))
        with progress.step(f"bench: cold boot to healthy x{runs}"):
            cold, cold_splits = measure_start(lab, cold=True, runs=runs)
    figures["cold_boot"] = summary(cold)
    figures["cold_boot_split_s"] = split_medians(cold_splits)
    figures["restore"] = summary(restore)
    figures["restore_split_s"] = split_medians(restore_splits)
    figures["cold_boot_s"] = figures["cold_boot"]["median"]
    figures["restore_s"] = figures["restore"]["median"]
    figures["restore_speedup"] = round(figures["cold_boot_s"] / figures["restore_s"], 1)
    if not suites:
        return figures
    with progress.step("bench: warm snapshots of the incident suite's variants"), Lab() as lab:
        # Made here, so that the warm suite measures restores, not the first cold boots.
        for chain, fs in dict.fromkeys((chain, fs) for _, chain, fs in INCIDENT_SUITE):
            snapshots.ensure(lab, units.Variant(chain=chain, fs=fs))
    suite_runs = {}
    for cold_run in (False, True) if cold_suites else (False,):
        for parallel in (1, workers):
            label = f"{'cold' if cold_run else 'warm'}_{'serial' if parallel == 1 else f'parallel_{parallel}'}"
            with progress.step(f"bench: incident suite, {label}"):
                suite_runs[label] = run_suite(cold_run, parallel)
    figures["suite_s"] = {label: round(suite.wall, 1) for label, suite in suite_runs.items()}
    figures["suite_failures"] = {label: suite.failed for label, suite in suite_runs.items() if suite.failed}
    figures.update(peers_way(figures, {label: suite.times for label, suite in suite_runs.items()}, workers))
    # Where each warm experiment's time went: the floor of one whose time is mostly the
    # guest's own (the kernel noticing, systemd's stop jobs) is the guest's, not the lab's.
    figures["warm_phases_s"] = suite_runs["warm_serial"].phases
    return figures


def peers_way(figures: dict, times: dict[str, dict[str, float]], workers: int) -> dict:
    """The lead over booting cold for every experiment, as the peers do: each experiment's
    "cold" (measured by each `run --cold` of the cold serial suite; without that suite,
    computed as cold boot to healthy + the warm experiment - restore to healthy) next to its
    "warm", and the suite's speedup."""
    warm = times["warm_serial"]
    if "cold_serial" in times:
        cold, how = times["cold_serial"], "measured: each experiment's own `run --cold`"
        cold_suite = figures["suite_s"]["cold_serial"]
    else:
        cold = {name: seconds + figures["cold_boot_s"] - figures["restore_s"] for name, seconds in warm.items()}
        how = "computed: cold boot to healthy + warm experiment - restore to healthy (medians of this run)"
        cold_suite = round(sum(cold.values()), 1)
    out = {"cold_per_experiment": how, "experiment_s": {
        name: {"cold": round(cold[name], 1), "warm": round(warm[name], 1), "speedup": round(cold[name] / warm[name], 1)}
        for name in warm}}
    out["suite_speedup_warm_vs_cold_serial"] = round(cold_suite / figures["suite_s"]["warm_serial"], 1)
    if "cold_serial" not in times:
        out["suite_cold_serial_computed_s"] = cold_suite
    if workers > 1 and f"warm_parallel_{workers}" in figures["suite_s"]:
        out[f"suite_speedup_warm_parallel_{workers}_vs_cold_serial"] = round(
            cold_suite / figures["suite_s"][f"warm_parallel_{workers}"], 1)
    return out


# Started in every guest, used by nothing of the lab's: logins are root's over SSH or the
# command port, the console is read and never typed into, the clock is set by the host.
UNUSED_UNITS = ("systemd-logind.service", "serial-getty@ttyS0.service", "systemd-pstore.service",
                "systemd-random-seed.service", "systemd-update-utmp.service",
                "systemd-update-utmp-runlevel.service", "systemd-network-generator.service",
                "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "dev-hugepages.mount")
MASK_UNUSED = " ".join(f"systemd.mask={unit}" for unit in UNUSED_UNITS)

# Cold-boot options measured by `bench --survey`: each changes one thing from the default,
# but those that stack small wins to see whether they add up.
SURVEY = {
    "default (-smp 2, -cpu qemu64, tcg multi-thread)": {},
    "-smp 1": {"cpus": 1},
    "tcg single-thread": {"tcg_threads": "single"},
    "-cpu max": {"cpu_model": "max"},
    # Plain `quiet` hides the notice-level line the harness waits for: keep notices.
    "kernel: quiet loglevel=5": {"kernel_args": "+quiet loglevel=5"},
    "kernel: mitigations=off": {"kernel_args": "+mitigations=off"},
    "kernel: systemd.show_status=0": {"kernel_args": "+systemd.show_status=0"},
    "kernel: mitigations=off systemd.show_status=0": {"kernel_args": "+mitigations=off systemd.show_status=0"},
    # The volume's mount is on the way to basic.target, and loading the xfs module at that
    # moment took 3 s of it (2026-12-02, cold bookworm boot): load it early, beside udev.
    "kernel: modules-load=xfs": {"kernel_args": "+modules-load=xfs"},
    # Units the lab never uses, each a process TCG translates while the chain starts.
    # Neither bought anything, alone or together (2026-12-02 00:38-00:47: 1.03-1.04x).
    "kernel: mask unused units": {"kernel_args": f"+{MASK_UNUSED}"},
    "kernel: modules-load=xfs, mask unused units": {"kernel_args": f"+modules-load=xfs {MASK_UNUSED}"},
    # Unit options (drop-ins over the chain's units; the image is not touched). The deep check
    # starts with the network and probes every second from then on (an io probe process each
    # time); the agent's image load and container start share the vCPUs with it.
    "units: deep check after the agent": {"dropins": {
        "unitchaos-health.service.d/90-survey.conf": "[Unit]\nAfter=ecs-agent.service\n"}},
    "units: deep check probes every 5 s": {"dropins": {
        "unitchaos-health.service.d/90-survey.conf": "[Service]\nEnvironment=UNITCHAOS_HEALTH_INTERVAL=5\n"}},
}


def survey_options(only: list[str] | None = None) -> dict[str, dict]:
    """The SURVEY options whose label contains one of ONLY (all without), always with the
    default first: every figure is a ratio to it."""
    default = next(iter(SURVEY))
    chosen = {label: changes for label, changes in SURVEY.items()
              if label == default or not only or any(word in label for word in only)}
    if only and len(chosen) == 1:
        raise UserError(f"no survey option matches {', '.join(only)}",
                        f"choose among: {'; '.join(list(SURVEY)[1:])}")
    return chosen


def survey(runs: int = 3, only: list[str] | None = None) -> dict:
    """Cold boot to healthy under each SURVEY option, RUNS times each, interleaved so that
    a change in the host's load touches every option alike."""
    options = survey_options(only)
    samples: dict[str, list[float]] = {label: [] for label in options}
    failures: dict[str, str] = {}
    with Lab() as lab:
        for round_ in range(runs):
            for label, changes in options.items():
                with progress.step(f"bench survey {round_ + 1}/{runs}: {label}"):
                    instance = lab.acquire(variant=units.Variant(), started=False, label="survey")
                    for key, value in changes.items():
                        if key == "dropins":
                            instance.lay_over(value)
                            continue
                        if key == "kernel_args":
                            value = f"{instance.machine.kernel_args} {value.lstrip('+')}"
                        setattr(instance.machine, key, value)
                    started = time.monotonic()
                    try:
                        instance.boot()
                        instance.require_healthy()
                        samples[label].append(time.monotonic() - started)
                    except (GuestError, UserError) as exc:
                        failures[label] = str(exc).splitlines()[0][:200]  # an option that breaks boot is a finding
                    finally:
                        lab.release(instance, keep=lab.keep)
    base = statistics.median(samples[next(iter(options))])
    return {"machine": _machine(), "failed": failures, "cold_boot_by_option": {
        label: {**summary(values), "vs_default": round(statistics.median(values) / base, 3)}
        for label, values in samples.items() if values}}


def render_survey(figures: dict) -> str:
    m = figures["machine"]
    out = [f"unitchaos bench --survey on {m['cores']} cores, {m['qemu']}, accel {m['accel']}: cold boot to healthy"]
    for label, s in figures["cold_boot_by_option"].items():
        out.append(f"  {label:<46} {s['median']:>7.2f} s (min {s['min']:.2f}, max {s['max']:.2f}, "
                   f"{s['runs']} runs)  {s['vs_default']:.2f}x default")
    for label, reason in figures.get("failed", {}).items():
        out.append(f"  {label:<46} failed: {reason}")
    return "\n".join(out)


def _machine() -> dict:
    import os
    from ..machines import accel
    built = image.ensure_image()
    return {"cores": os.cpu_count(), "qemu": accel.qemu_version(), "accel": accel.choose(built.kernel),
            "kernel": built.manifest.get("kernel"), "systemd": built.manifest.get("systemd")}


def render(figures: dict) -> str:
    def line(label, s):
        return f"  {label:<34} {s['median']:>8.2f} s   (min {s['min']:.2f}, max {s['max']:.2f}, {s['runs']} runs)"
    m = figures["machine"]
    out = [f"unitchaos bench on {m['cores']} cores, {m['qemu']}, accel {m['accel']}, "
           f"guest kernel {m['kernel']}",
           line("image lookup from cache", figures["image_cached_s"]),
           line("cold boot to healthy", figures["cold_boot"]),
           line("snapshot restore to healthy", figures["restore"]),
           f"  {'restore speedup (cold / restore)':<34} {figures['restore_speedup']:>8.1f} x   "
           f"(issue #16's goal: {GOALS['restore_speedup']:g} x)"]
    if figures.get("cold_boot_split_s"):
        out.append("  cold boot split (medians; the guest's systemd timestamps, from kernel start):")
        out += [f"    {name:<32} {seconds:>6.2f} s" for name, seconds in figures["cold_boot_split_s"].items()]
    if figures.get("restore_split_s"):
        out.append("  restore split (medians; clock is set alongside the first answer):")
        out += [f"    {name:<32} {seconds:>6.3f} s" for name, seconds in figures["restore_split_s"].items()]
    if "suite_s" not in figures:
        return "\n".join(out)
    out.append("  incident experiments, wall time: cold boot per experiment / warm / speedup")
    if figures.get("cold_per_experiment"):
        out.append(f"    (cold {figures['cold_per_experiment']})")
    for name, pair in figures["experiment_s"].items():
        speedup = f"   {pair['speedup']:>5.1f} x" if "speedup" in pair else ""
        out.append(f"    {name:<32} {pair['cold']:>6.1f} s / {pair['warm']:>5.1f} s{speedup}")
    if figures.get("warm_phases_s"):
        out.append("  where each warm experiment's time went (experiments.PHASES; * the guest's own):")
        for name, phases in figures["warm_phases_s"].items():
            out.append(f"    {name:<32} " + ", ".join(
                f"{phase}{'*' if phase in GUESTS_OWN else ''} {seconds:.1f}" for phase, seconds in phases.items()))
    out.append("  whole incident suite:")
    for label, seconds in figures["suite_s"].items():
        failed = figures.get("suite_failures", {}).get(label, {})
        out.append(f"    {label:<32} {seconds:>6.1f} s" + (f"   ({len(failed)} failed, below)" if failed else ""))
    for label, failed in figures.get("suite_failures", {}).items():
        out += [f"    failed in {label}: {name}: {error}" for name, error in failed.items()]
    if "suite_cold_serial_computed_s" in figures:
        out.append(f"    {'cold_serial (computed)':<32} {figures['suite_cold_serial_computed_s']:>6.1f} s")
    out.append(f"  {'suite speedup (cold / warm serial)':<34} {figures['suite_speedup_warm_vs_cold_serial']:>8.1f} x   "
               f"(goal: {GOALS['suite_speedup']:g} x)")
    for key, value in figures.items():
        if key.startswith("suite_speedup_warm_parallel"):
            workers = key.split("_")[4]
            out.append(f"  {f'suite speedup (cold serial / warm x{workers})':<34} {value:>8.1f} x")
    return "\n".join(out)
