"""The interactive lab: `unitchaos up` leaves an instance running after the CLI exits, and
later commands (shell, inject, heal, status, down) find it again.

How they find it: a state file per instance, ~/.cache/unitchaos/up/NAME.json, naming its
run directory, QEMU's pid and the forwarded ports. QEMU's monitor and the guest's command
port are sockets that take one client at a time, so each command connects, does its work
and disconnects when it exits; QEMU then accepts the next one.

Why the run-directory sweep leaves it alone: an instance that is up is owned by its own
QEMU (the run directory's owner file holds QEMU's pid), and QEMU is started without
PR_SET_PDEATHSIG, so it outlives the CLI. If QEMU dies, the next sweep reaps the directory
and the state file is cleaned by `down` (or the next `up`).
"""
import fcntl
import json
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import experiments
from .. import faults, units
from ..evidence import timeline
from ..errors import GuestTimeout, UserError
from ..images.image import Image
from ..lab.instance import Instance
from ..lab.lab import Lab, qemu_of
from ..lab.instance import AGENT_PORT, HEALTH_PORT
from ..machines.machine import SSH_ALIAS
from ..machines.process import AdoptedProcess
from ..paths import cache_dir
from ..waiting import Deadline

DEFAULT_NAME = "lab"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def state_dir() -> Path:
    path = cache_dir() / "up"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _state_path(name: str) -> Path:
    if not NAME.match(name):
        raise UserError(f"bad lab instance name {name!r}", "use letters, digits, '.', '_' and '-' (at most 64)")
    return state_dir() / f"{name}.json"


def names() -> list[str]:
    return sorted(p.stem for p in state_dir().glob("*.json"))


def resolve(name: str | None) -> str:
    """NAME, or the only instance that is up."""
    if name:
        _state_path(name)
        return name
    up = names()
    if not up:
        raise UserError("no lab instance is up", "start one: unitchaos up")
    if len(up) > 1:
        raise UserError(f"several lab instances are up: {', '.join(up)}", "name one with --name")
    return up[0]


def load(name: str) -> dict:
    try:
        return json.loads(_state_path(name).read_text())
    except FileNotFoundError:
        up = names()
        raise UserError(f"no lab instance {name!r} is up" + (f" (up: {', '.join(up)})" if up else ""),
                        "start one: unitchaos up" + (f" --name {name}" if name != DEFAULT_NAME else "")) from None
    except ValueError as exc:
        raise UserError(f"the state file of lab instance {name!r} is damaged: {exc}",
                        f"unitchaos down --name {name}") from None


def _save(state: dict) -> None:
    path = _state_path(state["name"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
    tmp.replace(path)  # Whole or not at all: a reader never sees half a state file.


# -- up -------------------------------------------------------------------------

def up(name: str, chain: str, fs: str, units_dir: str | None, cold: bool | None) -> dict:
    path = _state_path(name)
    units.check(units.Variant(chain=chain, fs=fs, **({"units_dir": Path(units_dir)} if units_dir else {})))
    with open(path.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"lab instance {name!r} is being started by another unitchaos up",
                            "wait for it, or use --name OTHER") from None
        if path.exists():
            state = load(name)
            if qemu_of(Path(state["run_dir"])) is not None:
                raise UserError(f"lab instance {name!r} is already up (QEMU pid {state['pid']})",
                                f"use it (unitchaos status{_flag(name)}), stop it (unitchaos down{_flag(name)}), "
                                "or start another with --name OTHER")
            _remove(state)  # Its QEMU died: what is left is stale.
        with Lab(cold=cold, outlive_owner=True) as lab:
            instance = lab.acquire(chain=chain, fs=fs, units_dir=units_dir)
            lab.release(instance, keep=False, running=True)
            return hand_over(instance, name)


def hand_over(instance: Instance, name: str, artifacts: Path | None = None) -> dict:
    """Names INSTANCE, released running from its lab (its QEMU started to outlive its
    owner), lab instance NAME; returns its state."""
    state = {
        "name": name, "run_dir": str(instance.run_dir), "pid": instance.machine.process.pid,
        "ports": instance.machine.ports, "accel": instance.machine.accel, "image": str(instance.image.path),
        "chain": instance.variant.chain, "fs": instance.variant.fs, "units_dir": str(instance.variant.units_dir),
        "guest_versions": instance.guest_versions, "fault_log": instance.fault_log,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "artifacts": str(artifacts) if artifacts else None,
    }
    _save(state)
    # The connections go with this process; the next command makes its own.
    instance.machine.channel.close()
    instance.machine.monitor.close()
    return state


def how_to_reach(state: dict) -> str:
    ports = {int(k): v for k, v in state["ports"].items()}
    flag = _flag(state["name"])
    versions = state.get("guest_versions") or {}
    lines = [f"lab instance {state['name']!r} is up: {state['chain']}, {state['fs']}; "
             f"kernel {versions.get('kernel', '?')}, {versions.get('systemd', '?')}; QEMU pid {state['pid']}",
             f"  ssh:      {shlex.join(ssh_argv(state))}",
             f"  metadata: http://127.0.0.1:{ports[AGENT_PORT]}/v1/metadata   (the stock health check)",
             f"  health:   http://127.0.0.1:{ports[HEALTH_PORT]}/health        (the deep health check)",
             f"  look:     unitchaos status{flag}    unitchaos shell{flag}",
             f"  break:    unitchaos inject{flag} FAULT    unitchaos heal{flag} FAULT",
             f"  stop:     unitchaos down{flag}"]
    return "\n".join(lines)


def _flag(name: str) -> str:
    return "" if name == DEFAULT_NAME else f" --name {name}"


def shell_argv(name: str | None, command: list[str]) -> list[str]:
    state = load(resolve(name))
    _require_alive(state)
    return ssh_argv(state, command)


def ssh_argv(state: dict, command: list[str] | None = None) -> list[str]:
    """ssh into the guest, with no connection sharing (so nothing lingers after it)."""
    ports = {int(k): v for k, v in state["ports"].items()}
    key = Path(state["image"]) / "id_ed25519"
    argv = ["ssh", "-i", str(key), "-p", str(ports[22]), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ControlMaster=no", "-o", "ControlPath=none", "root@127.0.0.1"]
    if command and command[0] == "--":
        command = command[1:]
    # Like ssh itself: the words are joined and run by the guest's shell.
    return argv + (["--", *command] if command else [])


# -- attach: the later commands -----------------------------------------------

def _adopt(pid: int, run_dir: Path) -> AdoptedProcess:
    """The QEMU an earlier `up` started, for as long as RUN_DIR's qemu.pid names it."""
    return AdoptedProcess(pid, still_ours=lambda: qemu_of(run_dir) == pid)


def alive(state: dict) -> bool:
    return qemu_of(Path(state["run_dir"])) == state["pid"]


def _require_alive(state: dict) -> None:
    if not alive(state):
        raise UserError(f"lab instance {state['name']!r} is gone: its QEMU exited",
                        f"clean up with unitchaos down --name {state['name']}, then unitchaos up")


def attach(name: str | None) -> tuple[Instance, dict]:
    """The running lab instance NAME, connected to QEMU's monitor and the guest."""
    state = load(resolve(name))
    _require_alive(state)
    run_dir = Path(state["run_dir"])
    variant = units.Variant(chain=state["chain"], fs=state["fs"], units_dir=Path(state["units_dir"]))
    instance = Instance(Image(Path(state["image"])), variant, run_dir)
    machine = instance.machine
    machine.ports = {int(k): v for k, v in state["ports"].items()}
    machine.accel = state["accel"]
    machine.process = _adopt(state["pid"], run_dir)
    instance.guest_versions = state.get("guest_versions") or {}
    instance.fault_log = state.get("fault_log") or []
    deadline = Deadline(10)
    try:
        machine.monitor.connect(deadline)
        machine.channel.connect(deadline)
    except GuestTimeout:
        raise UserError(f"lab instance {state['name']!r} did not take a connection: another unitchaos "
                        "command may hold it", "wait for that command to finish, then retry") from None
    return instance, state


def detach(instance: Instance) -> None:
    instance.machine.channel.close()
    instance.machine.monitor.close()


def inject(name: str | None, fault_name: str, param_pairs: list[str] = ()) -> dict:
    # An unknown fault or parameter fails before anything is touched.
    params = faults.get(fault_name).parse_params(list(param_pairs))
    instance, state = attach(name)
    try:
        detail = experiments.inject_and_wait(instance, fault_name, state["fs"], params)
    finally:
        state["fault_log"] = instance.fault_log
        _save(state)
        detach(instance)
    return {"fault": fault_name, **detail, "kernel_events": [e["line"] for e in instance.kernel_events()]}


def render_injected(done: dict) -> str:
    lines = [f"{done['fault']} injected; the kernel's word: {done.get('kernel_word') or 'none awaited or seen'}; "
             f"systemd settled: {done.get('settled')}"]
    return "\n".join(lines + [f"  kernel: {line}" for line in done["kernel_events"][-8:]])


def heal(name: str | None, fault_name: str) -> dict:
    faults.get(fault_name)
    instance, _ = attach(name)
    try:
        return {"healed": fault_name, **instance.heal(fault_name)}
    finally:
        detach(instance)


def status(name: str | None) -> dict:
    """What the instance looks like now: units, mount, and what each health check answers."""
    instance, state = attach(name)
    try:
        started = time.monotonic()
        stock = instance.metadata_status()
        stock_ms = (time.monotonic() - started) * 1000
        started = time.monotonic()
        deep_status, deep_body = instance.deep_health()
        deep_ms = (time.monotonic() - started) * 1000
        failing = {}
        if isinstance(deep_body, dict):
            failing = {check: detail.get("reason") for check, detail in deep_body.get("checks", {}).items()
                       if isinstance(detail, dict) and detail.get("status") != "ok"}
        return {
            "name": state["name"], "chain": state["chain"], "fs": state["fs"], "pid": state["pid"],
            "units": instance.unit_states(),
            "volume_device": instance.machine.unit_state("dev-vdb.device"),
            "mount_listed": instance.mount_listed(), "mount": instance.mount_options(),
            "stock": {"status": stock, "ms": round(stock_ms)},
            "deep": {"status": deep_status, "ms": round(deep_ms), "failing": failing
                     or (None if deep_status == 200 else deep_body)},
            "faults": [record["fault"] for record in instance.fault_log],
            "kernel_events": [e["line"] for e in instance.kernel_events()],
            # Since the last fault: its kernel lines and systemd's unit changes (QEMU's
            # events went to the command that injected it).
            "timeline": timeline.build(instance),
        }
    finally:
        detach(instance)


def render_status(seen: dict) -> str:
    lines = [f"lab instance {seen['name']!r} ({seen['chain']}, {seen['fs']}), QEMU pid {seen['pid']}; "
             f"faults injected: {', '.join(seen['faults']) or 'none'}"]
    lines += [f"  {unit:<26} {state}" for unit, state in seen["units"].items()]
    lines.append(f"  {'dev-vdb.device':<26} {seen['volume_device']}")
    lines.append(f"  mount /var/lib/docker      {'listed: ' + seen['mount'] if seen['mount_listed'] else 'not listed'}")
    lines.append(f"  stock check :51678/v1/metadata  {_verdict(seen['stock']['status'])} in {seen['stock']['ms']} ms")
    deep = seen["deep"]
    lines.append(f"  deep check  :51680/health       {_verdict(deep['status'])} in {deep['ms']} ms")
    if isinstance(deep.get("failing"), dict):
        lines += [f"    failing: {check}: {reason}" for check, reason in deep["failing"].items()]
    elif deep.get("failing"):
        lines.append(f"    {deep['failing']}")
    if seen["timeline"]:
        lines.append("  since the last fault (seconds):")
        lines += ["  " + line for line in timeline.render(seen["timeline"][-20:]).splitlines()]
    return "\n".join(lines)


def _verdict(status) -> str:
    return "200 OK" if status == 200 else "no answer" if status is None else f"{status} FAILING"


# -- down -----------------------------------------------------------------------

def down(name: str | None) -> str:
    state = load(resolve(name))
    _remove(state)
    _state_path(state["name"]).with_suffix(".lock").unlink(missing_ok=True)
    return state["name"]


def _remove(state: dict) -> None:
    """Stops the instance's QEMU (and any SSH connection left to it) and removes its run
    directory and state file; nothing of it is left."""
    run_dir = Path(state["run_dir"])
    if (run_dir / "ssh-mux").exists():
        subprocess.run(["ssh", "-F", str(run_dir / "ssh_config"), "-O", "exit", SSH_ALIAS],
                       capture_output=True, timeout=10)
    process = _adopt(state["pid"], run_dir)
    process.send_signal(signal.SIGTERM)  # QEMU quits cleanly on SIGTERM.
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    shutil.rmtree(run_dir, ignore_errors=True)
    _state_path(state["name"]).unlink(missing_ok=True)
