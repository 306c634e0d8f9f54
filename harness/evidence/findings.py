"""The findings of one experiment in words: what systemd, the kernel and each health check
did. The terminal's table and the HTML report show the same facts, made here once."""
from .. import kernel_log
from .outcome import Outcome

COLUMNS = ["experiment", "chain", "fs", "mount listed", "docker", "ecs-agent", "metadata",
           "container starts", "kernel said", "stock check", "deep check", "seconds"]
# Most telling first (see kernel_log.PATTERNS).
KERNEL_KINDS = ["xfs-shutdown", "ext4-abort-journal", "ext4-remount-ro", "ext4-error", "buffer-io-error",
                "block-io-error", "xfs-unmount"]


def row(out: Outcome) -> list[tuple[str, str | None]]:
    """One cell per column: (text, tone), tone "good", "bad" or None."""
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


def _unit(state: str) -> tuple[str, str | None]:
    return state, None if state == "active" else "warn"


def kernel_summary(lines: list[str]) -> str:
    """The most telling kind of kernel message seen."""
    kinds = {kind for line in lines for kind in kernel_log.classify(line)}
    return next((kind for kind in KERNEL_KINDS if kind in kinds), "-")


def yes(value: bool) -> str:
    return "yes" if value else "no"
