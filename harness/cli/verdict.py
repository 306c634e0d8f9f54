"""`unitchaos matrix` and `verdict`: every fault against the health checks, as a table."""
import json

from rich.table import Table

from .. import progress
from ..errors import GuestTimeout
from ..evidence import findings
from ..evidence.outcome import CheckVerdict, Outcome
from ..runs import experiments, verdict
from .options import (backend_options, chain_file_option, check_release, check_report_path, check_units, console,
                      keep_options, kernel_said, lab, release_option, start_options, variant_options, write_report)


def add_matrix(sub) -> None:
    matrix = sub.add_parser("matrix", help="every fault against the stock and the deep health check")
    matrix.add_argument("faults", nargs="*", help="faults to run (default: all)")
    matrix.add_argument("--json", action="store_true")
    variant_options(matrix)
    chain_file_option(matrix)
    start_options(matrix)
    keep_options(matrix)
    backend_options(matrix)
    release_option(matrix)
    matrix.set_defaults(func=cmd_matrix)


def cmd_matrix(args) -> int:
    names = args.faults or [name for name in experiments.EXPERIMENTS if name != "healthy"]
    for name in names:
        experiments.get(name)
    check_release(args)
    check_units(args)
    check_report_path(args.report)
    outcomes = []
    with lab(args, keep=args.keep_artifacts or args.report is not None) as the_lab:
        for name in names:
            for fs in experiments.filesystems(name, args.fs):
                progress.say(f"matrix: {name}" + (f" on {fs}" if fs else ""))
                try:
                    outcomes.append(experiments.run(the_lab, name, args.chain, fs, args.units))
                except GuestTimeout as exc:
                    # One experiment that hangs is a finding; the rest of the matrix still runs.
                    progress.say(f"matrix: {name} did not finish: {str(exc).splitlines()[0]}")
    write_report(outcomes, args.report)
    if args.json:
        print(json.dumps([out.to_json() for out in outcomes], indent=2))
        return 0
    console.print(matrix_table(outcomes, args))
    for out in outcomes:
        if out.fault_effect is not None:
            console.print(f"{out.describe()}: {'took effect' if out.took_effect else 'did NOT take effect'}: "
                          f"{out.fault_effect.said}", markup=False)
    console.print(kernel_said(outcomes[0]) if outcomes else "", markup=False)
    return 0


def matrix_table(outcomes: list[Outcome], args) -> Table:
    """Per fault: did each health check notice, after how long (alone and behind the LB)."""
    names = list(outcomes[0].health.named()) if outcomes else ["stock", "deep"]
    first = outcomes[0] if outcomes else Outcome("none", args.chain, args.fs, chain_file="ecs-docker")
    table = Table("fault", *[f"{name}{suffix}" for name in names for suffix in ("", " s", " LB s")],
                  "workload", title=f"Which health check notices what ({first.chain_file}: {first.chain}, "
                  f"{first.fs}; LB: ALB thresholds, 1 s interval)")
    for out in outcomes:
        cells = []
        for name in names:
            check = out.health.named()[name]
            lies = name in out.checks and out.checks[name].lies
            later = out.deep_after_verdict if name == "deep" and not check.detected else None
            if later is not None and later.failed:
                # Its container test runs every 30 s: it failed, after the health window.
                cells += ["[yellow]after the window[/yellow]", _secs(later.seconds), "-"]
                continue
            cells += ["[red]LIES[/red]" if lies else _detected(check, out.took_effect), _secs(check.seconds),
                      _secs(check.lb_seconds)]
        several = len({o.fs for o in outcomes if o.experiment == out.experiment}) > 1
        table.add_row(f"{out.experiment} ({out.fs})" if several else out.experiment, *cells,
                      findings.yes(out.workload_ok))
    return table


def _detected(check: CheckVerdict, took_effect: bool = True) -> str:
    if check.detected:
        return "[green]detected[/green]"
    # A fault that did not take effect left nothing to detect: not a miss.
    return "[red]missed[/red]" if took_effect else "[yellow]not in effect[/yellow]"


def _secs(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def add_verdict(sub) -> None:
    verdict_cmd = sub.add_parser("verdict", help="per volume fault: did systemd stop the must_stop units, did each "
                                 "check notice, did the workload fail; exit 1 if a check lies or a unit keeps running")
    verdict_cmd.add_argument("faults", nargs="*", metavar="FAULT",
                             help=f"faults to run (default: every volume fault: {', '.join(verdict.VOLUME_FAULTS)})")
    verdict_cmd.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    chain_file_option(verdict_cmd)
    start_options(verdict_cmd)
    keep_options(verdict_cmd)
    backend_options(verdict_cmd)
    release_option(verdict_cmd)
    verdict_cmd.set_defaults(func=cmd_verdict, chain=None, fs=None, units=None)


def cmd_verdict(args) -> int:
    names = verdict.check_faults(args.faults)
    check_release(args)
    check_units(args)
    check_report_path(args.report)
    with lab(args, keep=args.keep_artifacts or args.report is not None) as the_lab:
        verdicts = verdict.run(the_lab, names)
    failed = any(v.failed for v in verdicts)
    if args.json:
        print(json.dumps(verdict.as_json(the_lab, verdicts), indent=2))
        return 1 if failed else 0
    console.print(verdict_table(verdicts, args.chain_spec))
    versions = next((v.versions for v in verdicts if v.versions), {})
    console.print(f"guest kernel {versions.get('kernel', '?')}, {versions.get('systemd', '?')}"
                  + (f", packages {versions['packages']}" if versions.get("packages") else "")
                  + (f", from --kernel {the_lab.kernel.describe()}" if the_lab.kernel else "") + "; "
                  + ("FAIL: a check lies or a must_stop unit kept running" if failed else "ok"), markup=False)
    return 1 if failed else 0


def verdict_table(verdicts: list, chain_spec) -> Table:
    """Per volume fault: what stopped, what each check said, the workload, the kernel, the verdict."""
    checks = list(dict.fromkeys(c.name for v in verdicts for c in v.checks))
    table = Table("fault", "must_stop stopped", *checks, "workload", "kernel said", "verdict",
                  title=f"unitchaos verdict: {chain_spec.name} ({chain_spec.source.name}); "
                        "LB: ALB thresholds, 1 s interval")
    for v in verdicts:
        if v.error:
            table.add_row(v.fault, *["-"] * (len(checks) + 3), f"[red]FAIL: {v.error}[/red]")
            continue
        running = [f"{unit} {state}" for unit, state in v.must_stop.items() if state not in experiments.STOPPED]
        stopped = "[green]yes[/green]" if v.stopped else f"[red]no: {', '.join(running)}[/red]"
        if v.not_in_effect:  # nothing to notice: neither a miss nor a pass
            cells = {c.name: "[yellow]fault not in effect[/yellow]" for c in v.checks}
            table.add_row(v.fault, "-", *[cells.get(name, "-") for name in checks], "-", v.kernel,
                          f"[yellow]did not take effect: {v.not_in_effect}[/yellow]")
            continue
        cells = {c.name: "[red]LIES[/red]" if c.lies else
                 (f"noticed after {c.seconds:.1f} s (LB {c.lb_seconds:.1f} s)" if c.noticed else
                  f"failed once at {c.seconds:.1f} s, LB kept it" if c.seconds is not None else "never noticed")
                 for c in v.checks}
        table.add_row(v.fault, stopped, *[cells.get(name, "-") for name in checks],
                      (f"fails{'' if v.workload_seconds is None else f' after {v.workload_seconds:.1f} s'}: "
                       f"{v.workload_said}") if v.workload_failed else "works", v.kernel,
                      "[red]FAIL[/red]" if v.failed else "[green]ok[/green]")
    return table
