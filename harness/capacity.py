"""How many guests this host can run at once: bounded by cores and by free memory."""
import os

# QEMU's own overhead on top of the guest's RAM (TCG translation cache, devices).
QEMU_OVERHEAD_MB = 512


def available_memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def max_parallel_vms(memory_mb: int = 1024, wanted: int | None = None) -> int:
    """At most WANTED (default: one per core), never more than 80% of free memory allows."""
    by_memory = int(available_memory_mb() * 0.8) // (memory_mb + QEMU_OVERHEAD_MB)
    by_cores = wanted or os.cpu_count() or 1
    return max(1, min(by_cores, by_memory))


def max_parallel_tests(memory_mb: int = 1024, guest_vcpus: int = 2) -> int:
    """Test workers that each run a guest at once (`pytest -n auto`): every guest gets as
    many host cores as it has vCPUs, because a test's container start must stay within its
    budget. Measured 2026-12-01 21:06-21:09 on 2 cores: with a second guest running, a
    restored bookworm guest's container test timed out at its 20 s budget 6 times in 6, and
    two cold boots at once timed out too. So a 2-core host runs one, an 8-core one four."""
    return max_parallel_vms(memory_mb, wanted=max(1, (os.cpu_count() or 1) // guest_vcpus))
