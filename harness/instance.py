"""A lab instance: one guest running the incident's unit chain for one variant, and the
questions an experiment asks of it (what systemd says, what the load balancer's check
gets, whether a container can still start)."""
import http.client
import json
import shutil
import subprocess
import time
from pathlib import Path

from . import faults, kernel_log, progress, timeouts, units
from .errors import GuestKernelPanic, GuestTimeout, UserError
from .image import Image
from .machine import AGENT_PORT, HEALTH_PORT, Machine

UNITS_FW_CFG = "opt/unitchaos/units.tar"
BOOTED = r"unitchaos: booted metadata=(\d+) agent=(\S+)"
# QEMU 7.2's multi-threaded TCG now and then runs a kernel 6.12 guest into a stale int3
# its own live patching left (`Oops: int3` in sched_clock_cpu as a static key flips at
# 4.7 s, or later while udev loads modules), and the kernel panics: 1 trixie boot in 10
# on this project's machine, and twice in a row once in CI. Under TCG a panicked boot is booted again, up to
# this many boots in all; a panic shows within seconds, so a retry costs little.
BOOTS_UNDER_TCG = 3


class Instance:
    def __init__(self, image: Image, variant: units.Variant, run_dir: Path, memory_mb: int = 1024,
                 machine_class: type[Machine] = Machine):
        self.image = image
        self.variant = variant
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.unit_files = units.pack(variant, run_dir / "units.tar")
        self.machine = machine_class(image, run_dir, memory_mb=memory_mb,
                                     fw_cfg={UNITS_FW_CFG: run_dir / "units.tar"},
                                     volume_source=_old_filesystem(run_dir) if variant.old_fs else None)
        self.boot_seconds: float | None = None
        self.guest_versions: dict[str, str] = {}
        self.restored = False
        self.fault_log: list[dict] = []
        # More evidence for save_artifacts, file name -> text, from whoever watched this
        # instance (the health samples, the outcome, the timeline picture).
        self.evidence: dict[str, str] = {}

    # -- life cycle ---------------------------------------------------------------

    def boot(self, timeout: float = 240) -> "Instance":
        """Boots and waits until the guest says boot is over, then until SSH answers."""
        started = time.monotonic()
        for attempt in range(1, BOOTS_UNDER_TCG + 1):
            try:
                self._boot_once(timeout)
                break
            except GuestKernelPanic as panic:
                if self.machine.accel == "kvm" or not self.machine.reboots_after_panic or attempt == BOOTS_UNDER_TCG:
                    raise
                # That is the emulator, not the experiment (see BOOTS_UNDER_TCG): boot again
                # on fresh disks, and keep the panicked console as evidence.
                self.machine.stop()
                kept = self.run_dir / f"console-panic-{attempt}.log"
                shutil.copy(self.machine.console_path, kept)
                progress.say(f"{panic}; booting again (console kept as {kept})")
        self.boot_seconds = time.monotonic() - started
        self.guest_versions = self.versions()
        return self

    def _boot_once(self, timeout: float) -> None:
        self.machine.start()
        self.machine.wait_for_console(BOOTED, timeouts.scaled(timeout))
        self.machine.wait_until_responsive()

    def restore(self, saved) -> "Instance":
        """Resumes a saved healthy guest (see snapshots.py) on fresh overlays of its disks."""
        started = time.monotonic()
        self.machine.start(restore=saved)
        # The guest's clock stopped when it was saved: set it to now, so timestamps and
        # time-based checks in the guest agree with the host's.
        self.machine.channel.set_clock(time.time())
        self.boot_seconds = time.monotonic() - started
        self.restored = True
        self.guest_versions = dict(saved.guest_versions)
        return self

    def require_healthy(self) -> None:
        """All four units active and metadata 200, or a UserError saying what is not."""
        states = self.unit_states()
        bad = {unit: state for unit, state in states.items() if state != "active"}
        status = self.metadata_status()
        if bad or status != 200:
            journal = self.machine.run("journalctl -b --no-pager -p warning -n 5 -o cat").stdout.strip()
            raise UserError(f"the unit chain did not come up healthy ({bad or 'units active'}, "
                            f"metadata {status}); last warnings: {' | '.join(journal.splitlines())}",
                            "check the unit files (unitchaos run healthy --cold shows the boot)")

    def save_artifacts(self) -> Path:
        """Writes what is needed to understand a run without rerunning it into the run
        directory (the console log is there already): journal, kernel log, QMP events,
        faults injected, unit files used, and the watchers' evidence."""
        out = self.run_dir
        for name, text in self.evidence.items():
            (out / name).write_text(text)
        (out / "qmp-events.json").write_text(json.dumps(self.machine.monitor.events, indent=1))
        (out / "faults.json").write_text(json.dumps(self.fault_log, indent=1, default=str))
        for rel, text in self.unit_files.items():
            (out / "units" / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / "units" / rel).write_text(text)
        if self.machine.running:
            for name, command in [("journal.json", "journalctl -b -o json --no-pager"),
                                  ("dmesg.txt", "dmesg -T"), ("units.txt", "systemctl list-units --all --no-pager")]:
                try:
                    (out / name).write_text(self.machine.run(command, timeout=60).stdout)
                except GuestTimeout as exc:
                    (out / name).write_text(f"not collected: {exc}\n")
        return out

    def deep_health(self, timeout: float = 5.0) -> tuple[int | None, dict | str | None]:
        """The deep health daemon's answer: (status, {"healthy", "checks": {...}})."""
        return self.machine.http_get(HEALTH_PORT, "/health", timeout)

    def wait_for_deep_health(self, timeout: float = 90) -> None:
        """Waits until the deep check passes (its first container test takes a while)."""
        deadline = time.monotonic() + timeouts.scaled(timeout)
        while (answer := self.deep_health())[0] != 200:
            if time.monotonic() > deadline:
                failing = {name: check["reason"] for name, check in answer[1]["checks"].items()
                           if check["status"] != "ok"} if isinstance(answer[1], dict) else answer[1]
                raise UserError(f"the deep health check did not pass within {timeout:.0f} s: {failing}",
                                "check the unit chain (unitchaos run healthy --cold --keep-artifacts)")
            time.sleep(0.5)

    def stop(self) -> None:
        self.machine.stop()

    @property
    def host(self):
        """testinfra's view of the guest (over SSH): host.service(...), host.mount_point(...)."""
        return self.machine.host

    # -- faults -------------------------------------------------------------------

    def inject(self, name: str, **params) -> dict:
        fault = faults.get(name)
        # The guest's uptime now puts its kernel lines on the host's clock (see timeline.py).
        uptime = float(self.machine.succeed("cut -d' ' -f1 /proc/uptime", timeout=10))
        record = {"fault": name, "console_offset": self.machine.console_offset(),
                  "at": time.time(), "monotonic": time.monotonic(), "guest_uptime": uptime}
        if params:
            record["params"] = params
        record["detail"] = fault.inject(self.machine, **params)
        self.fault_log.append(record)
        return record

    @property
    def last_fault(self) -> dict:
        return self.fault_log[-1]

    def wait_for_kernel_message(self, pattern: str, timeout: float = 60) -> str:
        """The first kernel line matching PATTERN since the last fault was injected."""
        since = self.fault_log[-1]["console_offset"] if self.fault_log else 0
        return self.machine.wait_for_kernel_message(pattern, timeouts.scaled(timeout), since)

    def heal(self, name: str) -> dict:
        """Undoes fault NAME (where that makes sense); a heal with no such fault is refused."""
        fault = faults.get(name)
        if not any(record["fault"] == name for record in self.fault_log):
            raise UserError(f"cannot heal {name}: it was not injected on this instance",
                            f"inject it first ({', '.join(r['fault'] for r in self.fault_log) or 'nothing injected'})")
        return fault.heal(self.machine)

    def kernel_events(self) -> list[dict]:
        return kernel_log.events(self._console_since_fault())

    def kernel_lines(self) -> list[str]:
        """Every kernel line since the last fault, matched or not: the raw evidence."""
        return [line for _, line in kernel_log.lines(self._console_since_fault())]

    def _console_since_fault(self) -> str:
        since = self.fault_log[-1]["console_offset"] if self.fault_log else 0
        return self.machine.console_text()[since:]

    def wait_until_settled(self, timeout: float = 90, quiet: float = 2.0) -> None:
        """Waits until systemd has had no job queued for QUIET seconds (its reaction is over)."""
        deadline = time.monotonic() + timeouts.scaled(timeout)
        quiet_since = None
        while True:
            jobs = self.machine.run("systemctl list-jobs --no-legend | wc -l", timeout=30).stdout.strip()
            now = time.monotonic()
            if jobs == "0":
                quiet_since = quiet_since or now
                if now - quiet_since >= quiet:
                    return
            else:
                quiet_since = None
            if now > deadline:
                raise GuestTimeout(f"systemd still had {jobs} job(s) queued after {timeout:.0f} s")
            time.sleep(0.3)

    # -- what the chain looks like ------------------------------------------------

    def unit_states(self) -> dict[str, str]:
        return self.machine.unit_states(units.CHAIN)

    def mount_listed(self) -> bool:
        """Is /var/lib/docker in /proc/self/mountinfo (what systemd goes by)?"""
        result = self.machine.run("awk '$5 == \"/var/lib/docker\"' /proc/self/mountinfo")
        return bool(result.stdout.strip())

    def mount_options(self) -> str:
        return self.machine.run("findmnt -no FSTYPE,OPTIONS /var/lib/docker || true").stdout.strip()

    def metadata_status(self, timeout: float = 5.0) -> int | None:
        """What the load balancer's health check gets: the HTTP status, or None."""
        status, _ = self.machine.http_get(AGENT_PORT, "/v1/metadata", timeout)
        return status

    def wait_for_metadata(self, status: int | None = 200, timeout: float = 30) -> None:
        """Waits until the health check gets STATUS (None: no answer at all)."""
        deadline = time.monotonic() + timeouts.scaled(timeout)
        while (current := self.metadata_status(timeout=3)) != status:
            if time.monotonic() > deadline:
                raise GuestTimeout(f"the metadata check answers {current}, not {status}, after {timeout:.0f} s")
            time.sleep(0.3)

    def start_container(self, timeout: float = 30) -> dict:
        """Can this instance still start containers? Asks the agent to run a task, as ECS
        would; if the agent is gone, asks Docker directly."""
        if self.metadata_status() is not None:
            return {"via": "agent", **self._agent_task(timeout)}
        # -k: on SIGTERM `docker run` passes the signal to the container and goes on waiting.
        seconds = int(timeouts.scaled(timeout))
        result = self.machine.run(
            f"timeout -k 5 {seconds} docker run --rm --pull never --network none amazon/amazon-ecs-agent:latest "
            "python3 -c 'print(\"task ran\")'", timeout=timeout + 10)
        timed_out = result.status in (124, 137) and "task ran" not in result.stdout
        return {"via": "docker", "ok": result.ok and "task ran" in result.stdout,
                "error": f"docker run did not finish within {seconds} s" if timed_out
                else result.stderr.strip()[-500:] or None}

    def can_start_container(self) -> bool:
        return self.start_container()["ok"]

    def wait_until_containers_start(self, timeout: float = 120) -> None:
        """Waits until a container starts again (after a heal, Docker may first have a
        backlog of stalled requests to work off)."""
        deadline = time.monotonic() + timeouts.scaled(timeout)
        while not (result := self.start_container())["ok"]:
            if time.monotonic() > deadline:
                raise GuestTimeout(f"no container started within {timeout:.0f} s: {result['error']}")
            time.sleep(1)

    def _agent_task(self, timeout: float) -> dict:
        conn = http.client.HTTPConnection(*self.machine.endpoint(AGENT_PORT), timeout=timeout)
        try:
            conn.request("POST", "/v1/tasks", body=b"{}", headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            body = json.loads(response.read() or b"{}")
            return {"ok": response.status == 200 and body.get("ok", False),
                    "error": None if body.get("ok") else f"{body.get('stage')}: {body.get('error')}"}
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            conn.close()

    def versions(self) -> dict[str, str]:
        """The guest's running kernel and systemd, and the exact package versions of the
        kernel, systemd and xfsprogs (sid moves daily): outcomes change with all of them."""
        out = self.machine.succeed("uname -r; systemctl --version | head -1; dpkg-query -W -f='${Version}\\n' "
                                   "linux-image-$(uname -r) systemd xfsprogs 2>/dev/null || true").splitlines()
        versions = {"kernel": out[0].strip(), "systemd": out[1].strip()}
        if len(out) >= 5:  # a guest without dpkg (Fedora CoreOS) names only the two
            versions["packages"] = f"linux-image {out[2].strip()}, systemd {out[3].strip()}, xfsprogs {out[4].strip()}"
        return versions


def _old_filesystem(run_dir: Path) -> Path:
    """A volume that still holds an old ext4 filesystem (left by a previous instance, say)."""
    path = run_dir / "old-volume.raw"
    with open(path, "wb") as raw:
        raw.truncate(1 << 30)
    try:
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "old", str(path)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise UserError("mke2fs is not installed", "apt-get install e2fsprogs") from None
    except subprocess.CalledProcessError as exc:
        raise UserError(f"mke2fs could not make the old filesystem: {exc.stderr.strip()}",
                        "check free disk space in the cache directory") from None
    return path
