"""The lab: hands out booted instances and makes sure none outlives its owner.

Every instance gets a run directory under the cache, stamped with the owning process.
QEMU dies with its owner (PR_SET_PDEATHSIG); a run directory whose owner is gone (a
killed pytest, a CI runner that was stopped) is swept away by the next lab.
"""
import itertools
import os
import shutil
import signal
import time
from pathlib import Path

from . import backends, snapshots
from .. import chainfile, units
from ..images import image as image_mod
from .instance import Instance
from ..paths import artifacts_dir, runs_dir

_counter = itertools.count()
# Big, or dead once QEMU is gone: never part of the kept evidence.
NOT_EVIDENCE = ("root.qcow2", "volume.qcow2", "old-volume.raw", "qmp.sock", "cmd.sock", "ssh-mux")


class Lab:
    """Hands out instances (warm from a snapshot, or cold-booted) and tears them down: on
    `close`, on leaving a `with` block, or one by one with `release_instance`."""
    def __init__(self, release: str = "bookworm", keep: bool = False, memory_mb: int = 1024,
                 cold: bool | None = None, hold: bool = False, outlive_owner: bool = False,
                 backend: str = "qemu", guest: str = "debian", fcos_image: str | Path | None = None,
                 chain: "chainfile.Chain | None" = None):
        self.fcos_image = backends.check(backend, guest, fcos_image)
        self.backend, self.guest = backend, guest
        sweep_stale_runs()
        self.cold = os.environ.get("UNITCHAOS_COLD") == "1" if cold is None else cold
        self.cold = self.cold or backends.cold_only(backend, guest)
        self.release = release
        self.keep = keep
        # HOLD: experiments leave their instance running for the lab's owner (the pytest
        # fixture), which keeps or releases it once it knows whether the test failed.
        self.hold = hold
        # OUTLIVE_OWNER: QEMU is not killed when this process dies, so an instance can be
        # handed over to the interactive lab (see interactive.py); the sweep still reaps it.
        self.outlive_owner = outlive_owner
        self.memory_mb = memory_mb
        # The chain every instance of this lab runs (a chain file; default the incident's).
        self.chain = chain or units.incident()
        self.instances: list[Instance] = []
        self._image: image_mod.Image | None = None

    @property
    def image(self) -> image_mod.Image:
        """The guest image of this lab's release, built on first use."""
        if self._image is None:
            self._image = image_mod.ensure_image(self.release, extras=image_mod.Extras.of(self.chain))
        return self._image

    def new_run_dir(self, label: str) -> Path:
        """A fresh run directory under the cache, stamped with this process as its owner."""
        path = runs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_counter)}-{label}"
        path.mkdir(parents=True)
        (path / "owner").write_text(str(os.getpid()))
        return path

    def new_instance(self, variant: units.Variant, label: str) -> Instance:
        """An instance not yet started, with a run directory of its own."""
        run_dir = self.new_run_dir(f"{label}-{variant.chain}-{variant.fs}")
        instance = Instance(self.image, variant, run_dir, self.memory_mb,
                            machine_class=backends.machine_class(self.backend, self.fcos_image, self.image,
                                                                 variant, run_dir))
        instance.machine.die_with_owner = not self.outlive_owner
        self.instances.append(instance)
        return instance

    def instance(self, chain: str | None = None, fs: str | None = None, units_dir: str | Path | None = None,
                 cold: bool | None = None, remedy: str | None = None, **boot) -> Instance:
        """A healthy guest running the lab's chain (the chain file's; CHAIN: requires|bindsto
        and FS: xfs|ext4 override its dependency and filesystem; REMEDY: one of vm/remedies
        laid over its units).
        It starts from a warm snapshot unless COLD (or UNITCHAOS_COLD=1): then it boots.
        BOOT changes the variant (old_fs, docker_requires_mount): such a guest is not healthy
        by design, so it always boots."""
        variant = self.variant(chain, fs, units_dir, remedy=remedy, **boot)
        units.check_remedy_fits(remedy, self.release, self.image.manifest.get("package_versions", {}))
        cold = self.cold if cold is None else cold
        if cold or boot or backends.cold_only(self.backend, self.guest):
            return self.new_instance(variant, "cold").boot()
        saved = snapshots.ensure(self, variant)
        return self.new_instance(variant, "warm").restore(saved)

    def variant(self, chain: str | None = None, fs: str | None = None, units_dir: str | Path | None = None,
                remedy: str | None = None, **boot) -> units.Variant:
        """The lab's chain with these overrides (None: the chain file's value)."""
        return units.Variant(chain=chain or self.chain.dependency, fs=fs or self.chain.fs, spec=self.chain,
                             **({"units_dir": Path(units_dir)} if units_dir else {}), remedy=remedy, **boot)

    def done_with(self, instance: Instance) -> None:
        """An experiment is finished with INSTANCE: release it, unless the lab holds it."""
        if not self.hold:
            self.release_instance(instance)

    def detach(self, instance: Instance) -> None:
        """Lets INSTANCE go on running after this lab closes (its owner is now its QEMU)."""
        (instance.run_dir / "owner").write_text(str(instance.machine.process.pid))
        if instance in self.instances:
            self.instances.remove(instance)

    def release_instance(self, instance: Instance, keep: bool = False) -> Path | None:
        """Stops INSTANCE. With KEEP (or a keeping lab) its artifacts stay in its run
        directory, which is returned; otherwise the directory goes."""
        kept = None
        if keep or self.keep:
            instance.save_artifacts()
        instance.stop()
        if keep or self.keep:
            (instance.run_dir / "owner").unlink(missing_ok=True)
            for leftover in NOT_EVIDENCE:
                (instance.run_dir / leftover).unlink(missing_ok=True)
            kept = instance.run_dir.rename(artifacts_dir() / instance.run_dir.name)
        else:
            shutil.rmtree(instance.run_dir, ignore_errors=True)
        if instance in self.instances:
            self.instances.remove(instance)
        return kept

    def keep_copy(self, instance: Instance) -> Path:
        """Saves INSTANCE's artifacts and copies them out of its run directory, leaving it
        running (a failed test's instance kept up for a look)."""
        instance.save_artifacts()
        return Path(shutil.copytree(instance.run_dir, artifacts_dir() / instance.run_dir.name,
                                    ignore=shutil.ignore_patterns("owner", *NOT_EVIDENCE)))

    def close(self, keep: bool = False) -> list[Path]:
        """Releases every instance still held; returns the directories kept (KEEP)."""
        return [kept for instance in list(self.instances) if (kept := self.release_instance(instance, keep))]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sweep_stale_runs() -> list[Path]:
    """Removes run directories whose owning process is gone, killing any QEMU left in them."""
    removed = []
    for run in runs_dir().iterdir():
        try:
            owner = int((run / "owner").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is not None and _alive(owner):
            continue
        try:
            if owner is None and time.time() - run.stat().st_mtime < 60:
                continue  # Being created right now.
        except FileNotFoundError:
            continue  # Another lab swept it first.
        _kill_qemu(run)
        if (run / "vagrant.json").exists():
            from ..machines.vagrant_machine import sweep
            sweep(run)
        shutil.rmtree(run, ignore_errors=True)
        removed.append(run)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def qemu_of(run: Path) -> int | None:
    """The pid of the QEMU running in RUN's directory, if one is."""
    try:
        pid = int((run / "qemu.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # The pid may have been reused by something else; a zombie's command line is empty.
    return pid if str(run).encode() in cmdline else None


def _kill_qemu(run: Path) -> None:
    if (pid := qemu_of(run)) is not None:
        os.kill(pid, signal.SIGKILL)
