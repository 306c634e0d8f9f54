"""The version matrix: the same experiments on each guest release (kernel and systemd),
and where their outcomes disagree.

Each cell reduces an outcome to what systemd, the kernel and the health checks did, in
words that can be compared across releases; timings and versions are shown but never
count as a disagreement.
"""
import json
from pathlib import Path

from . import experiments, image, kernel_log, progress
from .errors import GuestTimeout, UserError
from .lab import Lab

# What a cell compares, in the order it is shown.
ASPECTS = ("systemd", "kernel", "checks")
# Kernel line kinds from most to least telling: a cell names all it saw, in this order.
KIND_ORDER = ["xfs-shutdown", "xfs-device-removed", "xfs-log-io-error", "xfs-metadata-io-error",
              "xfs-please-unmount", "ext4-abort-journal", "ext4-remount-ro", "ext4-error", "jbd2-error",
              "buffer-io-error", "lost-page-write", "block-io-error", "hung-task", "xfs-unmount"]


def default_rows() -> list[tuple[str, str, str]]:
    return list(experiments.INCIDENT_SUITE)


def behaviour(outcome: dict) -> dict[str, str]:
    """What systemd, the kernel and the checks did in OUTCOME, as comparable words."""
    units = outcome["units"]
    systemd = (f"docker {units['docker.service']}, agent {units['ecs-agent.service']}, "
               f"mount {'listed' if outcome['mount_listed'] else 'gone'}, vdb {outcome['volume_device']}")
    kinds = {kind for line in outcome["kernel_events"] for kind in kernel_log.classify(line)}
    kernel = ", ".join(kind for kind in KIND_ORDER if kind in kinds) or "silent"
    health = outcome.get("health", {})
    deep = health.get("deep", {})
    checks = (f"metadata {outcome['metadata_status']}, containers {'start' if outcome['container_start_ok'] else 'fail'}, "
              f"stock {'LIES' if outcome['health_check_lies'] else 'truthful'}, "
              f"deep {'fails' if deep.get('detected') else 'passes'}")
    return {"systemd": systemd, "kernel": kernel, "checks": checks}


def run(rows: list[tuple[str, str, str]], releases: list[str], cold: bool = False, units_dir=None) -> dict:
    """Runs every ROW (experiment, chain, fs) on every release (with the unit files in
    UNITS_DIR, default vm/units); returns the matrix."""
    for name, _, _ in rows:
        experiments.get(name)
    for release in releases:
        image.check_release(release)
    if not rows or not releases:
        raise UserError("nothing to compare", "name at least one experiment and one release")
    # Every image first: a release that cannot be built fails before any VM runs.
    images = {release: image.ensure_image(release) for release in releases}
    outcomes: dict[str, dict[tuple, dict]] = {}
    for release in releases:
        with Lab(release=release, cold=cold or None) as lab:
            for row in rows:
                progress.say(f"versions: {' '.join(row)} on {release}")
                try:
                    outcomes.setdefault(release, {})[row] = experiments.run(lab, *row, units_dir)
                except (GuestTimeout, UserError) as exc:
                    # A release whose guest hangs or never comes up healthy is a finding
                    # (the arguments were checked above); the rest of the matrix still runs.
                    outcomes.setdefault(release, {})[row] = {"error": str(exc).splitlines()[0]}
    return matrix(rows, releases, outcomes, {r: images[r].manifest for r in releases})


def matrix(rows, releases, outcomes: dict[str, dict[tuple, dict]], manifests: dict[str, dict]) -> dict:
    """The matrix from outcomes already run: cells, and which aspects disagree per row."""
    result = {"releases": {}, "rows": []}
    for release in releases:
        ran = [out for out in outcomes.get(release, {}).values() if "kernel" in out]
        manifest = manifests.get(release, {})
        result["releases"][release] = {
            "kernel": ran[0]["kernel"] if ran else manifest.get("kernel"),
            "systemd": ran[0]["systemd"] if ran else manifest.get("systemd"),
            "image": manifest.get("key"),
        }
    for row in rows:
        cells = {}
        for release in releases:
            out = outcomes.get(release, {}).get(tuple(row))
            if out is None or "error" in out:
                cells[release] = {"error": (out or {}).get("error", "not run")}
                continue
            deep = out.get("health", {}).get("deep", {})
            cells[release] = {**behaviour(out), "kernel_version": out["kernel"], "systemd_version": out["systemd"],
                              "deep_seconds": deep.get("seconds"), "kernel_events": out["kernel_events"],
                              "kernel_lines": out.get("kernel_lines", [])}
        name, chain, fs = row
        result["rows"].append({"experiment": name, "chain": chain, "fs": fs, "cells": cells,
                               "disagree": _disagree(cells)})
    return result


def _disagree(cells: dict) -> list[str]:
    compared = [cell for cell in cells.values() if "error" not in cell]
    return [aspect for aspect in ASPECTS if len({cell[aspect] for cell in compared}) > 1]


def combine(results: list[dict]) -> dict:
    """One matrix from matrices run separately (one release each, say, on different
    machines); a release missing for a row shows as not run."""
    releases = {release: info for result in results for release, info in result["releases"].items()}
    rows: dict[tuple, dict] = {}
    for result in results:
        for row in result["rows"]:
            key = (row["experiment"], row["chain"], row["fs"])
            rows.setdefault(key, {**row, "cells": {}})["cells"].update(row["cells"])
    for row in rows.values():
        row["cells"] = {release: row["cells"].get(release, {"error": "not run"}) for release in releases}
        row["disagree"] = _disagree(row["cells"])
    return {"releases": releases, "rows": list(rows.values())}


def render(result: dict):
    """A rich table: one row per experiment, one column per release; disagreeing aspects
    are marked with '≠' and shown in red."""
    from rich.table import Table

    releases = list(result["releases"])
    table = Table("experiment", *(f"{r}\nkernel {v['kernel']}\n{v['systemd']}" for r, v in result["releases"].items()),
                  title="The same experiment on each release (≠: releases disagree)", show_lines=True)
    for row in result["rows"]:
        cells = []
        for release in releases:
            cell = row["cells"][release]
            if "error" in cell:
                cells.append(f"[red]did not finish: {cell['error']}[/red]")
                continue
            parts = []
            for aspect in ASPECTS:
                text = f"{aspect}: {cell[aspect]}"
                parts.append(f"[red]≠ {text}[/red]" if aspect in row["disagree"] else text)
            cells.append("\n".join(parts))
        table.add_row(f"{row['experiment']}\n{row['chain']}, {row['fs']}", *cells)
    return table


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
            if "error" not in cell:
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
