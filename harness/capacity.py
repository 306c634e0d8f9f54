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
