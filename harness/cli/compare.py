"""`unitchaos versions` and `bench`: the same experiments across guest releases, and the
harness's own speed."""
import json
from pathlib import Path

from .. import progress, units
from ..errors import UserError
from ..images import image, user_kernel
from ..runs import bench, experiments, versions
from .options import console, kernel_option, start_options, variant_options


def add_versions(sub) -> None:
    versions_cmd = sub.add_parser("versions", help="the same experiments on each guest release: where kernel and systemd change outcomes")
    versions_cmd.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                              help="experiments to run with --chain/--fs (default: the incident suite)")
    versions_cmd.add_argument("--release", action="append", dest="releases", metavar="RELEASE",
                              help=f"repeatable: {', '.join(image.RELEASES)} (default: all)")
    versions_cmd.add_argument("--json", action="store_true")
    versions_cmd.add_argument("--remedy", action="append", default=[], metavar="NAME",
                              help=f"repeatable: also run each experiment with this remedy ({', '.join(units.remedies())}, "
                                   "or all): outcome x kernel x remedy")
    versions_cmd.add_argument("--runs", type=int, default=1,
                              help="runs per experiment and release: what varies between them is not "
                                   "counted as a difference between releases (default 1)")
    versions_cmd.add_argument("--from", action="append", dest="saved", default=[], metavar="FILE",
                              help="repeatable: print one table from matrices saved with --json (one release "
                                   "each, say, run apart or on other machines); boots nothing")
    versions_cmd.add_argument("--kernel-lines", metavar="DIR", default=None,
                              help="also write the kernel lines seen, one <release>-<kernel>.json per release")
    kernel_option(versions_cmd)
    variant_options(versions_cmd)
    start_options(versions_cmd)
    versions_cmd.set_defaults(func=cmd_versions)


def cmd_versions(args) -> int:
    if args.saved:
        result = versions.combine([versions.load(Path(path)) for path in args.saved])
        print(versions.to_json(result)) if args.json else console.print(versions.render(result))
        return 0
    rows = [(name, args.chain, args.fs) for name in args.experiments] or versions.default_rows()
    releases = list(dict.fromkeys(args.releases or image.RELEASES))
    for release in releases:
        image.check_release(release)
    kernel = user_kernel.inspect(args.kernel) if args.kernel else None
    remedies = units.remedies() if "all" in args.remedy else list(dict.fromkeys(args.remedy))
    if remedies:
        rows = versions.with_remedies(rows, remedies)
    for name, chain, fs, *remedy in rows:
        experiments.get(name)
        units.check(units.Variant(chain=chain, fs=fs, remedy=remedy[0] if remedy else None,
                                  **({"units_dir": Path(args.units)} if args.units else {})))
    result = versions.run(rows, releases, cold=args.cold, units_dir=args.units, runs=args.runs, kernel=kernel)
    if args.kernel_lines:
        for path in versions.save_kernel_lines(result, Path(args.kernel_lines)):
            progress.say(f"kernel lines: {path}")
    if args.json:
        print(versions.to_json(result))
    else:
        console.print(versions.render(result))
    return 0


def add_bench(sub) -> None:
    bench_cmd = sub.add_parser("bench", help="measure cold boot vs warm restore and the incident suite")
    bench_cmd.add_argument("--runs", type=int, default=3, help="runs per figure (median, min, max)")
    bench_cmd.add_argument("--workers", type=int, default=None, help="parallel VMs (default: cores, memory allowing)")
    bench_cmd.add_argument("--json", action="store_true")
    bench_cmd.add_argument("--no-suites", action="store_true", help="only image, cold boot and restore (minutes, not half an hour)")
    bench_cmd.add_argument("--computed-cold", action="store_true",
                           help="compute each experiment's cold-boot time (cold boot + warm experiment - restore) "
                                "instead of running the suite cold, serial and parallel (saves ~half an hour)")
    bench_cmd.add_argument("--survey", action="store_true",
                           help="cold boot under each QEMU option and kernel argument of the lean-guest survey")
    bench_cmd.add_argument("--only", action="append", metavar="WORDS",
                           help="with --survey: only the options whose label contains WORDS (repeatable), and the default")
    bench_cmd.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    if args.runs < 1:
        raise UserError(f"--runs {args.runs} is not a number of runs", "use --runs 1 or more")
    if args.survey:
        figures = bench.survey(runs=args.runs, only=args.only)
        print(json.dumps(figures, indent=2) if args.json else bench.render_survey(figures))
        return 0
    figures = bench.run(runs=args.runs, workers=args.workers, suites=not args.no_suites,
                        cold_suites=not args.computed_cold)
    print(json.dumps(figures, indent=2) if args.json else bench.render(figures))
    return 0
