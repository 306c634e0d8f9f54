"""`unitchaos up`, `shell`, `inject`, `heal`, `status` and `down`: one lab instance that
outlives the command, to break and look at by hand."""
import argparse
import json
import os
import sys

from .. import faults
from ..runs import interactive
from .options import name_option, start_options, variant_options


def add_up(sub) -> None:
    up = sub.add_parser("up", help="start a lab instance and leave it running (then: status, shell, inject, down)")
    name_option(up)
    variant_options(up)
    start_options(up)
    up.set_defaults(func=cmd_up)


def cmd_up(args) -> int:
    state = interactive.up(args.name or interactive.DEFAULT_NAME, args.chain, args.fs, args.units, args.cold or None)
    print(interactive.how_to_reach(state))
    return 0


def add_shell(sub) -> None:
    shell = sub.add_parser("shell", help="ssh into the lab instance, or run COMMAND there")
    name_option(shell)
    shell.add_argument("remote", nargs=argparse.REMAINDER, metavar="COMMAND")
    shell.set_defaults(func=cmd_shell)


def cmd_shell(args) -> int:
    argv = interactive.shell_argv(args.name, args.remote)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # ssh's exit status is the command's


def add_inject(sub) -> None:
    inject = sub.add_parser("inject", help="break the lab instance: inject FAULT and wait for the kernel and systemd")
    inject.add_argument("fault", help=f"one of: {', '.join(faults.FAULTS)}")
    inject.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                        help="a fault parameter, as for run (repeatable)")
    name_option(inject)
    inject.add_argument("--json", action="store_true")
    inject.set_defaults(func=cmd_inject)


def cmd_inject(args) -> int:
    done = interactive.inject(args.name, args.fault, args.param)
    print(json.dumps(done, indent=2) if args.json else interactive.render_injected(done))
    return 0


def add_heal(sub) -> None:
    heal = sub.add_parser("heal", help="undo FAULT on the lab instance (where that makes sense)")
    heal.add_argument("fault")
    name_option(heal)
    heal.set_defaults(func=cmd_heal)


def cmd_heal(args) -> int:
    print(json.dumps(interactive.heal(args.name, args.fault)))
    return 0


def add_status(sub) -> None:
    status = sub.add_parser("status", help="the lab instance's units, mount and health checks")
    name_option(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)


def cmd_status(args) -> int:
    seen = interactive.status(args.name)
    print(json.dumps(seen, indent=2) if args.json else interactive.render_status(seen))
    return 0


def add_down(sub) -> None:
    down = sub.add_parser("down", help="stop the lab instance and remove everything of it")
    name_option(down)
    down.set_defaults(func=cmd_down)


def cmd_down(args) -> int:
    print(f"lab instance {interactive.down(args.name)!r} is down")
    return 0
