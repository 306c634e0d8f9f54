"""The `unitchaos` command: parse, call the library, print. No VM logic lives here.

One module per group of commands; each command's parser is built next to its cmd_ function
(add_run builds `run`, cmd_run runs it), and COMMANDS lists them in the order --help shows."""
import os
import signal
import sys

from ..errors import GuestError, GuestKernelPanic, GuestTimeout, MonitorError, UnitchaosError, UserError
from . import compare, fis, host, lab_instance, run, serve, verdict
from .options import Parser

COMMANDS = (
    host.add_doctor, host.add_image, run.add_run, run.add_demo, host.add_ignition, compare.add_versions,
    verdict.add_matrix, verdict.add_verdict, run.add_report, compare.add_bench, serve.add_serve, fis.add_fis, serve.add_chaos,
    lab_instance.add_up, lab_instance.add_shell, lab_instance.add_inject, lab_instance.add_heal,
    lab_instance.add_status, lab_instance.add_down, host.add_snapshot, host.add_prune,
)


def main(argv: list[str] | None = None) -> int:
    """Runs one `unitchaos` command line; its exit code (2: bad input, 1: the guest or a bug)."""
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


def _parser() -> Parser:
    parser = Parser(prog="unitchaos", description="Break a systemd unit chain's disk in a local VM "
                    "and see what systemd, the kernel and the health check do.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
