"""The findings of one experiment in words: what systemd, the kernel and each health check
did. The terminal's table and the HTML report show the same facts, made here once.

The incident's chain keeps its own columns (docker, ecs-agent, metadata, containers); any
other chain gets its must_stop units, its workload and one column per declared check."""
from .. import kernel_log
from .outcome import CheckVerdict, Outcome

COLUMNS = ["experiment", "chain", "fs", "mount listed", "docker", "ecs-agent", "metadata",
           "container starts", "kernel said", "stock check", "deep check", "seconds"]
# Most telling first (see kernel_log.PATTERNS).
KERNEL_KINDS = ["xfs-shutdown", "ext4-abort-journal", "ext4-remount-ro", "ext4-error", "buffer-io-error",
                "block-io-error", "xfs-unmount"]


def columns(outcomes: list[Outcome]) -> list[str]:
    """The table's header for OUTCOMES (all of one chain)."""
    if not outcomes or outcomes[0].is_incident:
        return COLUMNS
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


def row(out: Outcome) -> list[tuple[str, str | None]]:
    """One cell per column: (text, tone), tone "good", "bad" or None."""
    if not out.is_incident:
        return _chain_row(out)
    starts = out.container_start_ok
    deep = out.health.deep
    if deep is not None and deep.seconds is not None:
        deep_cell = (f"failed after {deep.seconds:.1f} s", "good" if not starts else "bad")
    else:
        deep_cell = ("passes", "good" if starts else "bad")
    return [
        (out.experiment, None), (out.chain, None), (out.fs, None),
        (yes(out.mount_listed), None),
        _unit(out.units["docker.service"]), _unit(out.units["ecs-agent.service"]),
        (str(out.metadata_status), None),
        (yes(starts), "good" if starts else "bad"),
        (kernel_summary(out.kernel_events), None),
        ("LIES", "bad") if out.health_check_lies else ("truthful", "good"),
        deep_cell,
        (f"{out.seconds.total:.0f}", None),
    ]


def _chain_row(out: Outcome) -> list[tuple[str, str | None]]:
    ok = bool(out.workload_ok)
    stopped = ", ".join(f"{unit.removesuffix('.service')} {state}" for unit, state in out.must_stop.items())
    return [
        (out.experiment, None), (out.chain, None), (out.fs, None),
        (yes(out.mount_listed), None),
        (stopped or "-", "good" if out.must_stop_ok else "bad"),
        _workload(out),
        *[check_cell(check, ok) for check in out.checks.values()],
        (kernel_summary(out.kernel_events), None),
        check_cell(out.health.deep, ok) if out.health.deep else ("-", None),
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
