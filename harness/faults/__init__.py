"""Ways to break the volume: through the QEMU monitor (what the hypervisor does to a
disk) and inside the guest (what an operator or a script does).

A fault acts on a Machine and knows nothing of experiments or pytest. Each one says
what to wait for afterwards, so that an experiment can give its verdict at the right
moment rather than after a fixed sleep.
"""
from dataclasses import dataclass, field
from typing import Callable

from . import block_faults
from ..errors import GuestRefused, MonitorError, UserError
from ..machines.machine import Machine

# Commands name the chain's volume by these words, filled in from the machine at run time.
MOUNT_POINT, MOUNT_UNIT = "{mount_point}", "{mount_unit}"


def for_volume(command: str, machine: Machine) -> str:
    """COMMAND with {mount_point} and {mount_unit} filled in from MACHINE's chain."""
    return command.replace(MOUNT_POINT, machine.mount_point).replace(MOUNT_UNIT, machine.mount_unit)


@dataclass(frozen=True)
class Fault:
    """One way to break an instance: NAME, a one-line SUMMARY (its contract: what it does
    to the guest), WHERE it acts, and the kernel's words that show it landed.

        faults.get("yank").inject(vm.machine)   # or vm.inject("yank")
    """
    name: str
    summary: str                    # one line: what it does, as `unitchaos run --help` lists it
    where: str                      # "qemu" or "guest"
    action: Callable[[Machine], dict]
    # Kernel words that show the fault has landed, by filesystem (regular expressions).
    kernel_word: dict[str, str] = field(default_factory=dict)
    heal_action: Callable[[Machine], dict] | None = None
    # Parameters the action takes (name -> default), set with KEY=VALUE on the CLI.
    params: dict[str, object] = field(default_factory=dict)
    # Judges, from what the action returned, whether the fault took effect: (took, in words).
    # None: the fault cannot tell, and counts as in effect.
    judge: Callable[[dict], tuple[bool, str]] | None = None
    # Filesystems on which the fault's outcome differs by design: `unitchaos matrix` runs it
    # on each unless --fs names one (exhaust-inodes: ext4's inodes are fixed, XFS's are not).
    filesystems: tuple[str, ...] = ()

    def inject(self, machine: Machine, **params) -> dict:
        """Breaks MACHINE; returns what was done (commands, QMP events) for the record."""
        return self.action(machine, **params)

    def parse_params(self, pairs: list[str]) -> dict:
        """KEY=VALUE strings, checked against this fault's parameters and typed like their defaults."""
        parsed = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in self.params:
                known = ", ".join(f"{name}={default}" for name, default in self.params.items()) or "none"
                raise UserError(f"{self.name} has no parameter {pair!r}", f"its parameters: {known}")
            kind = type(self.params[key])
            try:
                parsed[key] = kind(value)
            except ValueError:
                what = {int: "a whole number", float: "a number"}.get(kind, "a word")
                raise UserError(f"{self.name} {key}={value!r} is not {what}",
                                f"give {key} like its default, {self.params[key]}") from None
        return parsed

    def took_effect(self, detail: dict) -> tuple[bool, str] | None:
        """(took effect, in words) from what inject returned; None when this fault cannot tell."""
        if self.judge is None or not isinstance(detail, dict) or ALREADY in detail:
            return None
        return self.judge(detail)

    def heal(self, machine: Machine) -> dict:
        """Undoes this fault on MACHINE where that makes sense (UserError where it does not)."""
        if self.heal_action is None:
            raise UserError(f"{self.name} cannot be healed", "start a new instance instead")
        return self.heal_action(machine)


def guest_command(command: str, timeout: float = 120) -> Callable[[Machine], dict]:
    """A fault (or its heal) that is one shell command in the guest; it must succeed."""
    def act(machine: Machine) -> dict:
        result = machine.run(for_volume(command, machine), timeout=timeout)
        if not result.ok:
            raise GuestRefused(f"the guest refused: {command!r} exited {result.status}: "
                            f"{(result.stderr or result.stdout).strip().splitlines()[-1:] or ''}",
                               "check that the instance is in the state this fault needs", machine.run_dir)
        return {"command": command, "status": result.status, "stdout": result.stdout.strip()[-500:]}
    return act


# Every fault can be injected again on an instance that already has it (a Chaos Monkey
# client with -count 2 hits the same instance twice): it stacks, or answers with this key
# saying it is already in effect. It never fails for that reason alone.
ALREADY = "already_in_effect"


def _unplug(machine: Machine) -> dict:
    # ACPI hot-unplug: the guest is asked to let go of the disk, then it is gone.
    device = machine.volume.device_id
    if not machine.volume_attached():
        return {ALREADY: "the volume is already detached (unplug or yank)"}
    try:
        machine.monitor.command("device_del", id=device)
    except MonitorError as exc:
        raise UserError(f"unplug does not apply: {exc}", "inject it on a guest that still has its volume") from None
    event = machine.monitor.wait_for_event("DEVICE_DELETED", timeout=30, match={"device": device})
    return {"qmp": f"device_del id={device}", "event": event}


def _yank(machine: Machine) -> dict:
    # drive_del removes the backend but leaves the virtio device: every later I/O gets
    # EIO, as on a force-detached EBS volume whose Xen front end would not let go.
    if not machine.volume_attached():
        return {ALREADY: "the volume's backend is already gone (yank or unplug)"}
    try:
        done = block_faults.remove_volume_backend(machine)
    except MonitorError as exc:
        raise UserError(f"yank does not apply: {exc}", "inject it on a guest that still has its volume") from None
    # Nothing notices until something writes back; Docker would, sooner or later.
    write = machine.run(f"dd if=/dev/zero of={machine.mount_point}/.unitchaos-writeback bs=4k count=1 conv=fsync",
                        timeout=60)
    return {**done, "writeback": {"status": write.status, "stderr": write.stderr.strip()}}


def _umount(machine: Machine) -> dict:
    # A plain umount fails ("target is busy") while dockerd holds files there; the lazy
    # one takes the mount away behind systemd's back, as the incident's operator did.
    result = machine.run(f"umount {machine.mount_point} || umount -l {machine.mount_point}", timeout=30)
    return {"command": result.command, "status": result.status, "stderr": result.stderr.strip()}


def _stop_mount(machine: Machine) -> dict:
    result = machine.run(f"systemctl stop {machine.mount_unit}", timeout=120)
    return {"command": result.command, "status": result.status, "stderr": result.stderr.strip()}


def _exhaust_inodes(machine: Machine, seconds: int = 120) -> dict:
    # Empty files until the filesystem says ENOSPC, or SECONDS pass: ext4 fixes its inodes at
    # mkfs (65536 on the 1 GiB volume, one per 16 KiB) and runs out with blocks to spare;
    # XFS allocates inodes as it goes, so it runs out of blocks long after, if ever.
    script = (f"mkdir -p {MOUNT_POINT}/.unitchaos-inodes && cd {MOUNT_POINT}/.unitchaos-inodes && "
              "python3 - <<'EOF'\n"
              "import errno, os, time\n"
              "made, started, error = 0, time.monotonic(), 'time-limit'\n"
              f"while time.monotonic() - started < {int(seconds)}:\n"
              "    try:\n"
              "        for _ in range(1000):\n"
              "            os.close(os.open(str(made), os.O_CREAT | os.O_WRONLY)); made += 1\n"
              "    except OSError as exc:\n"
              "        error = errno.errorcode.get(exc.errno, str(exc.errno)); break\n"
              "print(made, error, round(time.monotonic() - started, 1))\n"
              "EOF\n"
              f"df --output=itotal,iused,iavail,avail -B1 {MOUNT_POINT} | tail -1")
    result = machine.run(for_volume(script, machine), timeout=seconds + 60)
    lines = result.stdout.split("\n")
    made, error, took = (lines[0].split() + ["?", "?", "?"])[:3]
    df = (lines[1].split() if len(lines) > 1 else []) + ["?"] * 4
    return {"files_created": _number(made), "stopped_by": error, "seconds": _number(took), "time_limit": seconds,
            **{key: _number(value) for key, value in zip(("inodes_total", "inodes_used", "inodes_free", "bytes_free"), df)}}


def _number(text: str):
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return None


def _inodes_exhausted(detail: dict) -> tuple[bool, str]:
    made, stop = detail.get("files_created"), detail.get("stopped_by")
    free_inodes, free = detail.get("inodes_free"), detail.get("bytes_free")
    mib = f"{free / 2**20:.0f} MiB" if isinstance(free, int) else "? MiB"
    if stop == "ENOSPC" and free_inodes == 0:
        return True, (f"inodes exhausted after {made} files (all {detail.get('inodes_total')}), "
                      f"with {mib} of blocks still free")
    if stop == "ENOSPC":
        return False, (f"inodes were not exhausted after {made} files: the blocks ran out first "
                       f"({free_inodes} inodes free, {mib} free)")
    why = f"in {detail.get('time_limit')} s" if stop == "time-limit" else f"(stopped by {stop})"
    return False, f"inodes were not exhausted after {made} files {why}: {free_inodes} inodes still free, {mib} free"


def _shutdown(machine: Machine) -> dict:
    # Terminating an instance: QEMU quits at once, as if the hypervisor pulled the plug.
    if not machine.running:
        return {ALREADY: "the instance is already shut down"}
    machine.monitor.command("quit")
    machine.process.wait(timeout=30)
    return {"qmp": "quit"}


# The three netem faults stack on the one root qdisc: each keeps its options in a file
# and the qdisc is set to all of them (tc qdisc add would fail the second time).
_NETEM_DIR = "/run/unitchaos-netem"
_NETEM_ADD = (f"mkdir -p {_NETEM_DIR} && echo '{{netem}}' > {_NETEM_DIR}/{{kind}} && "
              f"tc qdisc replace dev eth0 root netem $(cat {_NETEM_DIR}/*)")
_NETEM_HEAL = (f"rm -f {_NETEM_DIR}/{{kind}}; if ls {_NETEM_DIR}/* >/dev/null 2>&1; "
               f"then tc qdisc replace dev eth0 root netem $(cat {_NETEM_DIR}/*); "
               f"else tc qdisc del dev eth0 root 2>/dev/null || true; fi")
XFS_SHUTDOWN = r"XFS \(vdb\):.*(Shutting down filesystem|Filesystem has been shut down)"
# SimianArmy's chaos types act on the instance; where it edits a security group or an EC2
# API, the lab does the same thing inside the guest (or through QEMU for the network link).
# A second burn on an instance that has it answers so: systemd-run would fail ("Unit
# chaos-burncpu-1.service was already loaded").
_BURN = ("if systemctl is-active --quiet chaos-{name}; then echo chaos-{name} {already}; "
         "else systemd-run --unit chaos-{name} --collect sh -c {script}; fi").replace("{already}", ALREADY)
FAULTS = {fault.name: fault for fault in [
    Fault("unplug", "hot-unplug the volume (QMP device_del): the guest sees the disk removed", "qemu",
          _unplug, {"xfs": r"XFS \(vdb\)", "ext4": r"vdb"}),
    Fault("yank", "remove the volume's backend (drive_del): the disk stays, every I/O fails with EIO",
          "qemu", _yank, {"xfs": XFS_SHUTDOWN, "ext4": r"(Buffer I/O error on dev vdb|JBD2|EXT4-fs error)"}),
    Fault("pause-io", "stall every volume I/O, no errors (AWS FIS pause-volume-io), until healed or for "
          "duration seconds", "qemu", block_faults.pause_io, heal_action=block_faults.resume_io,
          params={"duration": 0.0}),
    Fault("io-latency", "slow every volume I/O to one request per ms milliseconds (QEMU I/O throttling)",
          "qemu", block_faults.io_latency, heal_action=block_faults.resume_io, params={"ms": 100}),
    Fault("io-error", "fail the volume's writes (op=read|all: reads too) with EIO, after the first `after` "
          "writes (blkdebug under the qcow2 node)", "qemu", block_faults.io_error,
          {"xfs": XFS_SHUTDOWN, "ext4": r"(Buffer I/O error on dev vdb|JBD2|EXT4-fs error|Aborting journal)"},
          heal_action=block_faults.clear_io_error, params={"after": 0, "op": "write", "errno": "EIO"}),
    Fault("umount", "unmount the chain's volume behind systemd's back (lazily if busy)", "guest", _umount),
    Fault("stop-mount", "systemctl stop the volume's .mount unit", "guest", _stop_mount),
    Fault("shutdown", "terminate the instance (QMP quit), as SimianArmy's ShutdownInstance", "qemu", _shutdown),
    Fault("xfs-shutdown", "shut the volume's filesystem down on purpose (xfs_io -x -c shutdown; ext4 too)",
          "guest", guest_command(f"xfs_io -x -c shutdown {MOUNT_POINT}"),
          {"xfs": r"XFS \(vdb\):.*(User initiated shutdown|shut down)", "ext4": r"EXT4-fs \(vdb\): shut down"}),
    Fault("fill-volume", "fill the volume to the last block (fallocate)", "guest",
          # fallocate takes the bulk at once; dd then takes the last blocks fallocate leaves.
          guest_command(f"fallocate -l $(( $(df --output=avail -B1 {MOUNT_POINT} | tail -1) - (16 << 20) ))"
                        f" {MOUNT_POINT}/.unitchaos-fill;"
                        f" dd if=/dev/zero of={MOUNT_POINT}/.unitchaos-fill2 bs=64k 2>/dev/null || true;"
                        f" df --output=avail -B1 {MOUNT_POINT} | tail -1"),
          heal_action=guest_command(f"rm -f {MOUNT_POINT}/.unitchaos-fill {MOUNT_POINT}/.unitchaos-fill2")),
    Fault("exhaust-inodes", "create empty files on the volume until its inodes run out (ENOSPC), for at most "
          "`seconds`: ext4's are fixed at mkfs, XFS allocates them as it goes", "guest", _exhaust_inodes,
          heal_action=guest_command(f"rm -rf {MOUNT_POINT}/.unitchaos-inodes", timeout=300), params={"seconds": 120},
          judge=_inodes_exhausted, filesystems=("ext4", "xfs")),
    Fault("hang-docker", "freeze dockerd (SIGSTOP): the socket accepts, nothing answers", "guest",
          guest_command("kill -STOP $(pidof dockerd)"), heal_action=guest_command("kill -CONT $(pidof dockerd)")),
    Fault("agent-disconnect", "the agent drops its control-plane connection; metadata still answers 200",
          "guest", guest_command("curl -sf -XPOST http://127.0.0.1:51678/unitchaos/disconnect"),
          heal_action=guest_command("curl -sf -XPOST http://127.0.0.1:51678/unitchaos/connect")),
    Fault("link-down", "take the instance's network link down (QMP set_link): it drops off the network",
          "qemu", lambda m: {"qmp": m.monitor.command("set_link", name="net0", up=False) or "set_link net0 off"},
          heal_action=lambda m: {"qmp": m.monitor.command("set_link", name="net0", up=True) or "set_link net0 on"}),
    Fault("burn-cpu", "keep every CPU busy (SimianArmy BurnCpu)", "guest",
          guest_command("for i in $(seq $(nproc)); do "
                        + _BURN.format(name="burncpu-$i", script="'while :; do :; done'") + " 2>&1; done"),
          heal_action=guest_command("systemctl stop 'chaos-burncpu-*'")),
    Fault("burn-io", "write random data to the root disk in a loop (SimianArmy BurnIo)", "guest",
          guest_command(_BURN.format(name="burnio", script="'while :; do dd if=/dev/urandom of=/var/tmp/burn "
                                     "bs=1M count=128 iflag=fullblock conv=fsync 2>/dev/null; done'")),
          heal_action=guest_command("systemctl stop chaos-burnio; rm -f /var/tmp/burn")),
    Fault("fill-root", "fill the root disk (SimianArmy FillDisk)", "guest",
          guest_command("fallocate -l $(df --output=avail -B1 / | tail -1) /var/tmp/unitchaos-fill || true"),
          heal_action=guest_command("rm -f /var/tmp/unitchaos-fill")),
    Fault("kill-processes", "kill every java and python process each second (SimianArmy KillProcesses), "
          "sparing the harness's own command port", "guest",
          guest_command(_BURN.format(name="killprocesses", script="'while :; do for p in $(pgrep -f \"java|python\"); do "
                                     "[ $p = $(systemctl show -p MainPID --value unitchaos-cmdd) ] || kill -9 $p; "
                                     "done; sleep 1; done'")),
          heal_action=guest_command("systemctl stop chaos-killprocesses")),
    Fault("null-route", "blackhole 10.0.0.0/8 (SimianArmy NullRoute)", "guest",
          guest_command("ip route replace blackhole 10.0.0.0/8"), heal_action=guest_command("ip route del blackhole 10.0.0.0/8")),
    Fault("fail-dns", "drop DNS traffic, port 53 (SimianArmy FailDns)", "guest",
          guest_command(" && ".join(f"{{ iptables -C OUTPUT -p {proto} --dport 53 -j DROP 2>/dev/null && echo {ALREADY} || "
                                      f"iptables -I OUTPUT -p {proto} --dport 53 -j DROP; }}" for proto in ("udp", "tcp"))),
          heal_action=guest_command("iptables -D OUTPUT -p udp --dport 53 -j DROP; iptables -D OUTPUT -p tcp --dport 53 -j DROP")),
    *[Fault(f"fail-{service}", f"point the {service.upper()} endpoints at 127.0.0.1 in /etc/hosts (SimianArmy)",
            "guest", guest_command(f"grep -q unitchaos-fail-{service} /etc/hosts && echo {ALREADY} || "
                                  f"printf '127.0.0.1 {hosts}  # unitchaos-fail-{service}\\n' >> /etc/hosts"),
            heal_action=guest_command(f"sed -i '/unitchaos-fail-{service}/d' /etc/hosts"))
      for service, hosts in [("ec2", "ec2.amazonaws.com ec2.us-east-1.amazonaws.com"),
                             ("s3", "s3.amazonaws.com s3.us-east-1.amazonaws.com"),
                             ("dynamodb", "dynamodb.us-east-1.amazonaws.com")]],
    *[Fault(f"network-{kind}", f"netem {netem} on the guest's link (SimianArmy Network{kind.title()})", "guest",
            guest_command(_NETEM_ADD.format(kind=kind, netem=netem)), heal_action=guest_command(_NETEM_HEAL.format(kind=kind)))
      for kind, netem in [("corruption", "corrupt 5%"), ("latency", "delay 1000ms 500ms"), ("loss", "loss 7% 25%")]],
]}

# The 15 SimianArmy chaos types, by the fault that does the same in the lab. DetachVolumes
# is a yank by default: what the incident's Xen instance saw.
STRATEGIES = {
    "ShutdownInstance": "shutdown", "BlockAllNetworkTraffic": "link-down", "DetachVolumes": "yank",
    "BurnCpu": "burn-cpu", "BurnIo": "burn-io", "KillProcesses": "kill-processes", "NullRoute": "null-route",
    "FailEc2": "fail-ec2", "FailDns": "fail-dns", "FailDynamoDb": "fail-dynamodb", "FailS3": "fail-s3",
    "FillDisk": "fill-root", "NetworkCorruption": "network-corruption", "NetworkLatency": "network-latency",
    "NetworkLoss": "network-loss",
}


def get(name: str) -> Fault:
    """The fault called NAME; UserError naming the known ones if there is none."""
    try:
        return FAULTS[name]
    except KeyError:
        raise UserError(f"unknown fault {name!r}", f"use one of: {', '.join(FAULTS)}") from None
