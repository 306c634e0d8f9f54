"""KVM or TCG: use KVM only when a guest is seen to actually run under it.

On some hosts /dev/kvm opens but a guest hangs as soon as its kernel starts (nested
virtualization gone wrong). The probe boots the guest kernel with no root disk: it
panics and QEMU exits within a second or two under working KVM. No exit in a few
seconds means KVM is unusable here. The verdict is cached until the host reboots.
"""
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .. import progress
from ..errors import UserError
from ..paths import cache_dir

PROBE_SECONDS = 5.0
QEMU = "qemu-system-x86_64"


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if not path:
        raise UserError(f"{QEMU} is not installed", "apt-get install qemu-system-x86 qemu-utils")
    return path


@functools.lru_cache(maxsize=None)
def qemu_version() -> str:
    out = subprocess.run([qemu_binary(), "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def choose(kernel: Path) -> str:
    """'kvm' or 'tcg'. UNITCHAOS_ACCEL forces one; forcing a broken KVM is an error."""
    forced = os.environ.get("UNITCHAOS_ACCEL", "").strip().lower()
    if forced and forced not in ("kvm", "tcg"):
        raise UserError(f"UNITCHAOS_ACCEL={forced!r} is not an accelerator", "set it to kvm or tcg, or unset it")
    if forced == "tcg":
        return "tcg"
    verdict = kvm_verdict(kernel)
    if forced == "kvm" and not verdict["usable"]:
        raise UserError(f"KVM is not usable here: {verdict['reason']}", "unset UNITCHAOS_ACCEL to fall back to TCG")
    return "kvm" if verdict["usable"] else "tcg"


def kvm_verdict(kernel: Path) -> dict:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return {"usable": False, "reason": "/dev/kvm is missing or not writable", "seconds": 0.0}
    key = f"{_boot_id()} {qemu_version()} {kernel.stat().st_size}"
    # One file per key: guests of two releases (two kernels) must not evict each other's verdict.
    cache = cache_dir() / f"kvm-probe-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached
    except (OSError, ValueError):
        pass
    with progress.step("Checking whether KVM really runs a guest"):
        verdict = _probe(kernel)
    verdict["key"] = key
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(verdict))
    tmp.replace(cache)
    return verdict


def _probe(kernel: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="unitchaos-kvm-probe.") as tmp:
        console = Path(tmp) / "console.log"
        started = time.monotonic()
        proc = subprocess.Popen(
            [qemu_binary(), "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display", "none",
             "-no-user-config", "-serial", f"file:{console}", "-no-reboot", "-kernel", str(kernel),
             "-append", "console=ttyS0 panic=-1 loglevel=4"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = proc.communicate(timeout=PROBE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return {"usable": False, "seconds": round(time.monotonic() - started, 2),
                    "reason": f"a KVM guest made no progress in {PROBE_SECONDS:.0f} s (hangs after the kernel starts)"}
        seconds = round(time.monotonic() - started, 2)
        text = console.read_text(errors="replace")
        if "Kernel panic" in text:
            return {"usable": True, "seconds": seconds, "reason": "a KVM guest booted its kernel"}
        return {"usable": False, "seconds": seconds,
                "reason": f"QEMU with KVM exited early: {stderr.strip().splitlines()[-1:] or 'no output'}"}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"
