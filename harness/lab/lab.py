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
from .. import chainfile, progress, units
from ..errors import GuestRefused, UserError
from ..images import image as image_mod, user_kernel
from .instance import Instance
from ..paths import artifacts_dir, runs_dir

_counter = itertools.count()
# Big, or dead once QEMU is gone: never part of the kept evidence.
NOT_EVIDENCE = ("root.qcow2", "volume.qcow2", "old-volume.raw", "qmp.sock", "cmd.sock", "ssh-mux")


class Lab:
    """Hands out instances of one chain on one release and makes sure none outlives its
    owner. Two verbs:

        with Lab(release="bookworm") as lab:
            vm = lab.acquire(chain="bindsto", fs="xfs")  # warm from a snapshot, or booted
            ...
            lab.release(vm)                               # stopped; its run directory goes

    Leaving the `with` block releases whatever is still acquired. KEEP=True keeps every
    released instance's evidence under artifacts/."""
    def __init__(self, release: str = "bookworm", keep: bool = False, memory_mb: int = 1024,
                 cold: bool | None = None, outlive_owner: bool = False,
                 backend: str = "qemu", guest: str = "debian", fcos_image: str | Path | None = None,
                 chain: "chainfile.Chain | None" = None, kernel: user_kernel.UserKernel | None = None):
        self.fcos_image = backends.check(backend, guest, fcos_image)
        if kernel is not None and (backend, guest) != ("qemu", "debian"):
            raise UserError("--kernel boots a kernel package in the harness's own Debian image",
                            "run it with --backend qemu --guest debian (the defaults)")
        self.backend, self.guest = backend, guest
        sweep_stale_runs()
        self.cold = os.environ.get("UNITCHAOS_COLD") == "1" if cold is None else cold
        self.cold = self.cold or backends.cold_only(backend, guest)
        self.guest_release = release
        self.keep = keep
        # OUTLIVE_OWNER: QEMU is not killed when this process dies, so an instance can be
        # handed over to the interactive lab (see interactive.py); the sweep still reaps it.
        self.outlive_owner = outlive_owner
        self.memory_mb = memory_mb
        # The chain every instance of this lab runs (a chain file; default the incident's).
        self.chain = chain or units.incident()
        # A user's kernel package (--kernel) booted on the release's userspace, or None.
        self.kernel = kernel
        self.instances: list[Instance] = []  # acquired and not yet released
        self._image: image_mod.Image | None = None

    @property
    def image(self) -> image_mod.Image:
        """The guest image of this lab's release, built on first use."""
        if self._image is None:
            extras = image_mod.Extras.of(self.chain)
            self._image = (user_kernel.ensure_image(self.guest_release, self.kernel, extras=extras) if self.kernel
                           else image_mod.ensure_image(self.guest_release, extras=extras))
        return self._image

    def acquire(self, chain: str | None = None, fs: str | None = None, units_dir: str | Path | None = None,
                cold: bool | None = None, *, variant: units.Variant | None = None, started: bool = True,
                label: str | None = None, remedy: str | None = None, **boot) -> Instance:
        """A healthy guest running the lab's chain (the chain file's; CHAIN: requires|bindsto
        and FS: xfs|ext4 override its dependency and filesystem; REMEDY: one of vm/remedies laid
        over its units), or VARIANT's.
        It starts from a warm snapshot unless COLD (or UNITCHAOS_COLD=1): then it boots.
        BOOT changes the variant (old_fs, docker_requires_mount): such a guest is not healthy
        by design, so it always boots. STARTED=False: not started at all, for whoever boots
        it their own way (the snapshot maker, bench --survey); LABEL names its run directory.

            vm = lab.acquire(chain="bindsto", fs="xfs")
            vm = lab.acquire(old_fs=True)   # booted with an old filesystem on the volume
        """
        variant = variant or self.variant(chain, fs, units_dir, remedy=remedy, **boot)
        if variant.remedy:
            # The variant's own remedy (a variant passed in carries one too); only a remedy
            # needs the image's manifest read.
            units.check_remedy_fits(variant.remedy, self.guest_release, self.image.manifest.get("package_versions", {}))
        cold = self.cold if cold is None else cold
        if not started:
            return self._new(variant, label or "cold")
        if cold or boot or backends.cold_only(self.backend, self.guest):
            return self._booted_the_kernel(self._new(variant, label or "cold").boot())
        saved = snapshots.ensure(self, variant)
        try:
            instance = self._restored(variant, label, saved)
        except GuestRefused as unhealthy:
            # A faster restore must not hide a broken snapshot: make it again, once. A
            # fresh snapshot that restores unhealthy too is a failure to report. (Checks
            # that only timed out say the host is too busy: a GuestTimeout, no remake.)
            progress.say(f"{unhealthy}; making the snapshot again")
            saved = snapshots.ensure(self, variant, unless=saved)
            instance = self._restored(variant, label, saved)
        return self._booted_the_kernel(instance)

    def _restored(self, variant: units.Variant, label: str | None, saved) -> Instance:
        """An instance resumed from SAVED and confirmed healthy, or GuestRefused (it is released)."""
        instance = self._new(variant, label or "warm")
        try:
            return instance.restore(saved)
        except BaseException:
            # At once, even in a test's lab (which otherwise keeps instances until the test
            # is over): a refused restore's QEMU ran on for 9 minutes beside the new snapshot's
            # cold boot. The error names the failing checks.
            self.release(instance, keep=False)
            raise

    def _booted_the_kernel(self, instance: Instance) -> Instance:
        """INSTANCE, once it is shown to run the user's kernel (--kernel), if there is one."""
        if self.kernel and instance.guest_versions.get("kernel") != self.kernel.uname_r:
            raise GuestRefused(f"the guest runs kernel {instance.guest_versions.get('kernel')}, not "
                               f"{self.kernel.uname_r} of {self.kernel.describe()}",
                               "report it: the image took out the wrong kernel", evidence=instance.run_dir)
        return instance

    def release(self, instance: Instance, keep: bool | None = None, running: bool = False) -> Path | None:
        """Lets INSTANCE go. It is stopped and its run directory removed, unless KEEP (None:
        as this lab was made): then its evidence (console, journal, dmesg, QMP events, unit
        files, outcome) is kept and that directory returned.
        RUNNING: it goes on running after this lab and its owner are gone (`unitchaos up`, a
        failed test kept up for a look); with KEEP its evidence so far is copied out.

            kept = lab.release(vm, keep=True)   # ~/.cache/unitchaos/artifacts/<run>
        """
        keep = self.keep if keep is None else keep
        if running:
            return self._let_run(instance, keep)
        kept = None
        if keep:
            instance.save_artifacts()
        instance.stop()
        if keep:
            (instance.run_dir / "owner").unlink(missing_ok=True)
            for leftover in NOT_EVIDENCE:
                (instance.run_dir / leftover).unlink(missing_ok=True)
            kept = instance.run_dir.rename(artifacts_dir() / instance.run_dir.name)
        else:
            shutil.rmtree(instance.run_dir, ignore_errors=True)
        if instance in self.instances:
            self.instances.remove(instance)
        return kept

    def variant(self, chain: str | None = None, fs: str | None = None, units_dir: str | Path | None = None,
                remedy: str | None = None, **boot) -> units.Variant:
        """The lab's chain with these overrides (None: the chain file's value)."""
        return units.Variant(chain=chain or self.chain.dependency, fs=fs or self.chain.fs, spec=self.chain,
                             **({"units_dir": Path(units_dir)} if units_dir else {}), remedy=remedy, **boot)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for instance in list(self.instances):
            self.release(instance)

    def _new(self, variant: units.Variant, label: str) -> Instance:
        """An instance not yet started, in a run directory stamped with this process as owner."""
        run_dir = runs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_counter)}-{label}-{variant.chain}-{variant.fs}"
        run_dir.mkdir(parents=True)
        (run_dir / "owner").write_text(str(os.getpid()))
        instance = Instance(self.image, variant, run_dir, self.memory_mb,
                            machine_class=backends.machine_class(self.backend, self.fcos_image, self.image,
                                                                 variant, run_dir))
        instance.machine.die_with_owner = not self.outlive_owner
        self.instances.append(instance)
        return instance

    def _let_run(self, instance: Instance, keep: bool) -> Path | None:
        kept = None
        if keep:
            instance.save_artifacts()
            kept = Path(shutil.copytree(instance.run_dir, artifacts_dir() / instance.run_dir.name,
                                        ignore=shutil.ignore_patterns("owner", *NOT_EVIDENCE)))
        # Its owner is now its own QEMU: the sweep reaps the directory once QEMU is gone.
        (instance.run_dir / "owner").write_text(str(instance.machine.process.pid))
        if instance in self.instances:
            self.instances.remove(instance)
        return kept


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
