"""Volume faults in QEMU's block layer, applied to a running guest, so they work the same
on a guest restored from a warm snapshot as on a cold-booted one.

- pause-io, io-latency: QEMU's I/O throttling on the volume (block_set_io_throttle).
  A pause is a 1 byte/s limit: the request that finds the bucket empty still goes
  through, everything after it waits until the limit is lifted (no errors, as AWS FIS's
  pause-volume-io). Latency is a limit of 1000/N requests per second: a lone request
  waits about N ms, a queue waits its turn.
- io-error: a blkdebug node slid under the volume's qcow2 node with blockdev-reopen
  (node names from Machine._node_names), failing writes (or reads) with EIO, optionally
  only after the first N writes; healing slides it out again.

Why not nbdkit (its pause, delay and error filters): the volume is a qcow2 overlay of the
snapshot, qcow2 grows its file as it allocates clusters, and an NBD export has a fixed
size: served by nbdkit's file plugin, the first write to a new cluster failed with ENOSPC
(nbdkit 1.32, measured here). Serving the whole volume raw over NBD instead would put two
more processes under every experiment, for faults that a few use.
"""
import time

from ..errors import MonitorError, UserError
from ..machines.disks import YANK_NODE
from ..machines.machine import Machine

FILTER_NODE = "volume-blkdebug"
_NO_LIMITS = {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}
_ERRNO = {"EIO": 5, "ENOSPC": 28, "EROFS": 30}


def require_volume(machine: Machine, fault: str) -> None:
    """A volume fault needs the volume's backend; a yanked or unplugged one has none."""
    if not machine.capabilities.named_volume_nodes:
        raise UserError(f"{fault} needs the harness's own QEMU (libvirt names the volume's block nodes itself)",
                        "run it with --backend qemu")
    devices = {block["device"]: block for block in machine.monitor.command("query-block")}
    if "inserted" not in devices.get(machine.volume.name, {}):
        raise UserError(f"{fault} does not apply: the volume's disk was removed (yank or unplug)",
                        "inject it on an instance that still has its volume")


def remove_volume_backend(machine: Machine) -> dict:
    """Takes the volume's backend away and leaves its virtio device: every later I/O on it
    fails with EIO (a force-detached EBS volume whose Xen front end would not let go)."""
    if machine.capabilities.named_volume_nodes:
        machine.monitor.hmp(f"drive_del {machine.volume.name}")
        return {"hmp": f"drive_del {machine.volume.name}"}
    # libvirt attaches disks with -blockdev, and drive_del cannot remove a node a device
    # uses. Same effect: the format node's file is swapped (blockdev-reopen) for a blkdebug
    # filter that fails every read, write and flush with EIO, for good.
    nodes = {node["node-name"]: node for node in machine.monitor.command("query-named-block-nodes", flat=True)}
    node = nodes[machine.volume.name]
    storage = next(name for name, other in nodes.items()
                   if other["drv"] == "file" and other["file"] == str(machine.volume.path))
    rules = [{"event": event, "errno": 5, "once": False} for event in ("read_aio", "write_aio", "flush_to_disk")]
    machine.monitor.command("blockdev-add", driver="blkdebug", **{"node-name": YANK_NODE}, image=storage,
                            **{"inject-error": rules})
    cache = {"direct": node["cache"]["direct"], "no-flush": node["cache"]["no-flush"]}
    machine.monitor.command("blockdev-reopen", options=[{
        "driver": node["drv"], "node-name": machine.volume.name, "read-only": node["ro"],
        "cache": cache, "file": YANK_NODE, "backing": None}])
    return {"qmp": f"blockdev-reopen {machine.volume.name} file={YANK_NODE} (blkdebug: EIO on all I/O)"}


def throttle(machine: Machine, **limits) -> None:
    # The block backend hangs off the virtio-blk-pci proxy's inner device.
    device = f"/machine/peripheral/{machine.volume.device_id}/virtio-backend"
    machine.monitor.command("block_set_io_throttle", id=device, **{**_NO_LIMITS, **limits})


def pause_io(machine: Machine, duration: float = 0.0) -> dict:
    """Stalls the volume's I/O until healed or, with DURATION, for that many seconds
    (then the outcome shows what the stall left behind)."""
    require_volume(machine, "pause-io")
    throttle(machine, bps=1)
    record = {"qmp": f"block_set_io_throttle id={machine.volume.device_id} bps=1"}
    if duration:
        time.sleep(duration)
        resume_io(machine)
        record["resumed_after_s"] = duration
    return record


def resume_io(machine: Machine) -> dict:
    # Lifting the limits drains the queue: every held request runs now.
    require_volume(machine, "heal")
    throttle(machine)
    return {"qmp": f"block_set_io_throttle id={machine.volume.device_id} (no limits)"}


def io_latency(machine: Machine, ms: int = 100) -> dict:
    if not 1 <= ms <= 1000:
        raise UserError(f"io-latency ms={ms} is out of range", "use 1 to 1000 milliseconds")
    require_volume(machine, "io-latency")
    iops = max(1, round(1000 / ms))
    throttle(machine, iops=iops)
    return {"qmp": f"block_set_io_throttle id={machine.volume.device_id} iops={iops}", "ms": ms}


def io_error(machine: Machine, after: int = 0, op: str = "write", errno: str = "EIO") -> dict:
    """Fails the volume's OP requests ("write", "read" or "all") with ERRNO once AFTER
    writes have reached the volume's file (0: from the next request on). Counted below
    qcow2: a guest write to a cluster not yet allocated is several writes there (data,
    L2 table, refcounts), one to an allocated cluster is one."""
    if op not in ("write", "read", "all"):
        raise UserError(f"io-error op={op!r} is not known", "use op=write, op=read or op=all")
    if errno not in _ERRNO:
        raise UserError(f"io-error errno={errno!r} is not known", f"use one of: {', '.join(_ERRNO)}")
    if after < 0:
        raise UserError(f"io-error after={after} is negative", "use after=0 or more")
    require_volume(machine, "io-error")
    if _filter_present(machine):
        # Say so rather than fail; the first injection's rules stand, these were not applied.
        return {"already_in_effect": "io-error is already injected on this volume (its first parameters "
                "stand; heal it to inject others)", "op": op, "after": after, "errno": errno}
    # blkdebug is a state machine. States 1..AFTER count writes (each moves state i to
    # i+1); in state AFTER+1 the error rules fire; HEALED is where clear_io_error sends it.
    healed = after + 2
    events = {"write": "pwritev", "read": "read_aio"}  # qcow2 signals read_aio before a data read
    errors = [{"event": events[kind], "iotype": kind, "state": after + 1, "errno": _ERRNO[errno], "immediately": True}
              for kind in (events if op == "all" else [op])]
    # An error rule stays armed until another rule with an error is processed: in HEALED,
    # rules with errno 0 take their place and let every request through.
    errors += [{"event": event, "state": healed, "errno": 0} for event in events.values()]
    transitions = [{"event": "pwritev", "state": i, "new_state": i + 1} for i in range(1, after + 1)]
    # Healing needs an event the guest never causes: a write to the qcow2 image's VM
    # state area, which only savevm (or our qemu-io) writes.
    transitions += [{"event": "vmstate_save", "state": i, "new_state": healed} for i in range(1, after + 2)]
    options = {"node-name": FILTER_NODE, "image": f"{machine.volume.name}-file",
               "inject-error": errors, "set-state": transitions}
    machine.monitor.command("blockdev-add", driver="blkdebug", **options)
    try:
        _reopen_volume(machine, file=FILTER_NODE)
    except MonitorError:
        machine.monitor.command("blockdev-del", **{"node-name": FILTER_NODE})
        raise
    return {"qmp": f"blockdev-add blkdebug {FILTER_NODE}; blockdev-reopen {machine.volume.name}-fmt "
                   f"file={FILTER_NODE}", "op": op, "after": after, "errno": errno}


def clear_io_error(machine: Machine) -> dict:
    require_volume(machine, "heal")
    if not _filter_present(machine):
        raise UserError("io-error was not injected on this volume", "inject it before healing it")
    # Stop the errors first: taking the filter out flushes qcow2's metadata through it.
    machine.monitor.hmp(f'qemu-io {machine.volume.name} "write -b 0 512"')
    _reopen_volume(machine, file=f"{machine.volume.name}-file")
    machine.monitor.command("blockdev-del", **{"node-name": FILTER_NODE})
    return {"qmp": f"qemu-io {machine.volume.name} 'write -b 0 512' (heals blkdebug); blockdev-reopen {machine.volume.name}-fmt file={machine.volume.name}-file; "
                   f"blockdev-del {FILTER_NODE}"}


def _reopen_volume(machine: Machine, file: str) -> None:
    # blockdev-reopen resets every option it is not given: name the backing file too.
    name = machine.volume.name
    # A restored volume is an overlay with a backing node; ask QEMU, which knows (a later
    # CLI call on an interactive instance does not).
    backing = f"{name}-base" if _node_present(machine, f"{name}-base") else None
    machine.monitor.command("blockdev-reopen", options=[
        {"driver": "qcow2", "node-name": f"{name}-fmt", "file": file, "backing": backing,
         "cache": {"no-flush": True}}])


def _filter_present(machine: Machine) -> bool:
    return _node_present(machine, FILTER_NODE)


def _node_present(machine: Machine, name: str) -> bool:
    nodes = machine.monitor.command("query-named-block-nodes", flat=True)
    return any(node.get("node-name") == name for node in nodes)
