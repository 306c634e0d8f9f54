"""The findings of one experiment in words: what systemd, the kernel and each health check
did. The terminal's table and the HTML report show the same facts, made here once.

The incident's chain keeps its own columns (docker, ecs-agent, metadata, containers); any
other chain gets its must_stop units, its workload and one column per declared check."""
from .. import kernel_log
from .outcome import CheckVerdict, Outcome

COLUMNS = ["experiment", "chain", "fs", "mount listed", "docker", "ecs-agent", "metadata",
           "container starts", "kernel said", "stock check", "deep check", "seconds"]
# Shown only when some outcome has it (stop-mount, unplug: the lab's docker run woke Docker).
AFTER = "after the verdict"
# A check cell when the fault did not take effect: there was nothing to notice or miss.
NOT_IN_EFFECT = ("fault not in effect", "warn")
# Most telling first (see kernel_log.PATTERNS).
KERNEL_KINDS = ["xfs-shutdown", "ext4-abort-journal", "ext4-remount-ro", "ext4-error", "buffer-io-error",
                "block-io-error", "xfs-unmount"]


def columns(outcomes: list[Outcome]) -> list[str]:
    """The table's header for OUTCOMES (all of one chain)."""
    if not outcomes or outcomes[0].is_incident:
        return COLUMNS[:-1] + [AFTER, COLUMNS[-1]] if any(o.after_verdict for o in outcomes) else COLUMNS
    return (["experiment", "chain", "fs", "mount listed", "must_stop", "workload"] + list(outcomes[0].checks)
            + ["kernel said", "deep check", "seconds"])


def check_cell(check: CheckVerdict, workload_ok: bool) -> tuple[str, str | None]:
    """A declared check (or the deep one): LIES (healthy while the workload fails), or when it noticed."""
    if getattr(check, "lies", False):
        return "LIES", "bad"
    if check.seconds is not None:
        verdict = f", LB {check.lb_seconds:.1f} s" if check.lb_seconds is not None else ""
        return f"failed after {check.seconds:.1f} s{verdict}", "good" if not workload_ok else "warn"
    return "passes", "good" if workload_ok else "bad"


def row(out: Outcome, after: bool = False) -> list[tuple[str, str | None]]:
    """One cell per column: (text, tone), tone "good", "bad" or None; AFTER: with the
    "after the verdict" column (when columns() has it)."""
    if not out.is_incident:
        return _chain_row(out)
    starts = out.container_start_ok
    return [
        _experiment(out), (out.chain, None), (out.fs, None),
        (yes(out.mount_listed), None),
        _unit(out.units["docker.service"]), _unit(out.units["ecs-agent.service"]),
        (str(out.metadata_status), None),
        _starts(out),
        (kernel_summary(out.kernel_events), None),
        ("LIES", "bad") if out.health_check_lies else
        (NOT_IN_EFFECT if not out.took_effect else ("truthful", "good")),
        deep_cell(out) if out.took_effect else NOT_IN_EFFECT,
        *([(after_verdict(out), None if out.after_verdict is None else "warn")] if after else []),
        (f"{out.seconds.total:.0f}", None),
    ]


def _experiment(out: Outcome) -> tuple[str, str | None]:
    if out.took_effect:
        return out.experiment, None
    return f"{out.experiment}: did not take effect ({out.fault_effect.said})", "warn"


def _starts(out: Outcome) -> tuple[str, str | None]:
    """Containers start, by the deep check's own test and budget, at the verdict."""
    starts = out.container_start_ok
    return yes(starts), "good" if starts else "bad"


def deep_cell(out: Outcome) -> tuple[str, str | None]:
    """The deep check: when it failed (in the health window, or after it on its next
    container test), or that it passed; good when it agrees with the container start."""
    starts, deep, later = out.container_start_ok, out.health.deep, out.deep_after_verdict
    if deep is not None and deep.seconds is not None:
        return f"failed after {deep.seconds:.1f} s", "good" if not starts else "bad"
    if later is not None and later.failed:
        # Failing at the first look after the verdict: it failed somewhere before that moment.
        when = (f"failing when asked at {later.seconds:.1f} s" if (later.waited or 0) < 1
                else f"failed after {later.seconds:.1f} s")
        return f"{when} (after the window)", "good" if not starts else "bad"
    if later is not None:
        return f"passes (still {later.waited:.0f} s after the verdict)", "good" if starts else "bad"
    return "passes", "good" if starts else "bad"


def after_verdict(out: Outcome) -> str:
    """What the lab's own step after the verdict did (stop-mount: `docker run` through
    docker.sock woke Docker, which remounted the volume), or "-"."""
    after = out.after_verdict
    if after is None:
        return "-"
    woke = after.woke()
    if after.held_by:
        started = f"no container: it waits for {after.held_by['device']}, which is gone"
    else:
        started = "a container started" if after.ok else f"no container: {str(after.error)[:50]}"
    return f"{after.action}: {woke + '; ' if woke else ''}{started}"


def _chain_row(out: Outcome) -> list[tuple[str, str | None]]:
    ok = bool(out.workload_ok)
    stopped = ", ".join(f"{unit.removesuffix('.service')} {state}" for unit, state in out.must_stop.items())
    return [
        _experiment(out), (out.chain, None), (out.fs, None),
        (yes(out.mount_listed), None),
        (stopped or "-", "good" if out.must_stop_ok else "bad"),
        _workload(out),
        *[check_cell(check, ok) if out.took_effect else NOT_IN_EFFECT for check in out.checks.values()],
        (kernel_summary(out.kernel_events), None),
        (check_cell(out.health.deep, ok) if out.took_effect else NOT_IN_EFFECT) if out.health.deep else ("-", None),
        (f"{out.seconds.total:.0f}", None),
    ]


def _workload(out: Outcome) -> tuple[str, str | None]:
    first = (out.workload_traffic or {}).get("first_failure")
    after = f" (first after {first:.1f} s)" if first is not None else ""
    if out.workload_ok:
        return ("works" + (f", failed once{after}" if after else ""), "good" if not after else "warn")
    return "fails" + after, "bad"


def _unit(state: str) -> tuple[str, str | None]:
    return state, None if state == "active" else "warn"


def kernel_summary(lines: list[str]) -> str:
    """The most telling kind of kernel message seen."""
    kinds = {kind for line in lines for kind in kernel_log.classify(line)}
    return next((kind for kind in KERNEL_KINDS if kind in kinds), "-")


def yes(value: bool) -> str:
    return "yes" if value else "no"
