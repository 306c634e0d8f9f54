"""`unitchaos run`, `demo` and `report`: run experiments and print (or write) what they found."""
import json
from pathlib import Path

from rich.table import Table

from .. import progress, units
from ..evidence import findings, report, timeline
from ..evidence.outcome import Outcome
from ..paths import artifacts_dir
from ..runs import experiments
from .options import (backend_options, chain_file_option, check_release, check_report_path, check_units, console,
                      keep_options, kernel_said, lab, release_option, start_options, variant_options, write_report)


def add_run(sub) -> None:
    run = sub.add_parser("run", help="run one experiment and print its outcome")
    run.add_argument("experiment", help=f"one of: {', '.join(experiments.EXPERIMENTS)}")
    variant_options(run)
    chain_file_option(run)
    run.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                     help="a fault parameter, e.g. ms=250 for io-latency, after=100 for io-error, "
                     "duration=20 for pause-io (repeatable)")
    run.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    run.add_argument("--remedy", default=None, metavar="NAME",
                     help=f"lay a remedy from vm/remedies over the chain's units ({', '.join(units.remedies())})")
    run.add_argument("--keep-artifacts", action="store_true",
                     help="keep console, journal, dmesg, QMP events and unit files (the outcome names the directory)")
    start_options(run)
    backend_options(run)
    release_option(run)
    run.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    experiment = experiments.get(args.experiment)
    params = experiment.parse_params(args.param)
    check_release(args)
    check_units(args)
    with lab(args, keep=args.keep_artifacts) as the_lab:
        outcome = experiments.run(the_lab, args.experiment, args.chain, args.fs, args.units, params=params,
                                  remedy=args.remedy)
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2))
    else:
        console.print(findings_table([outcome]))
        if outcome.fault_effect is not None:
            console.print(f"the fault {'took effect' if outcome.took_effect else 'did NOT take effect'}: "
                          f"{outcome.fault_effect.said}", markup=False)
        if outcome.timeline:
            console.print("Timeline (seconds from the fault):", style="bold")
            console.print(timeline.render(outcome.timeline), highlight=False, markup=False)
        for line in outcome.badness:
            console.print(f"badness on the console: {line}", style="red", markup=False)
        if outcome.seconds.phases:
            console.print(f"{outcome.seconds.total:.1f} s in all: " + ", ".join(
                f"{phase} {seconds:.1f}" for phase, seconds in outcome.seconds.phases.items()), markup=False)
        if outcome.user_kernel:
            console.print(kernel_said(outcome), markup=False)
        if outcome.artifacts:
            console.print(f"artifacts: {outcome.artifacts}")
    return 0


def add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="run the incident end to end and print the findings")
    demo.add_argument("--json", action="store_true")
    start_options(demo)
    keep_options(demo)
    backend_options(demo)
    release_option(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    check_report_path(args.report)
    check_release(args)
    outcomes = []
    with lab(args, keep=args.keep_artifacts or args.report is not None) as the_lab:
        for name, chain, fs in experiments.INCIDENT_SUITE:
            progress.say(f"experiment {name} with {chain}, {fs}")
            outcomes.append(experiments.run(the_lab, name, chain, fs))
    write_report(outcomes, args.report)
    if args.json:
        print(json.dumps([out.to_json() for out in outcomes], indent=2))
    else:
        console.print(findings_table(outcomes))
        first = outcomes[0]
        console.print(kernel_said(first), markup=False)
    return 0


def add_report(sub) -> None:
    report_cmd = sub.add_parser("report", help="an HTML report of kept runs: findings, timelines, artifacts")
    report_cmd.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", type=Path,
                            help="a directory with outcome.json, or one of such directories "
                                 "(default: every kept run in ~/.cache/unitchaos/artifacts)")
    report_cmd.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.html")
    report_cmd.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    kept = report.collect(args.run_dirs or [artifacts_dir()])
    print(report.write(kept, args.output))
    return 0


def findings_table(outcomes: list[Outcome]) -> Table:
    """The findings of OUTCOMES, one row each, coloured good, bad or warn."""
    columns = findings.columns(outcomes)
    table = Table(*columns, title="What systemd, the kernel and the health checks did")
    styles = {"good": "green", "bad": "red", "warn": "yellow"}
    for out in outcomes:
        table.add_row(*(f"[{styles[tone]}]{text}[/{styles[tone]}]" if tone else text
                        for text, tone in findings.row(out, findings.AFTER in columns)))
    return table
