"""What each release's kernel needs to boot under TCG (no KVM: this host's case): CPU
features hidden from it, one vCPU, the deep check paced for that vCPU, a longer wait for
devices. Each setting keeps the measured fact behind it."""
import json

# CPU features a release's kernel must not see under TCG. bookworm-backports' kernel
# (6.12.95+deb12) takes #DB warnings in kmem_cache_alloc's cmpxchg16b, then oopses or hangs
# in early boot under QEMU 7.2's TCG (any -cpu model, -smp 1, single-threaded TCG alike);
# without CX16 SLUB takes its locked path and the guest boots. trixie's 6.12.117 boots
# with CX16 (one unexplained panic in CI aside: see Instance.boot).
TCG_HIDDEN_FEATURES = {"bookworm-backports": ("cx16",)}
# Releases whose kernel gets one vCPU under TCG. trixie-backports' 7.3.4+deb13 oopses in
# early boot under QEMU 7.2's multi-threaded TCG with -smp 2 on a breakpoint the kernel's own
# text patching left in a 5-byte NOP (seen 2026-12-01, 2 of 2 boots, with and without CX16):
#   Oops: int3: 0000 [#1] SMP NOPTI / RIP: 0010:set_next_task_fair+0x609/0x780
#   Code: ... eb 6d 0f <1f> 44 00 00 ... / Kernel panic - not syncing: Fatal exception in interrupt
#   (other boot: RIP: 0010:__hrtimer_start_range_ns+0x45a/0x8d0)
# i.e. one vCPU ran stale translated code while another patched it (int3-based text_poke).
# Two ways out, both measured:
# - thread=single, -smp 2 (the vCPUs take turns on one host thread): boots, but never became
#   healthy, not even on a quiet host (2026-12-01 16:12-16:21 UTC, load 0.2-1.5: booted at
#   guest 225 s, then 5 min of failing deep checks; in the guest 59 % system time, load 13).
#   A vCPU waiting on the other (an IPI, a lock) waits out the other's whole time slice.
# - one vCPU, multi-threaded TCG: no second vCPU to run half-patched code, no oops (5 of 5
#   boots). On a quiet host (2026-12-01 17:51-18:15 UTC, load 0.6-1.3) booted at guest
#   167-215 s and passed the stock checks 3 s later; the deep check needs TCG_DEEP_CHECK_ENV.
# Not tried: QEMU 10 (Debian 13 hosts), whose MTTCG may run two vCPUs of this kernel safely.
TCG_ONE_VCPU = {"trixie-backports"}
# Under TCG on a loaded host udev's coldplug can outlast systemd's 90 s wait for the volume:
# on 2026-12-01 (host load 11-16 on 2 cores) trixie-backports (single-threaded) and sid
# (multi-threaded) both logged "dev-vdb.device: Job dev-vdb.device/start timed out.",
# "Dependency failed for format-ephemeral.service" and booted metadata=000 agent=inactive.
# A device that comes late is not what the experiments are about: wait longer.
TCG_KERNEL_ARGS = "systemd.default_device_timeout_sec=600"
# Kernel arguments only some releases need under TCG. trixie-backports' 7.3.4+deb13 starts
# DAMON's access sampler (damon_stat enabled=Y by default; damon_reclaim and damon_lru_sort
# are off): in a guest under MTTCG -smp 1 at host load 5-7 (2026-12-01 15:03 UTC) its
# kdamond.0 thread had used 1:38 of CPU in 17 min of uptime, as much as dockerd, while the
# deep check's container start timed out at 20 s. Page-access statistics are nothing the
# experiments look at: the vCPU is better spent on the guest's services.
TCG_RELEASE_KERNEL_ARGS = {"trixie-backports": "damon_stat.enabled=N"}
# The deep check's pacing and container budget where a release's guest has one vCPU
# (TCG_ONE_VCPU). By default its container test (create, start, wait, remove) has 20 s and
# runs every 30 s. On one TCG vCPU that start alone takes 15-35 s (3 tests, 2026-12-01
# 18:15 UTC, quiet host): with 20 s the first tests after boot timed out (18:03-18:10: "timeout
# at start after 20 s", the warm snapshot refused), and a start that timed out goes on inside
# dockerd while the next test starts 30 s later: at 17:56-17:58 the guest had 4 tests'
# containers at once, CPU pressure 100 %, and every probe timing out. With 60 s, every 60 s,
# the guest was deep-healthy 16 s after the stock checks (18:11-18:15). Every 120 s leaves
# the vCPU to the experiments: a test costs a third of it to half of it while it runs.
# The container test is still the one definition of "can start containers": the experiments'
# verdict asks through the running daemon's own code and budget (lab/container_start.py).
# The agent's tasks get the same budget for each Docker call (units.MACHINE_AGENT_DROPIN):
# with its default 20 s, 2 of 2 tasks right after a restore failed with "start: Docker POST
# .../start timed out after 20s" (20:49 UTC, host load 1), and CI of 4f4aa80 failed the
# healthy-chain scenario on it; a `docker run` there took 43 s.
# Its io probe (write, fsync, read back 4 KiB in a process of its own) gets 10 s instead of 3:
# on that vCPU, while a container test runs (CPU pressure avg10 94-99 %), the probe flapped
# "did not finish within 3 s (hung I/O)" every 10-20 s on a healthy volume (20:49-20:59 UTC),
# and a restore was refused for it ("io: a probe has been stuck for 8 s", 21:06): the
# process start waits for the vCPU, not for the disk.
TCG_DEEP_CHECK_ENV = {"trixie-backports": {"UNITCHAOS_HEALTH_CONTAINER_TIMEOUT": "60",
                                           "UNITCHAOS_HEALTH_CONTAINER_EVERY": "120",
                                           "UNITCHAOS_HEALTH_IO_TIMEOUT": "10"}}


# Seconds a boot to healthy may take where a release's guest has one vCPU under TCG (else the
# lab's default, 240 s). trixie-backports booted at guest 167-215 s on a quiet host (5 boots,
# 2026-12-01); with another guest on the host (21:10-21:20 UTC, load ~3) 2 of 2 snapshot boots
# passed 240 s, still starting the agent, so its snapshots could not be made.
TCG_BOOT_TIMEOUT = {"trixie-backports": 600}


def boot_timeout(default: float, accel: str, release: str) -> float:
    """How long RELEASE's guest may take to boot under ACCEL (DEFAULT under KVM)."""
    return default if accel == "kvm" else max(default, TCG_BOOT_TIMEOUT.get(release, 0))


def release_of(image) -> str:
    """The Debian release IMAGE was built for ("" for a user's FCOS image: no manifest)."""
    manifest = image.path / "manifest.json"
    return json.loads(manifest.read_text()).get("release", "") if manifest.exists() else ""


def cpu(model: str, release: str) -> str:
    """QEMU's -cpu under TCG: MODEL without the features RELEASE's kernel must not see."""
    return ",".join([model, *(f"-{f}" for f in TCG_HIDDEN_FEATURES.get(release, ()))])


def vcpus(default: int, release: str) -> int:
    """How many vCPUs RELEASE's guest gets under TCG: one where its kernel needs it."""
    return 1 if release in TCG_ONE_VCPU else default


# The container budget elsewhere: the deep check's --container-timeout default and the fake
# agent's UNITCHAOS_DOCKER_TIMEOUT default (vm/agent/fake_ecs_agent.py).
CONTAINER_BUDGET = 20
CONTAINER_BUDGET_ENV = "UNITCHAOS_HEALTH_CONTAINER_TIMEOUT"


def deep_check_env(accel: str, release: str) -> dict[str, str]:
    """The deep check's environment RELEASE's guest needs under ACCEL (nothing under KVM)."""
    return {} if accel == "kvm" else TCG_DEEP_CHECK_ENV.get(release, {})


def container_budget(health_env: dict[str, str]) -> float:
    """Seconds a container start may take in a guest whose deep check has HEALTH_ENV: the
    deep check's budget for its whole test, and the agent's for each Docker call (see
    units.MACHINE_AGENT_DROPIN)."""
    return float(health_env.get(CONTAINER_BUDGET_ENV, CONTAINER_BUDGET))


def kernel_args(args: str, accel: str, release: str = "") -> str:
    """The kernel command line ARGS, with what TCG needs added for RELEASE (nothing under KVM)."""
    if accel == "kvm":
        return args
    return " ".join(filter(None, (args, TCG_KERNEL_ARGS, TCG_RELEASE_KERNEL_ARGS.get(release))))
