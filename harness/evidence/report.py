"""`unitchaos report`: one static HTML page for a run, readable without the lab.

A run directory is what --keep-artifacts leaves: a directory holding outcome.json (one
experiment's artifacts), or a directory of such directories (~/.cache/unitchaos/artifacts,
or what `unitchaos demo --report` and `unitchaos matrix --report` kept). The page holds
the findings matrix, each experiment's timeline picture (inline SVG) and links to its
artifacts, relative to the page so that page and artifacts can be moved together.
Nothing is loaded from elsewhere: CSS and pictures are in the file.
"""
import datetime
import html
import json
import os
from pathlib import Path

from . import findings, timeline, timeline_svg
from .outcome import CheckVerdict, Outcome
from ..errors import UserError

OUTCOME = "outcome.json"
# What the findings matrix needs of every outcome.
REQUIRED = ["experiment", "chain", "fs", "units", "mount_listed", "kernel_events", "health_check_lies", "seconds"]
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #24292e;
       margin: 24px auto; max-width: 1200px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin: 32px 0 8px; }
.meta { color: #586069; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #d1d5da; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.good { background: #dcffe4; } td.bad { background: #ffdce0; font-weight: 600; } td.warn { background: #fff5b1; }
section.experiment { border-top: 1px solid #e1e4e8; }
.facts td:first-child { color: #586069; white-space: nowrap; }
figure { margin: 8px 0; overflow-x: auto; } figure svg { display: block; max-width: 100%; height: auto; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 12px; }
.badness { color: #b31d28; font-weight: 600; }
ul.artifacts { columns: 3; padding-left: 18px; } .none { color: #586069; font-style: italic; }
"""


def collect(run_dirs: list[Path]) -> list[Path]:
    """The experiment directories (each with an outcome.json) in RUN_DIRS, oldest first."""
    found: list[Path] = []
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} is not a directory",
                            "name a run directory: one kept by --keep-artifacts (~/.cache/unitchaos/artifacts)")
        here = [run_dir] if (run_dir / OUTCOME).is_file() else sorted(p.parent for p in run_dir.glob(f"*/{OUTCOME}"))
        if not here:
            raise UserError(f"no {OUTCOME} in {run_dir} or its subdirectories",
                            "run experiments with --keep-artifacts (or unitchaos demo --report FILE) first")
        found += here
    return found


def write(experiment_dirs: list[Path], out: Path) -> Path:
    """Writes the report of EXPERIMENT_DIRS to OUT (an .html file)."""
    check_output(out)
    outcomes = []
    for directory in experiment_dirs:
        try:
            outcome = json.loads((directory / OUTCOME).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {directory / OUTCOME}: {exc}", "remove that directory from the run") from None
        missing = [key for key in REQUIRED if not isinstance(outcome, dict) or key not in outcome]
        if missing:
            raise UserError(f"{directory / OUTCOME} is not an experiment's outcome (no {', '.join(missing)})",
                            "name directories kept by unitchaos run/demo/matrix --keep-artifacts")
        outcomes.append((directory, Outcome.from_json(outcome)))
    out.write_text(render(outcomes, out.parent.resolve()))
    return out


def check_output(out: Path) -> None:
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: {out.parent} is not a directory", "create it, or name another file")


def render(outcomes: list[tuple[Path, Outcome]], base: Path) -> str:
    """The page for OUTCOMES ((artifact directory, outcome)); links are relative to BASE."""
    ids = [f"exp-{i}-{out.experiment or 'x'}" for i, (_, out) in enumerate(outcomes)]
    versions = sorted({f"kernel {_known(out.kernel)}, {_known(out.systemd)}, {_known(out.accel)}"
                       for _, out in outcomes})
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>unitchaos report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>unitchaos: what systemd, the kernel and the health checks did</h1>",
             f'<p class="meta">{len(outcomes)} experiment(s); generated {now}; guest: '
             f"{_e('; '.join(versions))}</p>",
             "<h2>Findings</h2>", _matrix(outcomes, ids)]
    for anchor, (directory, out) in zip(ids, outcomes):
        parts.append(_experiment(anchor, directory, out, base))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _matrix(outcomes, ids) -> str:
    named = list(outcomes[0][1].health.named()) if outcomes else ["stock", "deep"]
    columns = findings.columns([out for _, out in outcomes])
    rows = ['<table class="findings"><thead><tr>'
            + "".join(f"<th>{_e(c)}</th>" for c in columns)
            + "".join(f"<th>{_e(name)} LB s</th>" for name in named) + "</tr></thead><tbody>"]
    for anchor, (_, out) in zip(ids, outcomes):
        cells = findings.row(out, findings.AFTER in columns)
        first = f'<td><a href="#{anchor}">{_e(cells[0][0])}</a></td>'
        rest = "".join(f'<td class="{tone}">{_e(text)}</td>' if tone else f"<td>{_e(text)}</td>"
                       for text, tone in cells[1:])
        lb = "".join(f"<td>{_secs(check.lb_seconds if (check := out.health.named().get(name)) else None)}</td>"
                     for name in named)
        rows.append(f"<tr>{first}{rest}{lb}</tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _experiment(anchor: str, directory: Path, out: Outcome, base: Path) -> str:
    events = out.timeline or []
    title = out.describe()
    parts = [f'<section class="experiment" id="{anchor}"><h2>{_e(title)}</h2>', '<table class="facts">']
    facts = [("fault", (out.fault or "none") + ("" if out.fault_effect is None else
                                                ("; took effect: " if out.took_effect else "; did NOT take effect: ")
                                                + out.fault_effect.said)),
             ("units after", ", ".join(f"{u} {s}" for u, s in out.units.items())),
             ("mount", out.mount or "not mounted"),
             ("container start", _container(out.container_start)) if out.is_incident
             else ("workload", _container(out.workload)),
             *([("after the verdict", f"{findings.after_verdict(out)}; "
                   f"{', '.join(f'{u} {change}' for u, change in out.after_verdict.changed.items()) or 'no unit changed'}")]
               if out.after_verdict else []),
             *([("deep check after the verdict", findings.deep_cell(out)[0])] if out.deep_after_verdict else []),
             ("started from", f"{_known(out.start)} in {_known(out.seconds.boot)} s"),
             ("guest", f"kernel {_known(out.kernel)}, {_known(out.systemd)}, {_known(out.accel)}, "
                       f"timeout scale {_known(out.timeout_scale)}")]
    for name, check in out.health.named().items():
        if check:
            facts.append((f"{name} check", _check(check)))
    parts += [f"<tr><td>{_e(k)}</td><td>{_e(str(v))}</td></tr>" for k, v in facts]
    parts.append("</table>")
    if events:
        end = out.seconds.fault_to_verdict
        picture = timeline_svg.render(events, title=title, end=end, samples=_samples(directory))
        parts.append(f"<figure>{picture}</figure>")
        parts.append(f"<details><summary>timeline as text ({len(events)} events)</summary>"
                     f"<pre>{_e(timeline.render(events))}</pre></details>")
    else:
        parts.append('<p class="none">no fault injected: no timeline</p>')
    for line in out.badness:
        parts.append(f'<p class="badness">badness on the console: {_e(line)}</p>')
    parts.append(_artifacts(directory, base))
    parts.append("</section>")
    return "\n".join(parts)


def _samples(directory: Path) -> list[dict] | None:
    """Every health probe's answer, if the run kept them (older runs did not)."""
    try:
        return json.loads((directory / "health.json").read_text())["samples"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _artifacts(directory: Path, base: Path) -> str:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    items = "".join(f'<li><a href="{_e(_link(p, base))}">{_e(str(p.relative_to(directory)))}</a> '
                    f"({_size(p.stat().st_size)})</li>" for p in files)
    return (f'<p>artifacts in <a href="{_e(_link(directory, base))}/">{_e(str(directory))}</a>:</p>'
            f'<ul class="artifacts">{items}</ul>')


def _link(path: Path, base: Path) -> str:
    # Relative, so the page works from file:// and when moved together with its artifacts.
    return "/".join(Path(os.path.relpath(path.resolve(), base)).parts)


def _known(value) -> str:
    """VALUE, or "?" for what an older outcome.json did not record."""
    return "?" if value is None else str(value)


def _check(check: CheckVerdict) -> str:
    if not check.detected and check.seconds is None:
        return f"never failed ({_known(check.samples)} answers)"
    said = f"first failing answer after {_secs(check.seconds)} s"
    verdict = check.lb_seconds
    return said + (f", load balancer verdict unhealthy after {verdict:.1f} s" if verdict is not None
                   else ", no unhealthy verdict in the window")


def _container(container: dict) -> str:
    via = f" via {container['via']}" if container.get("via") else ""
    if container.get("ok"):
        return f"ok{via}"
    return f"failed{via}: {container.get('error')}"


def _secs(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _size(size: int) -> str:
    return f"{size} B" if size < 1024 else f"{size / 1024:.0f} KiB" if size < 1 << 20 else f"{size / (1 << 20):.1f} MiB"


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
