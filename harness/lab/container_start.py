"""Can this instance start containers? One definition, one time budget: the deep check's.

The deep check (vm/guest/usr/local/sbin/unitchaos-health, DockerCheck) answers it with a
container test: no live dockerd is a no (it never asks docker.sock, which would wake
Docker through socket activation); else create, start, wait for exit 0 and remove the
task image's container through Docker's own socket, all within --container-timeout
(20 s). The experiment's verdict used a probe of its own (the agent's task, 20 s per
Docker call and 30 s on the host's side; or `docker run` for 30 s): under burn-cpu the
findings showed containers failing to start while the deep check passed.

So the verdict runs the deep check's own code, in the guest, with the running daemon's
own arguments and environment (its command line and EnvironmentFile, read from /proc):
the same test and the same budget by construction, with nothing copied to the host
and nothing in the guest's image changed. The budget is the guest's, on the guest's
clock, and is not scaled: it is what "can start containers" means, not a wait.
"""
import json

from ..machines.machine import Machine

DEEP_CHECK = "/usr/local/sbin/unitchaos-health"
DEEP_CHECK_UNIT = "unitchaos-health.service"

# Loads the daemon as a module (it runs nothing on import: main() is behind __main__),
# rebuilds its arguments from the running process, then asks what its DockerCheck asks.
SCRIPT = r"""
import importlib.machinery, importlib.util, json, os, sys, time
pid = int(sys.argv[1] or 0)
if pid <= 0:
    print(json.dumps({"definition": None, "why": "the deep check is not running"})); sys.exit(0)
with open(f"/proc/{pid}/cmdline", "rb") as f:
    argv = [a.decode() for a in f.read().split(b"\0") if a]
with open(f"/proc/{pid}/environ", "rb") as f:
    env = dict(e.decode("utf-8", "replace").partition("=")[::2] for e in f.read().split(b"\0") if b"=" in e)
at = next((i for i, a in enumerate(argv) if a.endswith("unitchaos-health")), None)
if at is None:
    print(json.dumps({"definition": None, "why": f"pid {pid} is not the deep check: {argv[:2]}"})); sys.exit(0)
path = argv[at] if os.path.isabs(argv[at]) else PATH
if not os.path.isfile(path):  # run in a container of its own (Fedora CoreOS): not here to load
    print(json.dumps({"definition": None, "why": f"{path} is not in this guest's filesystem"})); sys.exit(0)
os.environ.update({k: v for k, v in env.items() if k.startswith("UNITCHAOS_HEALTH_")})
loader = importlib.machinery.SourceFileLoader("unitchaos_health", path)
spec = importlib.util.spec_from_file_location("unitchaos_health", path, loader=loader)
health = importlib.util.module_from_spec(spec)
loader.exec_module(health)
args = health.parse_args(argv[at + 1:])
check = health.DockerCheck(args)
out = {"definition": path, "budget": args.container_timeout, "every": args.container_every,
       "socket": args.docker_socket, "image": args.container_image}
if check.pidfile and not health.pid_alive(check.pidfile):
    out.update(ok=False, dockerd=False, seconds=0.0,
               error=f"dockerd is not running (no live pid in {check.pidfile})")
else:
    began = time.monotonic()
    check.run_container()
    ok, error, _ = check.container_result
    out.update(ok=ok, dockerd=True, seconds=round(time.monotonic() - began, 2), error=error)
print(json.dumps(out))
""".replace("PATH", repr(DEEP_CHECK))


def probe(machine: Machine) -> dict | None:
    """The deep check's container test, run now in MACHINE's guest: {"ok", "error",
    "seconds", "budget", "every", "dockerd", "via": "deep check's container test", ...};
    None when the guest has no deep check running to take the definition from (Fedora
    CoreOS runs it in a container)."""
    pid = machine.run(f"systemctl show -p MainPID --value {DEEP_CHECK_UNIT} 2>/dev/null || echo 0",
                      timeout=30).stdout.strip() or "0"
    # The budget is the guest's (20 s by default); this only bounds the wait for the answer,
    # with room for Python's start-up under TCG on a loaded host.
    result = machine.run(f"python3 - {pid} <<'EOF'\n{SCRIPT}\nEOF", timeout=120)
    return parse(result.stdout, result.stderr)


def parse(stdout: str, stderr: str = "") -> dict | None:
    """The probe's answer as the outcome records it, or None if there was no deep check."""
    lines = stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"via": "deep check's container test", "ok": False,
                "error": f"the probe said nothing usable: {(stderr or stdout).strip()[-300:] or 'no output'}"}
    if not answer.get("definition"):
        return None
    return {"via": "deep check's container test", **answer}
