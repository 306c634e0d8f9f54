"""A lab instance: one guest running a chain (the incident's by default) for one variant,
and the questions an experiment asks of it (what systemd says, what the load balancer's
checks get, whether the workload, e.g. starting a container, still succeeds)."""
import http.client
import json
import re
import shlex
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import faults, kernel_log, progress, timeouts, units
from ..errors import GuestError, GuestKernelPanic, GuestRefused, GuestTimeout, KernelDidNotBoot, UserError
from ..images import user_kernel
from ..images.image import Image
from ..machines import accel, tcg
from ..machines.machine import PANIC, Machine
from ..paths import artifacts_dir
from ..waiting import wait_until
from . import container_start
from .guest_questions import GuestQuestions

UNITS_FW_CFG = "opt/unitchaos/units.tar"
# What an instance records of its guest (Instance.versions): the running kernel, systemd, and
# "packages", the exact Debian versions of the kernel, systemd, xfsprogs and the chain's own
# packages ("postgresql-15 15.18-0+deb12u1"). Outcomes change with each.
VERSION_KEYS = ("kernel", "systemd", "packages")
# The guest agents' ports, forwarded to the host: the (fake) ECS agent's introspection API,
# which the stock health check asks, and the deep health daemon (vm/guest/usr/local/sbin/unitchaos-health).
AGENT_PORT = 51678
HEALTH_PORT = 51680
AGENT_PORTS = (AGENT_PORT, HEALTH_PORT)
# start_container's `docker run` when the agent is gone, as a user would type it; one
# command line, so that end_container_start can find it.
DOCKER_RUN = "docker run --rm --pull never --network none amazon/amazon-ecs-agent:latest"
# The incident's guest says "metadata=200 agent=active"; a chain without the agent
# "unit=redis-server.service state=active" (vm/guest/usr/local/sbin/unitchaos-ready).
BOOTED = r"unitchaos: booted (?:metadata=(\d+) agent=(\S+)|unit=(\S+) state=(\S+))"
# QEMU 7.2's multi-threaded TCG now and then runs a kernel 6.12 guest into a stale int3
# its own live patching left (`Oops: int3` in sched_clock_cpu as a static key flips at
# 4.7 s, or later while udev loads modules), and the kernel panics: 1 trixie boot in 10
# on this project's machine, and twice in a row once in CI. Under TCG a panicked boot is booted again, up to
# this many boots in all; a panic shows within seconds, so a retry costs little.
BOOTS_UNDER_TCG = 3
# Seconds a boot may take until the guest says it is over (scaled; see tcg.boot_timeout for
# the releases that need more under TCG).
BOOT_TIMEOUT = 240


class Instance(GuestQuestions):
    """A guest running the incident's unit chain for one variant, and the questions a
    scenario asks of it. Get one from the lab (`lab.acquire(chain="bindsto", fs="xfs")`);
    break it with `inject`, then ask `unit_states`, `metadata_status`, `mount_listed`,
    `can_start_container`, `wait_for_kernel_message`."""
    def __init__(self, image: Image, variant: units.Variant, run_dir: Path, memory_mb: int = 1024,
                 machine_class: type[Machine] = Machine):
        self.image = image
        self.variant = variant
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        # The accelerator _pre_launch will choose (a snapshot is keyed by it, so a restore agrees).
        accel_name, release = accel.choose(image.kernel), tcg.release_of(image)
        health_env = self.health_env = tcg.deep_check_env(accel_name, release)
        self.boot_timeout = tcg.boot_timeout(BOOT_TIMEOUT, accel_name, release)
        self.unit_files = units.pack(variant, run_dir / "units.tar", health_env)
        self.chain = variant.spec
        self.machine = machine_class(image, run_dir, memory_mb=memory_mb, volume_size=self.chain.size,
                                     fw_cfg={UNITS_FW_CFG: run_dir / "units.tar"},
                                     extra_ports=(*AGENT_PORTS, *self.chain.ports),
                                     volume_source=_old_filesystem(run_dir) if variant.old_fs else None)
        self.machine.mount_point, self.machine.mount_unit = self.chain.mount_point, self.chain.mount_unit
        self.boot_seconds: float | None = None
        self.guest_versions: dict[str, str] = {}
        self.restored = False
        self.restore_split: dict[str, float] = {}  # seconds per phase of a restore (see restore)
        self.fault_log: list[dict] = []
        # More evidence for save_artifacts, file name -> text, from whoever watched this
        # instance (the health samples, the outcome, the timeline picture).
        self.evidence: dict[str, str] = {}

    # -- life cycle ---------------------------------------------------------------

    def lay_over(self, dropins: dict[str, str]) -> None:
        """Boots with DROPINS (relative path -> text) over the chain's units: one of `bench
        --survey`'s unit options. Before boot only (the guest unpacks its units at boot)."""
        self.unit_files = units.pack(self.variant, self.run_dir / "units.tar", self.health_env, extra=dropins)

    def boot(self, timeout: float | None = None) -> "Instance":
        """Boots and waits until the guest says boot is over (TIMEOUT, scaled; by default
        the machine's, tcg.boot_timeout), then until SSH answers.
        A user's kernel (--kernel) that does not get there is bad input: KernelDidNotBoot."""
        timeout = timeout or self.boot_timeout
        try:
            return self._boot(timeout)
        except GuestTimeout as failure:  # a panic too, once its retries are spent
            if (user := self.image.manifest.get("user_kernel")) is None:
                raise
            kept = artifacts_dir() / f"{self.run_dir.name}-console.log"
            shutil.copy(self.machine.console_path, kept)
            raise KernelDidNotBoot(user_kernel.UserKernel.from_json(user).describe(),
                                   self.image.manifest["release"], str(failure).splitlines()[0], kept) from None

    def _boot(self, timeout: float) -> "Instance":
        started = time.monotonic()
        for attempt in range(1, BOOTS_UNDER_TCG + 1):
            try:
                self._boot_once(timeout)
                break
            except GuestKernelPanic as panic:
                if self.machine.accel == "kvm" or not self.machine.capabilities.reboots_after_panic or attempt == BOOTS_UNDER_TCG:
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
        self.machine.wait_for_console(BOOTED, timeout)
        self.machine.wait_until_responsive()

    def restore(self, saved) -> "Instance":
        """Resumes a saved healthy guest (see snapshots.py) on fresh overlays of its disks,
        and confirms from the host side that it is healthy (confirm_healthy: GuestRefused if
        not, and the lab makes the snapshot again). restore_split says where the time went."""
        started = time.monotonic()
        self.machine.start(restore=saved)
        resumed = time.monotonic()
        self.restored = True
        self.guest_versions = dict(saved.guest_versions)
        clock = {}

        def set_clock() -> None:
            # The guest's clock stopped when it was saved: set it to now, so timestamps and
            # time-based checks in the guest agree with the host's (no process started for
            # it). Asked alongside the checks: neither waits for the other in the guest, and
            # each is the first thing its daemon does after the pause (0.5-1 s under TCG).
            self.machine.channel.set_clock(time.time())
            clock["seconds"] = time.monotonic() - resumed
        with ThreadPoolExecutor(max_workers=1) as pool:
            clock_set = pool.submit(set_clock)
            try:
                self.confirm_healthy()
            except BaseException:
                clock_set.exception()  # waited for, but the checks' verdict is what to report
                raise
            clock_set.result()
        done = time.monotonic()
        self.restore_split = {**self.machine.start_split, "clock": clock["seconds"], "first_answer": done - resumed}
        self.boot_seconds = done - started
        return self

    def confirm_healthy(self, timeout: float = 10) -> None:
        """What a load balancer confirms before it sends a new target traffic: one passing
        probe of each of the chain's checks and of the deep check, asked at once over the
        forwarded ports. For a restored guest the rest is trusted: the snapshot was saved only
        once its units were active, the deep check (whose container test proves the
        workload) passed and require_healthy said so. Asking units and the workload again
        cost 0.5-0.6 s of guest commands per restore under TCG (bash and systemctl run, and
        translated, afresh in each restored guest). GuestRefused naming the failing checks
        if they do not all pass within TIMEOUT (scaled) seconds."""
        __tracebackhide__ = True
        probes = {check.name: (lambda check=check: self.check_answer(check, timeout=3)) for check in self.chain.checks}
        probes["deep"] = lambda: self.deep_health(timeout=3)
        with ThreadPoolExecutor(max_workers=len(probes)) as pool:
            def answers() -> dict:
                futures = {name: pool.submit(probe) for name, probe in probes.items()}
                return {name: future.result() for name, future in futures.items()}

            def refused(message: str, last: dict) -> GuestError:
                failing = {name: _why(body) for name, (status, body) in last.items() if status != 200}
                if all(_slow(why) for why in failing.values()):
                    # Nothing but timeouts: a host too busy for the guest (at load 12-16 on 2
                    # cores the deep check's 3 s I/O probe timed out in a healthy guest), not a
                    # broken snapshot; making it again would cost a cold boot that busy.
                    return GuestTimeout(f"the restored guest answered too slowly: {message}; {failing}",
                                        self.run_dir)
                return GuestRefused(f"the restored guest is not healthy: {message}; failing checks: {failing}",
                                    "the lab makes its snapshot again; if this repeats, check the unit chain "
                                    "(unitchaos run healthy --cold --keep-artifacts)", self.run_dir)
            wait_until(answers, timeout, "every check to answer 200 on the restored guest", machine=self.machine,
                       done=lambda last: all(status == 200 for status, _ in last.values()), interval=0.05,
                       on_timeout=refused,
                       last_seen=lambda last: ", ".join(f"{name} {status}" for name, (status, _) in last.items()))

    def require_healthy(self) -> None:
        """Every unit of the chain active and every declared check healthy, then the
        workload succeeding; or a GuestRefused saying what is not."""
        states = self.unit_states()
        bad = {unit: state for unit, state in states.items() if state != "active"}
        failing = {check.name: why for check in self.chain.checks if (why := self.check_fails(check))}
        if bad or failing:
            journal = self.machine.run("journalctl -b --no-pager -p warning -n 5 -o cat").stdout.strip()
            raise GuestRefused(f"the unit chain did not come up healthy ({bad or 'units active'}, "
                               f"failing checks: {failing or 'none'}); last warnings: {' | '.join(journal.splitlines())}",
                               "check the unit files (unitchaos run healthy --cold shows the boot)", self.run_dir)
        if not self.chain.has_agent:
            # The incident's workload (a container start) is proven by the deep check's own
            # container test, which wait_for_deep_health waits for with retries: one try here
            # timed out at 20 s on a host at load 11 and failed the snapshot.
            self.wait_for_workload()

    def wait_for_workload(self, timeout: float = 60) -> None:
        """Waits until the workload succeeds (a service may still be warming up), or a
        UserError saying what it last said."""
        last = {}

        def works() -> bool:
            last.update(self.workload())
            return last["ok"]
        try:
            wait_until(works, timeout, "the workload", interval=1.0)
        except GuestTimeout:
            raise UserError(f"the chain is not healthy before the fault: WORKLOAD said {last.get('error')}",
                            f"make [workload] command succeed on a healthy instance ({self.chain.source.name})") from None

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
        # A panicked kernel answers nothing: asking would cost each command its whole timeout
        # (seen: 3 x 120 s at scale 2 after a --kernel that could not mount its root disk).
        panicked = self.machine.running and self._kernel_panicked()
        if self.machine.running:
            for name, command in [("journal.json", "journalctl -b -o json --no-pager"),
                                  ("dmesg.txt", "dmesg -T"), ("units.txt", "systemctl list-units --all --no-pager")]:
                if panicked:
                    (out / name).write_text("not collected: the guest kernel panicked (see console.log)\n")
                    continue
                try:
                    (out / name).write_text(self.machine.run(command, timeout=60).stdout)
                except GuestTimeout as exc:
                    (out / name).write_text(f"not collected: {exc}\n")
        return out

    def _kernel_panicked(self) -> bool:
        try:
            return PANIC.search(self.machine.console_text()) is not None
        except OSError:  # a backend without a console file of ours
            return False

    def deep_health(self, timeout: float = 5.0) -> tuple[int | None, dict | str | None]:
        """The deep health daemon's answer: (status, {"healthy", "checks": {...}})."""
        return self.machine.http_get(HEALTH_PORT, "/health", timeout)

    def wait_for_deep_health(self, timeout: float = 90) -> None:
        """Waits until the deep check passes (its first container test takes a while);
        GuestRefused naming the failing checks if it does not within TIMEOUT (scaled) seconds."""
        __tracebackhide__ = True

        def refused(message: str, answer) -> GuestRefused:
            failing = {name: check["reason"] for name, check in answer[1]["checks"].items()
                       if check["status"] != "ok"} if isinstance(answer[1], dict) else answer[1]
            return GuestRefused(f"the deep health check did not pass within {timeouts.scaled(timeout):.0f} s: {failing}",
                                "check the unit chain (unitchaos run healthy --cold --keep-artifacts)", self.run_dir)
        wait_until(self.deep_health, timeout, "the deep health check to pass", done=lambda answer: answer[0] == 200,
                   machine=self.machine, interval=0.5, on_timeout=refused)

    def stop(self) -> None:
        """Ends the guest at once (its run directory stays: the lab decides about it)."""
        self.machine.stop()

    @property
    def host(self):
        """testinfra's view of the guest (over SSH): host.service(...), host.mount_point(...)."""
        return self.machine.host

    # -- faults -------------------------------------------------------------------

    def inject(self, name: str, **params) -> dict:
        """Injects fault NAME (see `unitchaos run --help` for names, PARAMS for its knobs) and
        returns its record: when, where the console was, and what the fault did.

            vm.inject("io-latency", ms=250)
        """
        fault = faults.get(name)
        # The guest's uptime now puts its kernel lines on the host's clock (see timeline.py).
        # (A guest already shut down has none: its fault answers that it is in effect.)
        uptime = float(self.machine.succeed("cut -d' ' -f1 /proc/uptime", timeout=10)) if self.machine.running else None
        record = {"fault": name, "console_offset": self.machine.console_offset(),
                  "at": time.time(), "monotonic": time.monotonic(), "guest_uptime": uptime}
        if params:
            record["params"] = params
        record["detail"] = fault.inject(self.machine, **params)
        self.fault_log.append(record)
        return record

    @property
    def last_fault(self) -> dict:
        """The record of the last fault injected."""
        return self.fault_log[-1]

    def wait_for_kernel_message(self, pattern: str, timeout: float = 60) -> str:
        """The first kernel line matching PATTERN since the last fault was injected, waiting
        up to TIMEOUT (scaled) seconds for it.

            vm.wait_for_kernel_message(faults.XFS_SHUTDOWN)
        """
        __tracebackhide__ = True
        since = self.fault_log[-1]["console_offset"] if self.fault_log else 0
        return self.machine.wait_for_kernel_message(pattern, timeout, since)

    def heal(self, name: str) -> dict:
        """Undoes fault NAME (where that makes sense); a heal with no such fault is refused."""
        fault = faults.get(name)
        if not any(record["fault"] == name for record in self.fault_log):
            raise UserError(f"cannot heal {name}: it was not injected on this instance",
                            f"inject it first ({', '.join(r['fault'] for r in self.fault_log) or 'nothing injected'})")
        return fault.heal(self.machine)

    def kernel_events(self) -> list[dict]:
        """The kernel lines since the last fault that kernel_log recognises, classified."""
        return kernel_log.events(self._console_since_fault())

    def kernel_lines(self) -> list[str]:
        """Every kernel line since the last fault, matched or not: the raw evidence."""
        return [line for _, line in kernel_log.lines(self._console_since_fault())]

    def _console_since_fault(self) -> str:
        since = self.fault_log[-1]["console_offset"] if self.fault_log else 0
        return self.machine.console_text()[since:]

    def wait_until_settled(self, timeout: float = 90, quiet: float = 2.0) -> float:
        """Waits until systemd has had no job queued for QUIET seconds (its reaction is over);
        returns when (time.time()) its queue was first seen empty for good."""
        __tracebackhide__ = True
        quiet_since = None

        def jobs_queued() -> str:
            nonlocal quiet_since
            asked = time.time()
            jobs = self.machine.run("systemctl list-jobs --no-legend | wc -l", timeout=30).stdout.strip()
            quiet_since = (quiet_since or asked) if jobs == "0" else None
            return jobs
        wait_until(jobs_queued, timeout, f"systemd to have no job queued for {quiet:g} s", machine=self.machine,
                   done=lambda jobs: jobs == "0" and time.time() - quiet_since >= quiet, interval=0.3,
                   last_seen=lambda jobs: f"{jobs} job(s) queued")
        return quiet_since

    # -- what the chain looks like ------------------------------------------------

    def unit_states(self) -> dict[str, str]:
        """Each unit of the chain and its ActiveState (the incident's: `harness.ALL_ACTIVE`
        when healthy)."""
        return self.machine.unit_states(list(self.chain.units))

    # -- the chain's own checks and workload --------------------------------------

    def check_answer(self, check, timeout: float = 5.0) -> tuple[int | None, object]:
        """What a load balancer gets from CHECK, as (status, body): an http check's HTTP
        status; 200 for a tcp connection accepted or a command that exited 0; else None."""
        if check.type == "http":
            status, body = self.machine.http_get(check.port, check.path, timeout)
            return (200 if status == check.status else status), body
        if check.type == "tcp":
            return self._tcp_check(check.port, timeout)
        try:
            result = self.machine.run(check.command, timeout=timeout)
        except GuestTimeout:
            return None, f"`{check.command}` did not finish within {timeout:.0f} s"
        return (200 if result.ok else None), (result.stdout + result.stderr).strip()[-300:] or f"exit {result.status}"

    def check_fails(self, check) -> str | None:
        """Why CHECK (a chain's health check) fails now, or None if it answers 200.

            assert vm.check_fails(vm.chain.checks[0]) is None
        """
        status, body = self.check_answer(check)
        return None if status == 200 else str(body or status)

    def _tcp_check(self, guest_port: int, timeout: float) -> tuple[int | None, str]:
        # The host reaches the guest through QEMU's user-mode network, which accepts every
        # connection on the host side and only then connects to the guest: a refused
        # connection shows as the forward being closed at once. A server that is listening
        # keeps it open (and a Redis or PostgreSQL says nothing first), so open for a
        # moment = accepted, as an ELB TCP check counts it.
        try:
            with socket.create_connection(self.machine.endpoint(guest_port), timeout=timeout) as sock:
                sock.settimeout(0.5)
                try:
                    data = sock.recv(1)
                except TimeoutError:
                    return 200, "connection accepted"
                return (200, "connection accepted") if data else (None, "connection closed at once (refused in the guest)")
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def workload(self, timeout: float | None = None) -> dict:
        """Does the service still do its job? The chain's [workload] command in the guest
        (the incident: a container start, through the agent while it answers)."""
        if self.chain.has_agent:
            return self.start_container()
        timeout = timeout or self.chain.workload_timeout
        try:
            result = self.machine.run(self.chain.workload, timeout=timeout)
        except GuestTimeout:
            return {"ok": False, "error": f"did not finish within {timeout:.0f} s"}
        said = (result.stdout.strip() or result.stderr.strip())[-300:]
        ok = result.ok and (not self.chain.workload_expect or bool(re.search(self.chain.workload_expect,
                                                                             result.stdout.strip(), re.M)))
        return {"ok": ok, "error": None if ok else f"exit {result.status}: {said or 'no output'}", "said": said}

    def agent_connected(self) -> bool | None:
        """Does the (fake) ECS agent say it is connected to its control plane? None: no answer."""
        status, body = self.machine.http_get(AGENT_PORT, "/unitchaos/agent")
        return body.get("connected") if status == 200 and isinstance(body, dict) else None

    def metadata_status(self, timeout: float = 5.0) -> int | None:
        """What the load balancer's health check gets: the HTTP status, or None."""
        status, _ = self.machine.http_get(AGENT_PORT, "/v1/metadata", timeout)
        return status

    def wait_for_metadata(self, status: int | None = 200, timeout: float = 30) -> None:
        """Waits until the health check gets STATUS (None: no answer at all)."""
        __tracebackhide__ = True
        wait_until(lambda: self.metadata_status(timeout=3), timeout, f"the metadata check to answer {status}",
                   done=lambda current: current == status, machine=self.machine, interval=0.3)

    @property
    def container_budget(self) -> float:
        """Seconds a container start may take on this machine (tcg.container_budget)."""
        return tcg.container_budget(self.health_env)

    def start_container(self, timeout: float | None = None) -> dict:
        """Can this instance still start containers? Asks the agent to run a task, as ECS
        would; if the agent is gone, asks Docker directly. TIMEOUT: the host's wait, by
        default 10 s more than the machine's container budget (tcg.container_budget), so
        that a slow start is the agent's verdict (504, with its stage), not the host's."""
        timeout = timeout or self.container_budget + 10
        if self.metadata_status() is not None:
            return {"via": "agent", **self._agent_task(timeout)}
        # -k: on SIGTERM `docker run` passes the signal to the container and goes on waiting.
        seconds = int(timeouts.scaled(timeout))
        result = self.machine.run(
            f"timeout -k 5 {seconds} {DOCKER_RUN} python3 -c 'print(\"task ran\")'", timeout=timeout + 10)
        timed_out = result.status in (124, 137) and "task ran" not in result.stdout
        ok = result.ok and "task ran" in result.stdout
        said = result.stderr.strip()[-500:] or f"exit {result.status}: {result.stdout.strip()[-200:] or 'no output'}"
        return {"via": "docker", "ok": ok,
                "error": f"docker run did not finish within {seconds} s" if timed_out else None if ok else said}

    def end_container_start(self) -> None:
        """Ends start_container's `docker run` if it still waits in the guest (else its own
        timeout ends it at the budget), so that start_container returns at once."""
        self.machine.run(f"pkill -KILL -f {shlex.quote('^' + DOCKER_RUN)}")

    def containers_start(self) -> dict:
        """Can this instance start containers, by the deep check's own definition and time
        budget (its container test, run now; see lab/container_start.py)? It asks Docker's
        own socket, so it wakes nothing. Where the guest has no deep check to take the
        definition from (Fedora CoreOS), start_container's answer, saying so."""
        answer = container_start.probe(self.machine)
        if answer is None:
            return {**self.start_container(), "definition": "the workload command (no deep check in this guest)"}
        return answer

    def can_start_container(self) -> bool:
        """Does a container start (what the stock health check never asks)?"""
        return self.start_container()["ok"]

    def wait_until_containers_start(self, timeout: float = 120) -> None:
        """Waits until a container starts again (after a heal, Docker may first have a
        backlog of stalled requests to work off)."""
        __tracebackhide__ = True
        wait_until(self.start_container, timeout, "a container to start", done=lambda result: result["ok"],
                   machine=self.machine, interval=1, last_seen=lambda result: str(result["error"]))

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
        kernel, systemd, xfsprogs (sid moves daily) and the chain's own packages (its
        [guest] packages, e.g. postgresql-15): outcomes change with all of them."""
        names = {"linux-image": "linux-image-$(uname -r)", "systemd": "systemd", "xfsprogs": "xfsprogs",
                 **{package: package for package in self.chain.packages}}
        out = self.machine.succeed("uname -r; systemctl --version | head -1; dpkg-query -W -f='${Package} ${Version}\\n' "
                                   f"{' '.join(names.values())} 2>/dev/null || true").splitlines()
        versions = {"kernel": out[0].strip(), "systemd": out[1].strip()}
        # dpkg-query lists in its own order; a guest without dpkg (Fedora CoreOS) names none.
        found = dict(line.split(" ", 1) for line in out[2:] if " " in line.strip())
        found = {("linux-image" if package.startswith("linux-image-") else package): version.strip()
                 for package, version in found.items()}
        if found:
            versions["packages"] = ", ".join(f"{name} {found[name]}" for name in names if name in found)
        return versions


def _why(body) -> str:
    """Why a probe failed, in words: the deep check's failing checks and their reasons."""
    if isinstance(body, dict) and isinstance(body.get("checks"), dict):
        return "; ".join(f"{name}: {check.get('reason')}" for name, check in body["checks"].items()
                         if isinstance(check, dict) and check.get("status") != "ok") or "unhealthy"
    return str(body)[:200]


def _slow(why: str) -> bool:
    """Is every reason in WHY a timeout (the host, not the guest's health)?"""
    parts = [part.split(": ", 1)[-1].lower() for part in why.split("; ")]
    return all("timeout" in part or "timed out" in part for part in parts)


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
