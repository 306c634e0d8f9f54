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

from . import backends, snapshots, units
from . import image as image_mod
from .instance import Instance
from .paths import artifacts_dir, runs_dir

_counter = itertools.count()


class Lab:
    def __init__(self, release: str = "bookworm", keep: bool = False, memory_mb: int = 1024,
                 cold: bool | None = None, backend: str = "qemu", guest: str = "debian",
                 fcos_image: str | Path | None = None):
        self.fcos_image = backends.check(backend, guest, fcos_image)
        self.backend, self.guest = backend, guest
        sweep_stale_runs()
        self.cold = os.environ.get("UNITCHAOS_COLD") == "1" if cold is None else cold
        self.cold = self.cold or backends.cold_only(backend, guest)
        self.release = release
        self.keep = keep
        self.memory_mb = memory_mb
        self.instances: list[Instance] = []
        self._image: image_mod.Image | None = None

    @property
    def image(self) -> image_mod.Image:
        if self._image is None:
            self._image = image_mod.ensure_image(self.release)
        return self._image

    def new_run_dir(self, label: str) -> Path:
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
        self.instances.append(instance)
        return instance

    def instance(self, chain: str = "bindsto", fs: str = "xfs", units_dir: str | Path | None = None,
                 cold: bool | None = None) -> Instance:
        """A healthy guest running the incident's chain (CHAIN: requires|bindsto, FS: xfs|ext4).
        It starts from a warm snapshot unless COLD (or UNITCHAOS_COLD=1): then it boots."""
        variant = units.Variant(chain=chain, fs=fs, **({"units_dir": Path(units_dir)} if units_dir else {}))
        cold = self.cold if cold is None else (cold or backends.cold_only(self.backend, self.guest))
        if cold:
            return self.new_instance(variant, "cold").boot()
        saved = snapshots.ensure(self, variant)
        return self.new_instance(variant, "warm").restore(saved)

    def release_instance(self, instance: Instance, keep: bool = False) -> Path | None:
        """Stops INSTANCE. With KEEP (or a keeping lab) its artifacts stay in its run
        directory, which is returned; otherwise the directory goes."""
        kept = None
        if keep or self.keep:
            instance.save_artifacts()
        instance.stop()
        if keep or self.keep:
            (instance.run_dir / "owner").unlink(missing_ok=True)
            for leftover in ("root.qcow2", "volume.qcow2", "qmp.sock", "cmd.sock", "ssh-mux"):
                (instance.run_dir / leftover).unlink(missing_ok=True)  # big or dead: not evidence
            kept = instance.run_dir.rename(artifacts_dir() / instance.run_dir.name)
        else:
            shutil.rmtree(instance.run_dir, ignore_errors=True)
        if instance in self.instances:
            self.instances.remove(instance)
        return kept

    def close(self, keep: bool = False) -> list[Path]:
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
            from .vagrant_machine import sweep
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


def _kill_qemu(run: Path) -> None:
    try:
        pid = int((run / "qemu.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(run).encode() in cmdline:  # The pid may have been reused by something else.
        os.kill(pid, signal.SIGKILL)
