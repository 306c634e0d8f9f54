"""What each release's kernel needs to boot under TCG (no KVM: this host's case): CPU
features hidden from it, single-threaded TCG, a longer wait for devices. Each setting
keeps the measured fact behind it."""
import json

# CPU features a release's kernel must not see under TCG. bookworm-backports' kernel
# (6.12.95+deb12) takes #DB warnings in kmem_cache_alloc's cmpxchg16b, then oopses or hangs
# in early boot under QEMU 7.2's TCG (any -cpu model, -smp 1, single-threaded TCG alike);
# without CX16 SLUB takes its locked path and the guest boots. trixie's 6.12.117 boots
# with CX16 (one unexplained panic in CI aside: see Instance.boot).
TCG_HIDDEN_FEATURES = {"bookworm-backports": ("cx16",)}
# Releases whose kernel must run under single-threaded TCG. trixie-backports' 7.3.4+deb13
# oopses in early boot under QEMU 7.2's multi-threaded TCG with -smp 2 on a breakpoint the
# kernel's own text patching left in a 5-byte NOP (seen 2026-12-01, 2 of 2 boots, with and
# without CX16):
#   Oops: int3: 0000 [#1] SMP NOPTI / RIP: 0010:set_next_task_fair+0x609/0x780
#   Code: ... eb 6d 0f <1f> 44 00 00 ... / Kernel panic - not syncing: Fatal exception in interrupt
#   (other boot: RIP: 0010:__hrtimer_start_range_ns+0x45a/0x8d0)
# i.e. one vCPU ran stale translated code while another patched it (int3-based text_poke).
# With thread=single (vCPUs take turns) the same image boots to systemd: `unitchaos: booted`
# at guest 264 s and 381 s (2026-12-01 12:05 and 12:33 UTC, host load 5-7 on 2 cores).
# Tried instead (2026-12-01 14:46-15:04 UTC, load 5-8, 1 boot): multi-threaded TCG with
# -smp 1 (no second vCPU to run the half-patched code). It boots without the oops, but no
# faster: booted at guest 642 s, then the deep check's container start timed out (20 s, in
# the guest) for 8 more minutes, the failure thread=single's snapshots had too. So
# thread=single stays: two measured boots faster at comparable load, and nothing won by -smp 1.
TCG_SINGLE_THREAD = {"trixie-backports"}
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
# Not enough on its own: with it (thread=single, 2026-12-01 15:34-15:49 UTC, load 5.5-7.3)
# the guest booted at 573 s and its warm snapshot still failed (888 s): the deep check's
# 20 s container start and 2-3 s probes time out in a guest starved of host CPU.
# On a quiet host too (16:12-16:21 UTC, host load 0.2-1.5, the only guest): booted at guest
# 225 s (3.7 min wall), then 5 more minutes with the deep check failing: "container test
# failed: timeout at start after 20 s", io "the probe did not finish within 3 s (hung I/O)";
# in the guest load 13.4, CPU 41 % user / 59 % system, unitchaos-health 2:09 of CPU in 8 min.
# Two vCPUs taking turns on one host thread are too slow for the chain's own time budgets;
# sid's 7.2.13 under multi-threaded TCG passes the same checks. Next to try: QEMU 10's MTTCG
# (Debian 13 hosts), where the cross-vCPU text-patching oops may be gone.
TCG_RELEASE_KERNEL_ARGS = {"trixie-backports": "damon_stat.enabled=N"}


def release_of(image) -> str:
    """The Debian release IMAGE was built for ("" for a user's FCOS image: no manifest)."""
    manifest = image.path / "manifest.json"
    return json.loads(manifest.read_text()).get("release", "") if manifest.exists() else ""


def cpu(model: str, release: str) -> str:
    """QEMU's -cpu under TCG: MODEL without the features RELEASE's kernel must not see."""
    return ",".join([model, *(f"-{f}" for f in TCG_HIDDEN_FEATURES.get(release, ()))])


def threads(default: str, release: str) -> str:
    """TCG's thread= for RELEASE: "single" where its kernel needs it, else DEFAULT."""
    return "single" if release in TCG_SINGLE_THREAD else default


def kernel_args(args: str, accel: str, release: str = "") -> str:
    """The kernel command line ARGS, with what TCG needs added for RELEASE (nothing under KVM)."""
    if accel == "kvm":
        return args
    return " ".join(filter(None, (args, TCG_KERNEL_ARGS, TCG_RELEASE_KERNEL_ARGS.get(release))))
