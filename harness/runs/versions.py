"""The version matrix: the same experiments on each guest release (kernel and systemd),
and where their outcomes disagree.

Each cell reduces an outcome to what systemd, the kernel and the health checks did, in
words that can be compared across releases; timings and versions are shown but never
count as a disagreement. Run several times, a cell keeps every answer it got: what varies
between runs of one release (the agent ending failed or inactive as Docker stops, say)
is run-to-run variation, and releases disagree only where their answers never meet.
"""
import json
import statistics
from pathlib import Path

from . import experiments
from ..images import image, user_kernel
from .. import kernel_log, progress
from ..errors import ArchiveBroken, GuestError, UserError
from ..evidence.outcome import Healer, KernelWord, Outcome
from ..lab.lab import Lab

# What a cell compares, in the order it is shown.
ASPECTS = ("systemd", "kernel", "checks", "kernel word", "healer", "remedy")
# Kernel line kinds from most to least telling: a cell names all it saw, in this order.
KIND_ORDER = ["xfs-shutdown", "xfs-device-removed", "xfs-log-io-error", "xfs-metadata-io-error",
              "xfs-please-unmount", "ext4-abort-journal", "ext4-remount-ro", "ext4-error", "jbd2-error",
              "buffer-io-error", "lost-page-write", "block-io-error", "hung-task", "xfs-unmount"]


def default_rows() -> list[tuple[str, str, str]]:
    return list(experiments.INCIDENT_SUITE)


def behaviour(outcome: Outcome) -> dict[str, str]:
    """What systemd, the kernel and the checks did in OUTCOME, as comparable words."""
    units = outcome.units
    systemd = (f"docker {units['docker.service']}, agent {units['ecs-agent.service']}, "
               f"mount {'listed' if outcome.mount_listed else 'gone'}, vdb {outcome.volume_device}")
    kinds = {kind for line in outcome.kernel_events for kind in kernel_log.classify(line)}
    kernel = ", ".join(kind for kind in KIND_ORDER if kind in kinds) or "silent"
    deep = outcome.health.deep
    checks = (f"metadata {outcome.metadata_status}, containers {'start' if outcome.container_start_ok else 'fail'}, "
              f"stock {'LIES' if outcome.health_check_lies else 'truthful'}, "
              f"deep {'fails' if deep and deep.detected else 'passes'}")
    return {"systemd": systemd, "kernel": kernel, "checks": checks,
            "kernel word": fs_error_words(outcome.fan_fs_error), "healer": healer_words(outcome.xfs_healer),
            "remedy": remedy_words(outcome)}


def fs_error_words(seen: KernelWord | None) -> str:
    """FAN_FS_ERROR in comparable words: which error arrived, none, or why it cannot."""
    if seen is None or seen.supported is None:
        return "not measured"
    if not seen.supported:
        return seen.reason or "not supported"
    return f"FAN_FS_ERROR {seen.error}" if seen.arrived else "no FAN_FS_ERROR"


def remedy_words(outcome: Outcome) -> str:
    """What a remedy (vm/remedies) came to: did systemd stop the agent with it in place?
    The agent's end state only: an unplug stops it without any remedy (BindsTo= on the
    device), so a row with a remedy is read next to the same row without."""
    if outcome.remedy is None:
        return "none"
    agent = outcome.units.get("ecs-agent.service")
    if agent == "active":
        return f"{outcome.remedy}: agent still active (systemd did not stop it)"
    return f"{outcome.remedy}: systemd stopped the agent ({agent})"


def healer_words(seen: Healer | None) -> str:
    if seen is None:
        return "not measured"
    if not seen.present or not seen.unit or seen.state == "never started for the volume":
        return seen.state or "not measured"
    saw = "saw the shutdown" if seen.saw_shutdown else "said nothing of it"
    return f"{seen.state}, {saw}"


def run(rows: list[tuple[str, str, str]], releases: list[str], cold: bool = False, units_dir=None,
        runs: int = 1, kernel: user_kernel.UserKernel | None = None) -> dict:
    """Runs every ROW (experiment, chain, fs[, remedy]) RUNS times on every release (with the
    unit files in UNITS_DIR, default vm/units; a remedy from vm/remedies laid over them);
    returns the matrix. KERNEL: a user's kernel package booted on every release's userspace."""
    for name, *_ in rows:
        experiments.get(name)
    for release in releases:
        image.check_release(release)
    if not rows or not releases:
        raise UserError("nothing to compare", "name at least one experiment and one release")
    if runs < 1:
        raise UserError(f"--runs {runs} is not a number of runs", "use --runs 1 or more")
    # Every image first: a release that cannot be built fails before any VM runs, except a
    # moving one (sid) the archive cannot install today: its column says so, the rest runs.
    images, unbuilt = {}, {}
    for release in releases:
        try:
            images[release] = (user_kernel.ensure_image(release, kernel) if kernel else image.ensure_image(release))
        except ArchiveBroken as exc:
            progress.say(f"versions: {exc.problem}")
            unbuilt[release] = exc.problem
    outcomes: dict[str, dict[tuple, list[Outcome | dict]]] = {}
    for release in releases:
        if release in unbuilt:
            outcomes[release] = {row: [{"error": f"not run: {unbuilt[release]}"}] for row in rows}
            continue
        with Lab(release=release, cold=cold or None, kernel=kernel) as lab:
            for row in rows:
                for attempt in range(1, runs + 1):
                    of = f" (run {attempt} of {runs})" if runs > 1 else ""
                    progress.say(f"versions: {' '.join(row)} on {release}{of}")
                    try:
                        outcome = experiments.run(lab, *row[:3], units_dir, remedy=_remedy(row))
                    except (GuestError, UserError) as exc:
                        # A release whose guest hangs or never comes up healthy is a finding
                        # (the arguments were checked above); the rest of the matrix still runs.
                        outcome = {"error": str(exc).splitlines()[0]}
                    outcomes.setdefault(release, {}).setdefault(row, []).append(outcome)
    result = matrix(rows, releases, outcomes, {r: images[r].manifest for r in images})
    result["runs"] = runs
    return result


def matrix(rows, releases, outcomes: dict[str, dict[tuple, Outcome | dict | list]], manifests: dict[str, dict]) -> dict:
    """The matrix from outcomes already run (one outcome, or a list of runs, per release
    and row; an outcome as an Outcome or its JSON, a run that failed as {"error": why}):
    cells, and which aspects disagree per row."""
    result = {"releases": {}, "rows": []}
    for release in releases:
        ran = [out for runs in outcomes.get(release, {}).values() for out in _runs(runs)
               if isinstance(out, Outcome) and out.kernel]
        manifest = manifests.get(release, {})
        result["releases"][release] = {
            "kernel": ran[0].kernel if ran else manifest.get("kernel"),
            "systemd": ran[0].systemd if ran else manifest.get("systemd"),
            "image": manifest.get("key"),
            "packages": manifest.get("package_versions"),
            "archive_dates": manifest.get("archive_dates"),
            **({"user_kernel": manifest["user_kernel"]} if "user_kernel" in manifest else {}),
        }
    for row in rows:
        cells = {release: _cell(_runs(outcomes.get(release, {}).get(tuple(row)))) for release in releases}
        name, chain, fs = row[:3]
        result["rows"].append({"experiment": name, "chain": chain, "fs": fs, "remedy": _remedy(row), "cells": cells,
                               "disagree": _disagree(cells)})
    return result


def _remedy(row) -> str | None:
    return row[3] if len(row) > 3 else None


def with_remedies(rows, remedies: list[str]) -> list[tuple]:
    """Each row without a remedy, then with each of REMEDIES: outcome x kernel x remedy."""
    return [(*row[:3], remedy) for row in rows for remedy in [None, *remedies]]


def _runs(outcomes) -> list[Outcome | dict]:
    """The runs of one cell: Outcomes, and {"error": why} for runs that failed."""
    if outcomes is None:
        return []
    runs = outcomes if isinstance(outcomes, list) else [outcomes]
    return [out if isinstance(out, Outcome) or "error" in out else Outcome.from_json(out) for out in runs]


def _cell(runs: list[Outcome | dict]) -> dict:
    finished = [out for out in runs if isinstance(out, Outcome)]
    errors = [out["error"] for out in runs if not isinstance(out, Outcome)]
    if not finished:
        return {"error": errors[0] if errors else "not run"}
    said = [behaviour(out) for out in finished]
    observed = {aspect: list(dict.fromkeys(words[aspect] for words in said)) for aspect in ASPECTS}
    seconds = [out.health.deep.seconds for out in finished if out.health.deep and out.health.deep.seconds is not None]
    cell = {aspect: values[0] if len(values) == 1 else "varies: " + " | ".join(values)
            for aspect, values in observed.items()}
    cell.update({"kernel_version": finished[0].kernel, "systemd_version": finished[0].systemd,
                 "deep_seconds": statistics.median(seconds) if seconds else None,
                 "package_versions": finished[0].guest_versions.get("packages"),
                 "fs_error_seconds": _median(out.fan_fs_error.seconds_from_first_failed_io
                                             for out in finished if out.fan_fs_error),
                 "deep_after_shutdown_line": _median(out.fan_fs_error.deep_unhealthy_after_shutdown_line
                                                     for out in finished if out.fan_fs_error),
                 "agent_stopping_after_shutdown_line": _median(out.fan_fs_error.agent_stopping_after_shutdown_line
                                                               for out in finished if out.fan_fs_error),
                 "kernel_events": _union(out.kernel_events for out in finished),
                 "kernel_lines": _union(out.kernel_lines for out in finished)})
    if len(runs) > 1:
        cell.update({"runs": len(runs), "observed": observed,
                     "varies": [aspect for aspect, values in observed.items() if len(values) > 1]})
    if errors:
        cell["errors"] = errors
    return cell


def _median(values) -> float | None:
    """Median of the runs' guest-clock seconds that were measured (None: none was)."""
    measured = [value for value in values if value is not None]
    return round(statistics.median(measured), 3) if measured else None


def _union(lists) -> list[str]:
    return list(dict.fromkeys(line for lines in lists for line in lines))


def _disagree(cells: dict) -> list[str]:
    """The aspects on which two releases gave answers that never met: a release whose runs
    varied disagrees only with a release that never answered like any of them."""
    compared = [cell for cell in cells.values() if "error" not in cell]

    def answers(cell, aspect):
        return set(cell.get("observed", {}).get(aspect) or [cell[aspect]])

    return [aspect for aspect in ASPECTS
            if any(not answers(a, aspect) & answers(b, aspect)
                   for i, a in enumerate(compared) for b in compared[i + 1:])]


def combine(results: list[dict]) -> dict:
    """One matrix from matrices run separately (one release each, say, on different
    machines); a release missing for a row shows as not run."""
    releases = {release: info for result in results for release, info in result["releases"].items()}
    rows: dict[tuple, dict] = {}
    for result in results:
        for row in result["rows"]:
            key = (row["experiment"], row["chain"], row["fs"], row.get("remedy"))
            rows.setdefault(key, {**row, "cells": {}})["cells"].update(row["cells"])
    for row in rows.values():
        row["cells"] = {release: row["cells"].get(release, {"error": "not run"}) for release in releases}
        row["disagree"] = _disagree(row["cells"])
    combined = {"releases": releases, "rows": list(rows.values())}
    if any("runs" in result for result in results):
        combined["runs"] = max(result.get("runs", 1) for result in results)
    return combined


def render(result: dict):
    """A rich table: one row per experiment, one column per release; disagreeing aspects
    are marked with '≠' and shown in red, aspects that varied between runs with '~'."""
    from rich.table import Table

    runs = result.get("runs", 1)
    releases = list(result["releases"])
    table = Table("experiment", *(_column(r, v) for r, v in result["releases"].items()),
                  title="The same experiment on each release (≠: releases disagree; ~: varied between runs)",
                  caption=(f"{runs} runs per cell" if runs > 1 else
                           "one run per cell: --runs 3 tells a release's behaviour from run-to-run variation"),
                  show_lines=True)
    for row in result["rows"]:
        cells = []
        for release in releases:
            cell = row["cells"][release]
            if "error" in cell:
                cells.append(f"[red]did not finish: {cell['error']}[/red]")
                continue
            parts = []
            for aspect in ASPECTS:
                if aspect == "remedy" and not row.get("remedy"):
                    continue  # "remedy: none" on every plain row says nothing
                text = f"{aspect}: {cell[aspect]}"
                if aspect in row["disagree"]:
                    text = f"[red]≠ {text}[/red]"
                elif aspect in cell.get("varies", []):
                    text = f"[yellow]~ {text}[/yellow]"
                parts.append(text)
            timings = [f"{label} {cell[key]:+.3f} s" for key, label in (
                ("fs_error_seconds", "FAN_FS_ERROR after first failed I/O"),
                ("deep_after_shutdown_line", "deep check unhealthy after shutdown line"),
                ("agent_stopping_after_shutdown_line", "systemd stopping the agent after shutdown line"))
                if cell.get(key) is not None]
            if timings:
                parts.append("[dim]" + "; ".join(timings) + " (guest clock)[/dim]")
            if cell.get("errors"):
                parts.append(f"[red]{len(cell['errors'])} of {cell['runs']} runs did not finish: {cell['errors'][0]}[/red]")
            cells.append("\n".join(parts))
        remedy = f"\nremedy {row['remedy']}" if row.get("remedy") else ""
        table.add_row(f"{row['experiment']}\n{row['chain']}, {row['fs']}{remedy}", *cells)
    return table


def _column(release: str, info: dict) -> str:
    packages = info.get("packages") or {}
    exact = "\n".join(f"{name} {version}" for name, version in packages.items())
    user = info.get("user_kernel")
    said = f"\n--kernel {user['package']} {user['version']} (sha256 {user['sha256'][:12]})" if user else ""
    return f"{release}\nkernel {info['kernel']}{said}\n{info['systemd']}" + (f"\n{exact}" if exact else "")


def load(path: Path) -> dict:
    """A matrix saved with `versions --json`; UserError if PATH is not one."""
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no saved matrix at {path}", "give a file written by unitchaos versions --json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a saved matrix ({exc.__class__.__name__})",
                        "give a file written by unitchaos versions --json") from None
    if not isinstance(result, dict) or not {"releases", "rows"} <= set(result):
        raise UserError(f"{path} is not a saved matrix (no releases and rows)",
                        "give a file written by unitchaos versions --json")
    for row in result["rows"]:
        for cell in row["cells"].values():
            if "error" not in cell:
                # Saved before an aspect existed: it was not measured then.
                for aspect in ASPECTS:
                    plain_row = aspect == "remedy" and not row.get("remedy")
                    cell.setdefault(aspect, "none" if plain_row else "not recorded when saved")
    return result


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2)


def save_kernel_lines(result: dict, directory: Path) -> list[Path]:
    """Writes the kernel lines each experiment saw, one file per release and kernel
    (<release>-<kernel>.json), as fixtures for the kernel patterns' tests; experiments
    already in a file and not run again are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for release, versions in result["releases"].items():
        experiments_seen = {}
        for row in result["rows"]:
            cell = row["cells"][release]
            if "error" not in cell and not row.get("remedy"):
                experiments_seen[f"{row['experiment']} {row['chain']} {row['fs']}"] = cell["kernel_lines"]
        if not experiments_seen:
            continue
        path = directory / f"{release}-{versions['kernel']}.json"
        # Runs with another --chain or --fs add their experiments to the same kernel's file.
        earlier = json.loads(path.read_text())["experiments"] if path.exists() else {}
        path.write_text(json.dumps({"release": release, "kernel": versions["kernel"], "systemd": versions["systemd"],
                                    "experiments": {**earlier, **experiments_seen}}, indent=2) + "\n")
        written.append(path)
    return written
