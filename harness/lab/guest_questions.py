"""What a scenario asks of an instance's guest beyond the chain's own checks: the volume as
the guest sees it, units, the journal and the console, and QEMU's events. GuestQuestions is
mixed into Instance; it needs `machine`, `chain` (for the volume's mount point) and
`fault_log` (for what the last fault should make the kernel say)."""
import shlex

from .. import faults

# One O_DIRECT 4 KiB read of the raw volume, timed in the guest: a single block request,
# the median of 8, in milliseconds.
_DIRECT_READ_MS = ("python3 -c 'import mmap,os,time; fd=os.open(\"/dev/vdb\",os.O_RDONLY|os.O_DIRECT); "
                   "b=mmap.mmap(-1,4096); t=[]\nfor i in range(8):\n s=time.monotonic(); os.preadv(fd,[b],i*(1<<20)); "
                   "t.append(time.monotonic()-s)\nprint(sorted(t)[4]*1000)'")
_SYNCED = "/run/unitchaos-synced"


class GuestQuestions:
    """The volume, units, journal, console and QEMU events of one instance (see the module)."""

    # -- the volume -----------------------------------------------------------------

    def device_state(self) -> str:
        """systemd's ActiveState of the volume's device unit (dev-vdb.device): "active" while
        the kernel still has the disk, "inactive" once it is unplugged."""
        return self.machine.unit_state("dev-vdb.device")

    def volume_io_fails(self) -> bool:
        """Does I/O on the mounted volume fail with EIO (a filesystem shut down under a
        mount that is still listed)?"""
        result = self.machine.run(f"stat {shlex.quote(self.chain.mount_point)}/")
        return not result.ok and "Input/output error" in result.stderr

    def mount_listed(self) -> bool:
        """Is the volume's mount point in /proc/self/mountinfo (what systemd goes by)?"""
        result = self.machine.run(f"awk '$5 == \"{self.chain.mount_point}\"' /proc/self/mountinfo")
        return bool(result.stdout.strip())

    def mount_options(self) -> str:
        """The volume\'s filesystem type and mount options, or "" if it is not mounted."""
        return self.machine.run(f"findmnt -no FSTYPE,OPTIONS {shlex.quote(self.chain.mount_point)} || true").stdout.strip()

    def source_of(self, path: str | None = None) -> str:
        """The block device that holds PATH (default: the volume's mount point) now.

            assert vm.source_of() == "/dev/vda"   # the mount failed: the root disk took it
        """
        return self.machine.succeed(f"findmnt -n -o SOURCE --target {shlex.quote(path or self.chain.mount_point)}").strip()

    def volume_read_ms(self, timeout: float = 30) -> float:
        """How long one direct 4 KiB read of the raw volume takes, in ms (median of 8)."""
        return float(self.machine.succeed(_DIRECT_READ_MS, timeout=timeout))

    def write_to_volume(self, blocks: int = 16) -> bool:
        """Writes BLOCKS 4 KiB blocks to a file on the volume and syncs them; did it work?"""
        return self.machine.run(f"dd if=/dev/zero of={shlex.quote(self.chain.mount_point)}/.unitchaos-write "
                                f"bs=4k count={blocks} conv=fsync").ok

    def start_synced_write(self) -> None:
        """Starts one synced 4 KiB write to the volume in the background (see synced_write_done)."""
        self.machine.run(f"rm -f {_SYNCED}; (dd if=/dev/zero of={shlex.quote(self.chain.mount_point)}/.unitchaos-sync "
                         f"bs=4k count=1 oflag=dsync; touch {_SYNCED}) >/dev/null 2>&1 &")

    def synced_write_done(self) -> bool:
        """Has the write start_synced_write began come back (successfully or not)?"""
        return self.machine.run(f"test -e {_SYNCED}").ok

    def wait_for_synced_write(self, timeout: float = 30) -> None:
        """Waits until the write start_synced_write began has come back."""
        __tracebackhide__ = True
        self.machine.wait_until_succeeds(f"test -e {_SYNCED}", timeout=timeout)

    def wait_until_volume_reads(self, timeout: float = 20) -> None:
        """Waits until a direct read of the raw volume (not through its filesystem) works."""
        __tracebackhide__ = True
        self.machine.wait_until_succeeds("dd if=/dev/vdb of=/dev/null bs=4k count=1 iflag=direct", timeout=timeout)

    def root_used_mb(self) -> int:
        """MB used on the root disk (where Docker writes when the volume is not mounted)."""
        return int(self.machine.succeed("df --output=used -B1M / | tail -1"))

    def load_agent_image(self) -> None:
        """Loads the agent's container image into Docker (from the image's own copy)."""
        self.machine.succeed("docker load -q -i /usr/share/unitchaos/ecs-agent.tar", timeout=120)

    def wait_for_qemu_event(self, event: str, timeout: float = 5) -> dict:
        """The next QMP event EVENT from this instance's QEMU (e.g. BLOCK_IO_ERROR)."""
        __tracebackhide__ = True
        return self.machine.monitor.wait_for_event(event, timeout=timeout)

    # -- the kernel, units, the journal -----------------------------------------------

    def wait_for_kernel_word(self, timeout: float = 60) -> str:
        """The kernel line that shows the last fault landed, by its own pattern for this
        instance's filesystem (faults.XFS_SHUTDOWN for a yank on XFS).

            vm.inject("yank")
            vm.wait_for_kernel_word()
        """
        __tracebackhide__ = True
        fault = faults.get(self.fault_log[-1]["fault"])
        return self.wait_for_kernel_message(fault.kernel_word[self.variant.fs], timeout)

    def unit_state(self, unit: str) -> str:
        """UNIT's ActiveState ("active", "inactive", "failed", "deactivating", ...)."""
        return self.machine.unit_state(unit)

    def wait_for_unit(self, unit: str, state: str = "active", timeout: float = 60) -> None:
        """Waits until UNIT's ActiveState is STATE; fails at once if the unit failed instead."""
        __tracebackhide__ = True
        self.machine.wait_for_unit(unit, state, timeout)

    def wait_for_port(self, guest_port: int, timeout: float = 60) -> None:
        """Waits until something in the guest listens on GUEST_PORT."""
        __tracebackhide__ = True
        self.machine.wait_for_port(guest_port, timeout)

    def starts_held_by_a_gone_device(self) -> dict | None:
        """systemd's start jobs that can only wait, because the one they wait for is a
        device's that the kernel no longer has. After an unplug, whatever pulls the volume's
        mount in (a `docker run` waking docker.socket, then docker.service) queues a start
        job for the mount, which waits for the device's; that one runs until the device's job
        timeout (90 s by default) and nothing else can end it. Seen in a bookworm guest
        (2026-12-02): the three jobs queued within 5 s of the `docker run` and unchanged 30 s
        later. {"waiting": units whose start job waits, in queue order, "device": the device
        unit, "gives_up_after": its job timeout as systemd writes it, None for never}, or None."""
        jobs = [line.split() for line in self.machine.run("systemctl list-jobs --no-legend --no-pager").stdout.splitlines()]
        jobs = sorted((job for job in jobs if len(job) >= 4 and job[0].isdigit() and job[2] == "start"),
                      key=lambda job: int(job[0]))
        devices = [job[1] for job in jobs if job[1].endswith(".device") and job[3] == "running"]
        waiting = [job[1] for job in jobs if job[3] == "waiting"]
        if not devices or not waiting:
            return None
        for device, shown in self.machine.unit_properties(devices, ["ActiveState", "JobRunningTimeoutUSec"]).items():
            if shown.get("ActiveState") == "inactive":  # the kernel has no such device
                timeout = shown.get("JobRunningTimeoutUSec")
                return {"waiting": waiting, "device": device,
                        "gives_up_after": None if timeout in (None, "", "infinity") else timeout}
        return None

    def units_matching(self, pattern: str) -> list[str]:
        """The active units whose names match PATTERN (a systemctl glob: 'chaos-burncpu-*')."""
        out = self.machine.succeed(f"systemctl list-units {shlex.quote(pattern)} --state=active --no-legend --plain")
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def cpus(self) -> int:
        """How many CPUs the guest has (nproc)."""
        return int(self.machine.succeed("nproc"))

    def journal(self, unit: str | None = None, pid: int | None = None) -> list[str]:
        """This boot's journal messages (no metadata), of UNIT or of process PID (1: systemd).

            pid1 = vm.journal(pid=1)
        """
        match = (f"-u {shlex.quote(unit)}" if unit else "") + (f" _PID={pid}" if pid else "")
        return self.machine.succeed(f"journalctl -b -o cat --no-pager {match}").splitlines()

    def console_text(self) -> str:
        """Everything the guest wrote to its serial console."""
        return self.machine.console_text()

    @property
    def running(self) -> bool:
        """Is the instance's QEMU still running?"""
        return self.machine.running

    def endpoint(self, guest_port: int) -> tuple[str, int]:
        """Where the host reaches the guest's GUEST_PORT, as (address, port)."""
        return self.machine.endpoint(guest_port)
