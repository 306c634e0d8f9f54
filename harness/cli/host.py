"""`unitchaos doctor`, `image build`, `ignition`, `snapshot` and `prune`: the host, and what
the harness keeps in its cache."""
import json
from pathlib import Path

from rich.table import Table

from .. import units
from ..errors import UserError
from ..images import ignition, image, user_kernel
from ..lab import prune, snapshots
from ..machines import host
from .options import Parser, check_release, console, release_option, variant_options


def add_doctor(sub) -> None:
    doctor = sub.add_parser("doctor", help="check QEMU, KVM, mmdebstrap and free disk")
    doctor.set_defaults(func=cmd_doctor)


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


def add_image(sub) -> None:
    image_cmd = sub.add_parser("image", help="the guest image")
    image_sub = image_cmd.add_subparsers(dest="image_command", required=True, parser_class=Parser)
    build = image_sub.add_parser("build", help="build (or reuse) the guest image and print its path")
    release_option(build)
    build.add_argument("--rebuild", action="store_true", help="build anew even if cached")
    build.set_defaults(func=cmd_image_build)


def cmd_image_build(args) -> int:
    check_release(args)
    if args.user_kernel:
        built = user_kernel.ensure_image(args.release, args.user_kernel, rebuild=args.rebuild)
    else:
        built = image.ensure_image(args.release, rebuild=args.rebuild)
    print(built.path)
    return 0


def add_ignition(sub) -> None:
    ign = sub.add_parser("ignition", help="print the Fedora CoreOS Ignition config for a chain")
    variant_options(ign)
    ign.add_argument("--output", "-o", default=None, help="write it to this file instead of stdout")
    ign.set_defaults(func=cmd_ignition)


def cmd_ignition(args) -> int:
    variant = units.Variant(chain=args.chain, fs=args.fs, **({"units_dir": Path(args.units)} if args.units else {}))
    units.check(variant)
    built = image.ensure_image()
    if args.output:
        ignition.write(variant, built, Path(args.output))
        return 0
    print(json.dumps(ignition.render(variant, built), indent=1))
    return 0


def add_snapshot(sub) -> None:
    snapshot = sub.add_parser("snapshot", help="the warm snapshots experiments start from")
    snapshot_sub = snapshot.add_subparsers(dest="snapshot_command", required=True, parser_class=Parser)
    snapshot_sub.add_parser("list", help="list saved snapshots").set_defaults(func=cmd_snapshot_list)
    snapshot_sub.add_parser("clear", help="remove every snapshot").set_defaults(func=cmd_snapshot_clear)


def cmd_snapshot_list(args) -> int:
    table = Table("snapshot", "kernel", "systemd", "state MB", "cold boot s", "created")
    for name, meta in snapshots.saved():
        table.add_row(name, meta.get("kernel", "?"), meta.get("systemd", "?"),
                      f"{meta['state_bytes'] / 1e6:.0f}", str(meta.get("boot_seconds")), meta.get("created", "?"))
    console.print(table)
    return 0


def cmd_snapshot_clear(args) -> int:
    print(f"removed {snapshots.clear()} snapshot(s)")
    return 0


def add_prune(sub) -> None:
    prune_cmd = sub.add_parser("prune", help="free the cache of images, snapshots and half-written files no run can use")
    prune_cmd.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    prune_cmd.set_defaults(func=cmd_prune)


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
