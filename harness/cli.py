"""The `unitchaos` command: parse, call the library, print. No VM logic lives here."""
import argparse
import json
import os
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .machines import host
from .lab import backends, prune, snapshots
from .runs import bench, interactive, experiments, verdict, versions
from .chaos import aws_api, chaos_api, chaos_client, groups
from . import faults, progress, units
from .evidence import findings, report, timeline
from .evidence.outcome import CheckVerdict, Outcome
from .images import ignition, image
from .errors import GuestError, GuestKernelPanic, GuestTimeout, MonitorError, UnitchaosError, UserError
from .lab.lab import Lab
from .paths import artifacts_dir

# Wide enough for the findings table when output goes to a log rather than a terminal.
console = Console(width=None if sys.stdout.isatty() else 160)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "chain_file"):
        # Commands that run only the incident's chain: its dependency and filesystem by default.
        args.chain = getattr(args, "chain", None) or "bindsto"
        args.fs = getattr(args, "fs", None) or "xfs"
    # A killed CLI (SIGTERM from CI, a closed terminal) unwinds like Ctrl-C: VMs are torn down.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("unitchaos: interrupted; every VM was stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into head(1) and the like: stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            raise
        print(f"unitchaos: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, UnitchaosError) else 1


def one_line(exc: Exception) -> str:
    """What the CLI says about EXC: one line, with the fix or the evidence's place."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, UserError):
        return f"error: {exc}"
    if isinstance(exc, GuestKernelPanic):
        said = f"the guest kernel panicked: {first}"
    elif isinstance(exc, GuestTimeout):
        said = f"the guest did not respond in time: {first} (fix: rerun with UNITCHAOS_TIMEOUT_SCALE=2 on a slow host)"
    elif isinstance(exc, GuestError):
        said = f"the guest misbehaved: {first}"
    elif isinstance(exc, MonitorError):
        said = f"QEMU's monitor refused: {first}"
    else:
        return f"internal error: {type(exc).__name__}: {first} (fix: rerun with --debug for the traceback, and report it)"
    if isinstance(exc, GuestError):
        where = exc.evidence_location()
        said += f"; evidence: {where}" if where else " (rerun with --keep-artifacts to keep the evidence)"
    return said


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line and exit 2, like every other bad input.
        print(f"unitchaos: error: {message} (fix: see 'unitchaos --help')", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unitchaos", description="Break a systemd unit chain's disk in a local VM "
                     "and see what systemd, the kernel and the health check do.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    doctor = sub.add_parser("doctor", help="check QEMU, KVM, mmdebstrap and free disk")
    doctor.set_defaults(func=cmd_doctor)

    image_cmd = sub.add_parser("image", help="the guest image")
    image_sub = image_cmd.add_subparsers(dest="image_command", required=True, parser_class=_Parser)
    build = image_sub.add_parser("build", help="build (or reuse) the guest image and print its path")
    _release_option(build)
    build.add_argument("--rebuild", action="store_true", help="build anew even if cached")
    build.set_defaults(func=cmd_image_build)

    run = sub.add_parser("run", help="run one experiment and print its outcome")
    run.add_argument("experiment", help=f"one of: {', '.join(experiments.EXPERIMENTS)}")
    _variant_options(run)
    _chain_file_option(run)
    run.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                     help="a fault parameter, e.g. ms=250 for io-latency, after=100 for io-error, "
                     "duration=20 for pause-io (repeatable)")
    run.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    run.add_argument("--keep-artifacts", action="store_true",
                     help="keep console, journal, dmesg, QMP events and unit files (the outcome names the directory)")
    _start_options(run)
    _backend_options(run)
    _release_option(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="run the incident end to end and print the findings")
    demo.add_argument("--json", action="store_true")
    _start_options(demo)
    _keep_options(demo)
    _backend_options(demo)
    _release_option(demo)
    demo.set_defaults(func=cmd_demo)

    ign = sub.add_parser("ignition", help="print the Fedora CoreOS Ignition config for a chain")
    _variant_options(ign)
    ign.add_argument("--output", "-o", default=None, help="write it to this file instead of stdout")
    ign.set_defaults(func=cmd_ignition)

    versions_cmd = sub.add_parser("versions", help="the same experiments on each guest release: where kernel and systemd change outcomes")
    versions_cmd.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                              help="experiments to run with --chain/--fs (default: the incident suite)")
    versions_cmd.add_argument("--release", action="append", dest="releases", metavar="RELEASE",
                              help=f"repeatable: {', '.join(image.RELEASES)} (default: all)")
    versions_cmd.add_argument("--json", action="store_true")
    versions_cmd.add_argument("--runs", type=int, default=1,
                              help="runs per experiment and release: what varies between them is not "
                                   "counted as a difference between releases (default 1)")
    versions_cmd.add_argument("--kernel-lines", metavar="DIR", default=None,
                              help="also write the kernel lines seen, one <release>-<kernel>.json per release")
    _variant_options(versions_cmd)
    _start_options(versions_cmd)
    versions_cmd.set_defaults(func=cmd_versions)

    matrix = sub.add_parser("matrix", help="every fault against the stock and the deep health check")
    matrix.add_argument("faults", nargs="*", help="faults to run (default: all)")
    matrix.add_argument("--json", action="store_true")
    _variant_options(matrix)
    _chain_file_option(matrix)
    _start_options(matrix)
    _keep_options(matrix)
    _backend_options(matrix)
    _release_option(matrix)
    matrix.set_defaults(func=cmd_matrix)

    verdict_cmd = sub.add_parser("verdict", help="per volume fault: did systemd stop the must_stop units, did each "
                                 "check notice, did the workload fail; exit 1 if a check lies or a unit keeps running")
    verdict_cmd.add_argument("faults", nargs="*", metavar="FAULT",
                             help=f"faults to run (default: every volume fault: {', '.join(verdict.VOLUME_FAULTS)})")
    verdict_cmd.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    _chain_file_option(verdict_cmd)
    _start_options(verdict_cmd)
    _keep_options(verdict_cmd)
    _backend_options(verdict_cmd)
    _release_option(verdict_cmd)
    verdict_cmd.set_defaults(func=cmd_verdict, chain=None, fs=None, units=None)

    report_cmd = sub.add_parser("report", help="an HTML report of kept runs: findings, timelines, artifacts")
    report_cmd.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", type=Path,
                            help="a directory with outcome.json, or one of such directories "
                                 "(default: every kept run in ~/.cache/unitchaos/artifacts)")
    report_cmd.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.html")
    report_cmd.set_defaults(func=cmd_report)

    bench = sub.add_parser("bench", help="measure cold boot vs warm restore and the incident suite")
    bench.add_argument("--runs", type=int, default=3, help="runs per figure (median, min, max)")
    bench.add_argument("--workers", type=int, default=None, help="parallel VMs (default: cores, memory allowing)")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--no-suites", action="store_true", help="only image, cold boot and restore (minutes, not half an hour)")
    bench.add_argument("--survey", action="store_true",
                       help="cold boot under each QEMU option and kernel argument of the lean-guest survey")
    bench.add_argument("--only", action="append", metavar="WORDS",
                       help="with --survey: only the options whose label contains WORDS (repeatable), and the default")
    bench.set_defaults(func=cmd_bench)

    serve = sub.add_parser("serve", help="boot groups of instances and serve the Chaos Monkey API on them")
    serve.add_argument("--group", action="append", required=True, metavar="NAME:SIZE",
                       help="a group of SIZE instances called NAME (repeatable)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--username", default=None)
    serve.add_argument("--password", default=None)
    serve.add_argument("--detach-fault", default="yank", help="what DetachVolumes does: yank or unplug")
    serve.add_argument("--aws", action="store_true",
                       help="also answer EC2, Auto Scaling and ELBv2 query requests (POST /) on the same port, "
                            "for AWS_ENDPOINT_URL (the AWS CLI, boto3, chaosaws); SigV4 with --username as the "
                            "access key id and --password as the secret key, any credentials without them")
    serve.add_argument("--health-check", default="deep",
                       help="what each group's load balancer checks: deep (:51680/health) or stock (:51678/v1/metadata)")
    _variant_options(serve)
    serve.set_defaults(func=cmd_serve)

    chaos = sub.add_parser("chaos", help="Chaos Monkey client (the Go chaosmonkey CLI's flags)")
    chaos_client.add_arguments(chaos)
    chaos.set_defaults(func=chaos_client.run)

    up = sub.add_parser("up", help="start a lab instance and leave it running (then: status, shell, inject, down)")
    _name_option(up)
    _variant_options(up)
    _start_options(up)
    up.set_defaults(func=cmd_up)
    shell = sub.add_parser("shell", help="ssh into the lab instance, or run COMMAND there")
    _name_option(shell)
    shell.add_argument("remote", nargs=argparse.REMAINDER, metavar="COMMAND")
    shell.set_defaults(func=cmd_shell)
    inject = sub.add_parser("inject", help="break the lab instance: inject FAULT and wait for the kernel and systemd")
    inject.add_argument("fault", help=f"one of: {', '.join(faults.FAULTS)}")
    inject.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                        help="a fault parameter, as for run (repeatable)")
    _name_option(inject)
    inject.add_argument("--json", action="store_true")
    inject.set_defaults(func=cmd_inject)
    heal = sub.add_parser("heal", help="undo FAULT on the lab instance (where that makes sense)")
    heal.add_argument("fault")
    _name_option(heal)
    heal.set_defaults(func=cmd_heal)
    status = sub.add_parser("status", help="the lab instance's units, mount and health checks")
    _name_option(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop the lab instance and remove everything of it")
    _name_option(down)
    down.set_defaults(func=cmd_down)

    snapshot = sub.add_parser("snapshot", help="the warm snapshots experiments start from")
    snapshot_sub = snapshot.add_subparsers(dest="snapshot_command", required=True, parser_class=_Parser)
    snapshot_sub.add_parser("list", help="list saved snapshots").set_defaults(func=cmd_snapshot_list)
    snapshot_sub.add_parser("clear", help="remove every snapshot").set_defaults(func=cmd_snapshot_clear)

    prune_cmd = sub.add_parser("prune", help="free the cache of images, snapshots and half-written files no run can use")
    prune_cmd.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    prune_cmd.set_defaults(func=cmd_prune)
    return parser


def _variant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chain", default=None, help="how the service depends on the mount: "
                        f"{' or '.join(units.CHAINS)} (default: the chain file's, bindsto for the incident)")
    parser.add_argument("--fs", default=None, help=f"the volume's filesystem: {' or '.join(units.FILESYSTEMS)} "
                        "(default: the chain file's, xfs for the incident)")
    parser.add_argument("--units", default=None, help="a directory of your own unit files (default: the chain file's)")


def _chain_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chain-file", default=None, metavar="FILE",
                        help=f"the chain to run (TOML; default: ${units.chainfile.ENV}, else ./unitchaos.toml, "
                             "else chains/ecs-docker.toml, the incident's)")


def _release_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--release", default="bookworm",
                        help=f"the guest's Debian release: {', '.join(image.RELEASES)} (default bookworm)")


def _check_units(args) -> None:
    """Bad chain files, unit files, chain or fs fail here, before any image or VM work.
    Commands without --chain-file run the incident's chain."""
    chain = units.load_chain(args.chain_file) if hasattr(args, "chain_file") else units.incident()
    args.chain_spec = chain
    units.check(units.Variant(chain=args.chain or chain.dependency, fs=args.fs or chain.fs, spec=chain,
                              **({"units_dir": Path(args.units)} if args.units else {})))


def _name_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=None,
                        help=f"which lab instance (default: the only one up; '{interactive.DEFAULT_NAME}' for up)")


def cmd_up(args) -> int:
    state = interactive.up(args.name or interactive.DEFAULT_NAME, args.chain, args.fs, args.units, args.cold or None)
    print(interactive.how_to_reach(state))
    return 0


def cmd_shell(args) -> int:
    argv = interactive.shell_argv(args.name, args.remote)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # ssh's exit status is the command's


def cmd_inject(args) -> int:
    done = interactive.inject(args.name, args.fault, args.param)
    print(json.dumps(done, indent=2) if args.json else interactive.render_injected(done))
    return 0


def cmd_heal(args) -> int:
    print(json.dumps(interactive.heal(args.name, args.fault)))
    return 0


def cmd_status(args) -> int:
    seen = interactive.status(args.name)
    print(json.dumps(seen, indent=2) if args.json else interactive.render_status(seen))
    return 0


def cmd_down(args) -> int:
    print(f"lab instance {interactive.down(args.name)!r} is down")
    return 0


def _keep_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-artifacts", action="store_true",
                        help="keep every experiment's artifacts (console, journal, health samples, timeline, ...)")
    parser.add_argument("--report", type=Path, metavar="FILE.html", default=None,
                        help="write an HTML report of this run (keeps the artifacts it links to)")


def _write_report(outcomes: list[Outcome], path: Path | None) -> None:
    if path is not None:
        report.write([Path(out.artifacts) for out in outcomes], path)
        progress.say(f"report: {path}")


def _check_report_path(path: Path | None) -> None:
    """A report that cannot be written fails before half an hour of experiments, not after."""
    if path is not None:
        report.check_output(path)


def cmd_report(args) -> int:
    kept = report.collect(args.run_dirs or [artifacts_dir()])
    print(report.write(kept, args.output))
    return 0


def _backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="qemu", help="what runs the guest: qemu (the harness's own, "
                        "warm snapshots) or vagrant (vagrant-libvirt, the repository's Vagrantfile; cold boots)")
    parser.add_argument("--guest", default="debian", help="debian (the lab image) or fcos (Fedora CoreOS "
                        "provisioned by Ignition; needs --image)")
    parser.add_argument("--image", default=None, help=f"the Fedora CoreOS qemu qcow2 to boot "
                        f"(default: ${backends.FCOS_IMAGE_ENV})")


def _lab(args, **options) -> Lab:
    return Lab(release=args.release, cold=args.cold or None, backend=args.backend, guest=args.guest, fcos_image=args.image,
               chain=getattr(args, "chain_spec", None), **options)


def _start_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cold", action="store_true",
                        help="boot every instance instead of starting it from a warm snapshot")


def cmd_serve(args) -> int:
    _check_units(args)
    for spec in args.group:
        groups.parse_group(spec)
    with Lab() as lab:
        backend_groups: dict = {}
        backend = groups.LabBackend(backend_groups, args.detach_fault)
        aws = None
        if args.aws:
            if args.host not in ("127.0.0.1", "localhost", "::1"):
                raise UserError(f"--aws serves only the loopback, not {args.host}", "leave --host at 127.0.0.1")
            aws = aws_api.AwsApi(backend_groups, (args.username, args.password) if args.username else None)
            aws.on_call = lambda call: progress.say(f"AWS {call['action']} {call['status']} ({call['agent']})")
        # Bound before any VM boots: a port in use fails at once.
        server = chaos_api.ChaosServer(backend, host=args.host, port=args.port,
                                       username=args.username, password=args.password, aws=aws)
        try:
            backend_groups.update(groups.start_groups(lab, args.group, args.chain, args.fs, args.health_check))
            for name, group in backend_groups.items():
                progress.say(f"auto scaling group {name}: {', '.join(group.instances)}")
            print(f"Chaos Monkey API on {server.url}{chaos_api.API_PATH} (Ctrl-C to stop and tear down)", flush=True)
            if aws is not None:
                print(f"AWS endpoint (EC2, Auto Scaling, ELBv2): AWS_ENDPOINT_URL={server.url}", flush=True)
            server.serve_forever()
        finally:
            server.stop()
            for group in backend_groups.values():
                group.lb.stop()
                group.stop()
                for event in group.events:
                    progress.say(f"{group.name}: {event['action']} {event['instance'] or ''} {event.get('reason', '')}")
    return 0


def cmd_matrix(args) -> int:
    names = args.faults or [name for name in experiments.EXPERIMENTS if name != "healthy"]
    for name in names:
        experiments.get(name)
    image.check_release(args.release)
    _check_units(args)
    _check_report_path(args.report)
    outcomes = []
    with _lab(args, keep=args.keep_artifacts or args.report is not None) as lab:
        for name in names:
            progress.say(f"matrix: {name}")
            try:
                outcomes.append(experiments.run(lab, name, args.chain, args.fs, args.units))
            except GuestTimeout as exc:
                # One experiment that hangs is a finding; the rest of the matrix still runs.
                progress.say(f"matrix: {name} did not finish: {str(exc).splitlines()[0]}")
    _write_report(outcomes, args.report)
    if args.json:
        print(json.dumps([out.to_json() for out in outcomes], indent=2))
        return 0
    names = list(outcomes[0].health.named()) if outcomes else ["stock", "deep"]
    first = outcomes[0] if outcomes else Outcome("none", args.chain, args.fs, chain_file="ecs-docker")
    table = Table("fault", *[f"{name}{suffix}" for name in names for suffix in ("", " s", " LB s")],
                  "workload", title=f"Which health check notices what ({first.chain_file}: {first.chain}, "
                  f"{first.fs}; LB: ALB thresholds, 1 s interval)")
    for out in outcomes:
        cells = []
        for name in names:
            check = out.health.named()[name]
            lies = out.checks.get(name, {}).get("lies")
            cells += ["[red]LIES[/red]" if lies else _detected(check), _secs(check.seconds), _secs(check.lb_seconds)]
        table.add_row(out.experiment, *cells, findings.yes(out.workload_ok))
    console.print(table)
    console.print(f"guest kernel {outcomes[0].kernel}, {outcomes[0].systemd}" if outcomes else "")
    return 0


def _detected(check: CheckVerdict) -> str:
    return "[green]detected[/green]" if check.detected else "[red]missed[/red]"


def _secs(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def cmd_verdict(args) -> int:
    names = verdict.check_faults(args.faults)
    image.check_release(args.release)
    _check_units(args)
    _check_report_path(args.report)
    with _lab(args, keep=args.keep_artifacts or args.report is not None) as lab:
        verdicts = verdict.run(lab, names)
    failed = any(v.failed for v in verdicts)
    if args.json:
        print(json.dumps(verdict.as_json(lab, verdicts), indent=2))
        return 1 if failed else 0
    checks = list(dict.fromkeys(c.name for v in verdicts for c in v.checks))
    table = Table("fault", "must_stop stopped", *checks, "workload", "kernel said", "verdict",
                  title=f"unitchaos verdict: {args.chain_spec.name} ({args.chain_spec.source.name}); "
                        "LB: ALB thresholds, 1 s interval")
    for v in verdicts:
        if v.error:
            table.add_row(v.fault, *["-"] * (len(checks) + 3), f"[red]FAIL: {v.error}[/red]")
            continue
        running = [f"{unit} {state}" for unit, state in v.must_stop.items() if state not in experiments.STOPPED]
        stopped = "[green]yes[/green]" if v.stopped else f"[red]no: {', '.join(running)}[/red]"
        cells = {c.name: "[red]LIES[/red]" if c.lies else
                 (f"noticed after {c.seconds:.1f} s (LB {c.lb_seconds:.1f} s)" if c.noticed else
                  f"failed once at {c.seconds:.1f} s, LB kept it" if c.seconds is not None else "never noticed")
                 for c in v.checks}
        table.add_row(v.fault, stopped, *[cells.get(name, "-") for name in checks],
                      (f"fails{'' if v.workload_seconds is None else f' after {v.workload_seconds:.1f} s'}: "
                       f"{v.workload_said}") if v.workload_failed else "works", v.kernel,
                      "[red]FAIL[/red]" if v.failed else "[green]ok[/green]")
    console.print(table)
    versions = next((v.versions for v in verdicts if v.versions), {})
    console.print(f"guest kernel {versions.get('kernel', '?')}, {versions.get('systemd', '?')}"
                  + (f", {versions['packages']}" if versions.get("packages") else "") + "; "
                  + ("FAIL: a check lies or a must_stop unit kept running" if failed else "ok"))
    return 1 if failed else 0


def cmd_bench(args) -> int:
    if args.runs < 1:
        raise UserError(f"--runs {args.runs} is not a number of runs", "use --runs 1 or more")
    if args.survey:
        figures = bench.survey(runs=args.runs, only=args.only)
        print(json.dumps(figures, indent=2) if args.json else bench.render_survey(figures))
        return 0
    figures = bench.run(runs=args.runs, workers=args.workers, suites=not args.no_suites)
    print(json.dumps(figures, indent=2) if args.json else bench.render(figures))
    return 0


def cmd_snapshot_list(args) -> int:
    table = Table("snapshot", "kernel", "systemd", "state MB", "cold boot s", "created")
    for name, meta in snapshots.saved():
        table.add_row(name, meta.get("kernel", "?"), meta.get("systemd", "?"),
                      f"{meta['state_bytes'] / 1e6:.0f}", str(meta.get("boot_seconds")), meta.get("created", "?"))
    console.print(table)
    return 0


def cmd_prune(args) -> int:
    stale = prune.find()
    sizes = [entry.size for entry in stale]  # before anything is removed
    for entry, size in zip(stale, sizes):
        print(f"{'would remove' if args.dry_run else 'removing'} {entry.path} ({size / 1e9:.2f} GB): {entry.why}")
    if not args.dry_run:
        prune.remove(stale)
    total = sum(sizes)
    print(f"{len(stale)} stale entr{'y' if len(stale) == 1 else 'ies'}, {total / 1e9:.2f} GB"
          + (" (dry run: nothing removed)" if args.dry_run else " freed"))
    return 0


def cmd_snapshot_clear(args) -> int:
    print(f"removed {snapshots.clear()} snapshot(s)")
    return 0


def cmd_doctor(args) -> int:
    found = host.checks()
    table = Table("check", "ok", "detail")
    for check in found:
        table.add_row(check.name, "yes" if check.ok else "[red]NO[/red]", check.detail)
    console.print(table)
    failed = [check.name for check in found if not check.ok]
    if failed:
        raise UserError(f"not ready: {', '.join(failed)}", "install what the table says is missing")
    return 0


def cmd_versions(args) -> int:
    rows = [(name, args.chain, args.fs) for name in args.experiments] or versions.default_rows()
    releases = list(dict.fromkeys(args.releases or image.RELEASES))
    for release in releases:
        image.check_release(release)
    for name, chain, fs in rows:
        experiments.get(name)
        units.check(units.Variant(chain=chain, fs=fs, **({"units_dir": Path(args.units)} if args.units else {})))
    result = versions.run(rows, releases, cold=args.cold, units_dir=args.units, runs=args.runs)
    if args.kernel_lines:
        for path in versions.save_kernel_lines(result, Path(args.kernel_lines)):
            progress.say(f"kernel lines: {path}")
    if args.json:
        print(versions.to_json(result))
    else:
        console.print(versions.render(result))
    return 0


def cmd_image_build(args) -> int:
    image.check_release(args.release)
    built = image.ensure_image(args.release, rebuild=args.rebuild)
    print(built.path)
    return 0


def cmd_run(args) -> int:
    experiment = experiments.get(args.experiment)
    params = experiment.parse_params(args.param)
    image.check_release(args.release)
    _check_units(args)
    with _lab(args, keep=args.keep_artifacts) as lab:
        outcome = experiments.run(lab, args.experiment, args.chain, args.fs, args.units, params=params)
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2))
    else:
        console.print(findings_table([outcome]))
        if outcome.timeline:
            console.print("Timeline (seconds from the fault):", style="bold")
            console.print(timeline.render(outcome.timeline), highlight=False, markup=False)
        for line in outcome.badness:
            console.print(f"badness on the console: {line}", style="red", markup=False)
        if outcome.artifacts:
            console.print(f"artifacts: {outcome.artifacts}")
    return 0


def cmd_demo(args) -> int:
    _check_report_path(args.report)
    image.check_release(args.release)
    outcomes = []
    with _lab(args, keep=args.keep_artifacts or args.report is not None) as lab:
        for name, chain, fs in experiments.INCIDENT_SUITE:
            progress.say(f"experiment {name} with {chain}, {fs}")
            outcomes.append(experiments.run(lab, name, chain, fs))
    _write_report(outcomes, args.report)
    if args.json:
        print(json.dumps([out.to_json() for out in outcomes], indent=2))
    else:
        console.print(findings_table(outcomes))
        first = outcomes[0]
        console.print(f"guest kernel {first.kernel}, {first.systemd}, accelerator {first.accel}")
    return 0


def cmd_ignition(args) -> int:
    variant = units.Variant(chain=args.chain, fs=args.fs, **({"units_dir": Path(args.units)} if args.units else {}))
    units.check(variant)
    built = image.ensure_image()
    if args.output:
        ignition.write(variant, built, Path(args.output))
        return 0
    print(json.dumps(ignition.render(variant, built), indent=1))
    return 0


def findings_table(outcomes: list[Outcome]) -> Table:
    table = Table(*findings.columns(outcomes), title="What systemd, the kernel and the health checks did")
    styles = {"good": "green", "bad": "red", "warn": "yellow"}
    for out in outcomes:
        table.add_row(*(f"[{styles[tone]}]{text}[/{styles[tone]}]" if tone else text
                        for text, tone in findings.row(out)))
    return table


if __name__ == "__main__":
    sys.exit(main())
