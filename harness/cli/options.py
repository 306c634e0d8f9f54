"""What several commands share: the argument parser's class, the options they have in
common, the checks that run before any VM work, and the console tables print to."""
import argparse
import sys
from pathlib import Path

from rich.console import Console

from .. import progress, units
from ..evidence import report
from ..evidence.outcome import Outcome
from ..images import image, user_kernel
from ..lab import backends
from ..lab.lab import Lab
from ..runs import interactive

# Wide enough for the findings table when output goes to a log rather than a terminal.
console = Console(width=None if sys.stdout.isatty() else 160)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line and exit 2, like every other bad input.
        print(f"unitchaos: error: {message} (fix: see 'unitchaos --help')", file=sys.stderr)
        sys.exit(2)


def variant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chain", default=None, help="how the service depends on the mount: "
                        f"{' or '.join(units.CHAINS)} (default: the chain file's, bindsto for the incident)")
    parser.add_argument("--fs", default=None, help=f"the volume's filesystem: {' or '.join(units.FILESYSTEMS)} "
                        "(default: the chain file's, xfs for the incident)")
    parser.add_argument("--units", default=None, help="a directory of your own unit files (default: the chain file's)")


def chain_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chain-file", default=None, metavar="FILE",
                        help=f"the chain to run (TOML; default: ${units.chainfile.ENV}, else ./unitchaos.toml, "
                             "else chains/ecs-docker.toml, the incident's)")


def release_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--release", default="bookworm",
                        help=f"the guest's Debian release: {', '.join(image.RELEASES)} (default bookworm)")
    kernel_option(parser)


def kernel_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel", default=None, metavar="FILE.deb",
                        help="boot this linux-image package (a bisect build, another release's kernel) "
                             "on the release's userspace instead of its own kernel")


def check_release(args) -> None:
    """An unknown --release or a --kernel that is no kernel package fails here, before any
    image or VM work; args.user_kernel is then the package (or None)."""
    image.check_release(args.release)
    args.user_kernel = user_kernel.inspect(args.kernel) if getattr(args, "kernel", None) else None


def kernel_said(outcome: Outcome) -> str:
    """The line naming the guest's kernel: with --kernel, the package it came from."""
    said = f"guest kernel {outcome.kernel}, {outcome.systemd}, accelerator {outcome.accel}"
    if outcome.user_kernel:
        said += f"; --kernel {outcome.user_kernel.describe()} booted as {outcome.kernel}"
    return said


def name_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=None,
                        help=f"which lab instance (default: the only one up; '{interactive.DEFAULT_NAME}' for up)")


def keep_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-artifacts", action="store_true",
                        help="keep every experiment's artifacts (console, journal, health samples, timeline, ...)")
    parser.add_argument("--report", type=Path, metavar="FILE.html", default=None,
                        help="write an HTML report of this run (keeps the artifacts it links to)")


def backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="qemu", help="what runs the guest: qemu (the harness's own, "
                        "warm snapshots) or vagrant (vagrant-libvirt, the repository's Vagrantfile; cold boots)")
    parser.add_argument("--guest", default="debian", help="debian (the lab image) or fcos (Fedora CoreOS "
                        "provisioned by Ignition; needs --image)")
    parser.add_argument("--image", default=None, help=f"the Fedora CoreOS qemu qcow2 to boot "
                        f"(default: ${backends.FCOS_IMAGE_ENV})")


def start_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cold", action="store_true",
                        help="boot every instance instead of starting it from a warm snapshot")


def check_units(args) -> None:
    """Bad chain files, unit files, chain, fs or remedy fail here, before any image or VM work.
    Commands without --chain-file run the incident's chain."""
    chain = units.load_chain(args.chain_file) if hasattr(args, "chain_file") else units.incident()
    args.chain_spec = chain
    units.check(units.Variant(chain=args.chain or chain.dependency, fs=args.fs or chain.fs, spec=chain,
                              remedy=getattr(args, "remedy", None),
                              **({"units_dir": Path(args.units)} if args.units else {})))


def check_report_path(path: Path | None) -> None:
    """A report that cannot be written fails before half an hour of experiments, not after."""
    if path is not None:
        report.check_output(path)


def write_report(outcomes: list[Outcome], path: Path | None) -> None:
    if path is not None:
        report.write([Path(out.artifacts) for out in outcomes], path)
        progress.say(f"report: {path}")


def lab(args, **options) -> Lab:
    """The Lab the command's --release, --kernel, --cold, --backend, --guest and --image ask for."""
    return Lab(release=args.release, cold=args.cold or None, backend=args.backend, guest=args.guest, fcos_image=args.image,
               chain=getattr(args, "chain_spec", None), kernel=getattr(args, "user_kernel", None), **options)
