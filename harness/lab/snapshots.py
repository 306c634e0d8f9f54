"""Warm snapshots: boot a configuration once to healthy, save the paused guest (RAM,
devices and both disks), and start every later experiment from there in about a second.

A snapshot is keyed by everything that must match for QEMU to load it: the image, the
rendered unit files, memory, CPUs, the QEMU version, the accelerator and the device
layout. It is written to a temporary directory and renamed into place only when whole,
so a half-written snapshot is never used; one whose files went missing is rebuilt.
"""
import fcntl
import hashlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ..machines import accel, tcg
from .. import progress
from ..errors import GuestError, UserError, disk_full_means
from ..images.image import Image
from .instance import AGENT_PORTS, UNITS_FW_CFG, VERSION_KEYS
from ..machines.machine import Machine, SavedState
from ..paths import cache_dir
from ..units import Variant, render

# Bump when the saved layout or the way a guest is brought to healthy changes.
SNAPSHOT_VERSION = "3"
# While a snapshot is made, the guest's RAM is a file in the staging directory that fills
# as the guest touches its pages; the device state and the disks join it there. Beyond
# the RAM, this much more must be free.
SAVE_MARGIN_MB = 256
FREE_THE_DISK = "free some space (unitchaos prune), point UNITCHAOS_CACHE at a larger disk, or run with --cold"


def snapshots_dir() -> Path:
    path = cache_dir() / "snapshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def snapshot_key(image: Image, variant: Variant, memory_mb: int, accel_name: str, argv: str) -> str:
    # Everything of the chain the guest sees: its image (packages, files), unit files,
    # volume and ports (in ARGV).
    rendered = render(variant, tcg.deep_check_env(accel_name, tcg.release_of(image)))
    parts = [SNAPSHOT_VERSION, image.key, json.dumps(rendered, sort_keys=True), str(memory_mb),
             accel_name, accel.qemu_version(), argv, json.dumps(variant.spec.guest_view(), sort_keys=True)]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return f"{variant.spec.name}-{variant.chain}-{variant.fs}-{digest}"


def ensure(lab, variant: Variant, unless: SavedState | None = None) -> SavedState:
    """The saved healthy guest for VARIANT in LAB's image, made first if needed. UNLESS: a
    snapshot that restored unhealthy; if it is still the one saved, it is made again (if
    another worker made it again meanwhile, that one is used)."""
    accel_name = accel.choose(lab.image.kernel)
    argv = argv_shape(lab.image, lab.memory_mb, accel_name, variant.spec)
    key = snapshot_key(lab.image, variant, lab.memory_mb, accel_name, argv)
    path = snapshots_dir() / key
    with open(snapshots_dir() / f"{key}.lock", "w") as lock:
        # Two workers asking at once: one saves, the other waits and then loads it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Whoever saves holds this lock: a staging directory of this key is a killed run's.
        for abandoned in snapshots_dir().glob(f".{key}.*"):
            shutil.rmtree(abandoned, ignore_errors=True)
        saved = _load(path, lab.image)
        if saved is not None and unless is not None and saved.made == unless.made:
            progress.say(f"discarding snapshot {path.name}: it restored unhealthy")
            saved = None
        if saved is None:
            shutil.rmtree(path, ignore_errors=True)
            _create(path, lab, variant, accel_name, argv)
            saved = _load(path, lab.image)
    return saved


def argv_shape(image: Image, memory_mb: int, accel_name: str, chain=None) -> str:
    """QEMU's command line with the per-run paths and ports left out: what must match."""
    extra = {"volume_size": chain.size} if chain else {}
    machine = Machine(image, Path("/RUN"), memory_mb=memory_mb, fw_cfg={UNITS_FW_CFG: Path("/RUN/units.tar")},
                      extra_ports=(*AGENT_PORTS, *(chain.ports if chain else ())), **extra)
    machine.accel = accel_name
    machine.ram_file = Path("/RUN/ram")
    machine.ports = {guest: 0 for guest in machine.guest_ports}
    return " ".join(machine.qemu_argv())


def _load(path: Path, image: Image) -> SavedState | None:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    saved = SavedState(state=path / "state", ram=path / "ram", root=path / "root.qcow2",
                       volume=path / "volume.qcow2", accel=meta["accel"],
                       guest_versions={key: meta[key] for key in VERSION_KEYS if key in meta},
                       made=_made(path))
    if not all(p.exists() for p in (saved.state, saved.ram, saved.root, saved.volume)) or not image.root.exists():
        return None
    if saved.state.stat().st_size != meta.get("state_bytes") or saved.ram.stat().st_size != meta.get("ram_bytes"):
        return None
    # The root disk's backing file is the image: gone or replaced means this snapshot is stale.
    try:
        backing = backing_file(saved.root)
    except ValueError:
        return None
    if backing != str(image.root):
        return None
    # `image build --rebuild` makes a new root disk at the same path: the overlay's
    # clusters would then sit on another disk's. Same path is not enough.
    if meta.get("image_stamp") != image_stamp(image):
        return None
    return saved


# A disk's backing file, by (path, inode, mtime): asked of qemu-img once per process, not
# on every restore (a qemu-img run is 20-40 ms of a restore's quarter second).
_backing: dict[tuple, str | None] = {}


def backing_file(disk: Path) -> str | None:
    """DISK's backing file as qemu-img names it (None: it has none). OSError if DISK is
    gone, ValueError if qemu-img cannot read it, subprocess.TimeoutExpired if it hangs."""
    st = disk.stat()
    key = (str(disk), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _backing:
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)],
                              capture_output=True, text=True, timeout=30)
        _backing[key] = json.loads(info.stdout).get("backing-filename")
    return _backing[key]


def _made(path: Path) -> str:
    """Tells one save of the snapshot at PATH from another (a remade one has new files)."""
    try:
        st = (path / "meta.json").stat()
    except OSError:
        return ""
    return f"{st.st_ino}:{st.st_mtime_ns}"


def image_stamp(image: Image) -> str:
    """Tells one build of IMAGE's root disk from another at the same path."""
    st = image.root.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _create(path: Path, lab, variant: Variant, accel_name: str, argv: str) -> None:
    _require_space(lab.memory_mb)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=snapshots_dir()))
    instance = lab.acquire(variant=variant, started=False, label="snapshot")
    instance.machine.ram_file = staging / "ram"
    keep, disk_full = False, False
    try:
        with disk_full_means(f"saving a snapshot in {snapshots_dir()}"), \
                progress.step(f"Making warm snapshot {path.name} (cold boot to healthy, then save)"):
            try:
                instance.boot()
                instance.require_healthy()
                instance.wait_for_deep_health()
                started = time.monotonic()
                instance.machine.save_state(staging / "state")
            except (GuestError, UserError) as failure:
                if (sign := _ran_out_of_space(instance.machine)) is None:
                    raise
                disk_full = True
                raise UserError(f"disk full while saving a snapshot in {snapshots_dir()}: {sign}",
                                FREE_THE_DISK) from failure
            save_seconds = time.monotonic() - started
            instance.stop()
            for disk in ("root.qcow2", "volume.qcow2"):
                shutil.move(str(instance.run_dir / disk), staging / disk)
            # qemu, memory_mb and argv_shape let `unitchaos prune` tell a snapshot no run can use.
            meta = {"accel": accel_name, "qemu": accel.qemu_version(), "memory_mb": lab.memory_mb,
                    "argv_shape": argv, "volume_size": variant.spec.size, "ports": list(variant.spec.ports),
                    "chain": variant.spec.name, "image_stamp": image_stamp(lab.image),
                    "state_bytes": (staging / "state").stat().st_size,
                    "ram_bytes": (staging / "ram").stat().st_size,
                    "boot_seconds": round(instance.boot_seconds, 2), "save_seconds": round(save_seconds, 2),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    **instance.guest_versions}
            (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            staging.rename(path)
    except Exception:
        keep = not disk_full  # not on Ctrl-C either: that wants out at once
        raise
    finally:
        # The half-written snapshot goes first: releasing a failed guest asks it for its
        # journal, minutes on a starved guest, and a Ctrl-C then (trixie-backports, 16:21)
        # once skipped this and left a 1 GB staging directory behind.
        try:
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            _release(lab, instance, keep)


def _release(lab, instance, keep: bool) -> None:
    """Stops the snapshot's guest. A boot that failed keeps its console and journal,
    which the test that wanted the snapshot never gets to see otherwise."""
    if keep:
        try:
            kept = lab.release(instance, keep=True)
            progress.say(f"the guest that was to be saved is kept for a look: {kept}")
            return
        except OSError:
            pass  # no room for the evidence either: let the failure itself be reported
    lab.release(instance, keep=lab.keep)


def _require_space(memory_mb: int) -> None:
    need = memory_mb + SAVE_MARGIN_MB
    free = shutil.disk_usage(snapshots_dir()).free >> 20
    if free < need:
        raise UserError(f"disk full: a warm snapshot needs about {need} MB free in {snapshots_dir()}, "
                        f"and {free} MB are", FREE_THE_DISK)


def _ran_out_of_space(machine: Machine) -> str | None:
    """What says the disk filled up under a snapshot being made, or None. A RAM page
    that gets no block kills QEMU with SIGBUS, mid-boot; the migration's `cat` says
    ENOSPC on QEMU's stderr; either way the failure itself names no disk."""
    if machine.process is not None and machine.process.poll() == -signal.SIGBUS:
        return "QEMU died of SIGBUS writing the guest's file-backed RAM"
    stderr = machine.run_dir / "qemu.stderr"
    if stderr.exists() and "No space left on device" in stderr.read_text(errors="replace"):
        return "QEMU: No space left on device"
    return None


def saved() -> list[tuple[str, dict]]:
    """(name, meta.json's contents) of every saved snapshot, by name."""
    return [(meta.parent.name, json.loads(meta.read_text())) for meta in sorted(snapshots_dir().glob("*/meta.json"))]


def clear() -> int:
    """Removes every snapshot; returns how many there were."""
    count = 0
    for entry in snapshots_dir().iterdir():
        if entry.is_dir():
            count += not entry.name.startswith(".")
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return count
