"""`unitchaos fis run`: an AWS FIS experiment template on a lab instance (runs/fis_run.py)."""
import json
import time
from pathlib import Path

from ..chaos import fis
from ..runs import fis_run
from ..lab.lab import Lab
from .options import Parser, check_release, check_report_path, console, release_option, write_report
from .run import findings_table


def add_fis(sub) -> None:
    fis_cmd = sub.add_parser("fis", help="AWS FIS experiment templates")
    fis_sub = fis_cmd.add_subparsers(dest="fis_command", required=True, parser_class=Parser)
    run = fis_sub.add_parser("run", help="run a CreateExperimentTemplate JSON file on a lab instance")
    run.add_argument("template", type=Path, help="a CreateExperimentTemplate request as JSON "
                     "(what `aws fis create-experiment-template --cli-input-json` takes)")
    run.add_argument("--group", default="lab", metavar="NAME",
                     help=f"the auto scaling group of the lab's instance: its tag {fis.GROUP_TAG}=NAME is on the "
                          "instance and its volumes (default lab)")
    run.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    run.add_argument("--keep-artifacts", action="store_true",
                     help="keep console, journal, health samples and the timeline (the outcome names the directory)")
    run.add_argument("--report", type=Path, metavar="FILE.html", default=None,
                     help="write an HTML report of this run (keeps the artifacts it links to)")
    release_option(run)
    run.set_defaults(func=cmd_fis_run)


def cmd_fis_run(args) -> int:
    check_release(args)
    check_report_path(args.report)
    group = fis_run.check(args.template, args.group)  # a bad template fails here, before any VM
    with Lab(release=args.release, kernel=args.user_kernel, keep=args.keep_artifacts or args.report is not None) as lab:
        outcome = fis_run.run(lab, args.template, group, on_state=print_state)
    write_report([outcome], args.report)
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2))
    else:
        console.print(findings_table([outcome]))
        print(render(outcome))
    return 0 if outcome.fault_detail["state"] == fis.COMPLETED else 1


def print_state(action: str, state: str, reason: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {action:<20} {state}{f': {reason}' if reason else ''}", flush=True)


def render(outcome) -> str:
    """The experiment as `aws fis get-experiment` summarises it, then what the lab measured."""
    detail = outcome.fault_detail
    lines = [f"experiment {outcome.experiment} on {detail['instance_id']} ({detail['group']}): {detail['state']}"]
    for name, action in detail["actions"].items():
        lab = f"{action['fault'] or 'wait'} {action['seconds']:g} s" + (
            f" {action['params']}" if action["params"] else "")
        lines.append(f"  {name:<20} {action['actionId']:<28} {action['state']:<10} lab: {lab}"
                     + (f" ({action['reason']})" if action.get("reason") else "")
                     + (f" [lab differs: {action['lab_differs']}]" if action.get("lab_differs") else ""))
    for check, verdict in outcome.health.named().items():
        said = (f"failed after {verdict.seconds:.1f} s, unhealthy after {verdict.lb_seconds:.1f} s"
                if verdict.detected else "never unhealthy")
        seen = outcome.checks.get(check)  # the chain's declared checks; the deep one is not among them
        lines.append(f"  {check} check: {said}" + (f"; answers {seen.now} at the end" if seen else ""))
    if "deep_200_after_s" in detail:
        back = detail["deep_200_after_s"]
        lines.append(f"  deep check 200 again {back} s after the last action ended" if back is not None
                     else "  deep check: NOT 200 again within the recovery wait")
    lines.append(f"  workload at the end: {'works' if outcome.workload_ok else 'fails: ' + str(outcome.workload.get('error'))}")
    return "\n".join(lines)
