"""The fake ECS agent's container image, packed from the guest's own Debian packages.

No registry is reachable from the lab, and the real agent is a container, so the image
is written in `docker save` format (loaded in the guest with `docker load`): one layer
holding Python from the guest's packages and the agent program.
"""
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..errors import UnitchaosError
from ..paths import VM_DIR
from ..waiting import Deadline, wait_until

TAG = "amazon/amazon-ecs-agent:latest"
AGENT = VM_DIR / "agent" / "fake_ecs_agent.py"
# The deep health daemon rides along: where the host has no Python (Fedora CoreOS), it
# runs in a container from this image (see harness/images/ignition.py).
HEALTH = VM_DIR / "guest" / "usr" / "local" / "sbin" / "unitchaos-health"


def packages(python: str) -> list[str]:
    """The Debian packages the agent's Python (PYTHON: "python3.11", the release's) needs."""
    return ["python3-minimal", f"{python}-minimal", f"lib{python}-minimal", f"lib{python}-stdlib",
            "libc6", "zlib1g", "libexpat1", "libffi8", "libbz2-1.0", "liblzma5"]


def skip_prefixes(python: str) -> tuple[str, ...]:
    """Big parts of those packages that the agent never touches.
    (No libssl: the agent speaks plain HTTP, and http.client does without ssl.)"""
    return ("usr/lib/x86_64-linux-gnu/gconv/", "usr/lib/x86_64-linux-gnu/libmvec", "usr/share/",
            *(f"usr/lib/{python}/{part}/" for part in ("test", "ensurepip", "idlelib", "lib2to3", "pydoc_data")))


def guest_python(rootfs: Path) -> str:
    """The release's Python, e.g. "python3.11" (bookworm) or "python3.13" (trixie)."""
    target = os.readlink(rootfs / "usr/bin/python3")
    return Path(target).name


# Prints the file of every module named on the command line.
MODULE_FILES = """
import importlib.util, sys
for name in sys.argv[1:]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        continue
    if spec and spec.origin and spec.origin.startswith("/"):
        print(spec.origin)
"""


def build(rootfs: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="agent-rootfs.", dir=out.parent.parent) as tmp:
        layer_root = Path(tmp) / "root"
        python = guest_python(rootfs)
        _copy_packages(rootfs, layer_root, python)
        (layer_root / "agent").mkdir()
        shutil.copy(AGENT, layer_root / "agent" / "fake_ecs_agent.py")
        shutil.copy(HEALTH, layer_root / "agent" / "unitchaos-health")
        # Compiled once here: under emulation, compiling at every start costs seconds.
        subprocess.run(["chroot", str(layer_root), "/usr/bin/python3", "-m", "compileall", "-q",
                        f"/usr/lib/{python}", "/agent"],
                       check=True, stdout=subprocess.DEVNULL)
        _keep_only_imported_modules(layer_root, python)
        layer = Path(tmp) / "layer.tar"
        with tarfile.open(layer, "w") as tar:
            for entry in sorted(layer_root.iterdir()):
                tar.add(entry, arcname=entry.name)
        _write_archive(layer, out)


def _keep_only_imported_modules(layer_root: Path, python: str) -> None:
    """Drops the standard library modules the agent never imports. `docker load` hashes and
    unpacks every byte at each boot, which under emulation costs about a second per 4 MB.
    The agent is run for real (bind, serve each endpoint, stop) so that the standard
    library's own lazy imports (idna when binding, say) are seen too."""
    names = sorted(set(_imported_while_serving(layer_root)) | set(_imported_by_a_task(layer_root))
                   | set(_imported_by_health_daemon(layer_root)))
    listed = subprocess.run(["chroot", str(layer_root), "/usr/bin/python3", "-c", MODULE_FILES, *names],
                            capture_output=True, text=True, check=True).stdout.split()
    stdlib = layer_root / "usr/lib" / python
    # os is frozen into the interpreter, but os.py is the landmark Python finds its prefix by.
    keep = {layer_root / path.lstrip("/") for path in listed} | {stdlib / "os.py"}
    for path in sorted(stdlib.rglob("*"), reverse=True):
        if path.is_file() and path.suffix in (".py", ".so") and path not in keep:
            path.unlink()
            for compiled in path.parent.glob(f"__pycache__/{path.stem}.cpython-*.pyc"):
                compiled.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _imported_by_a_task(layer_root: Path) -> list[str]:
    """What the task containers (the agent's and the health check's `python3 -c ...`) import:
    from 3.13 on, `-c` alone pulls in linecache and its own imports."""
    done = subprocess.run(["chroot", str(layer_root), "/usr/bin/python3", "-X", "importtime", "-c", "print('task ran')"],
                          capture_output=True, text=True, check=True, timeout=60)
    return _import_names(done.stderr)


def _import_names(importtime_output: str) -> list[str]:
    names = [line.split("|")[-1].strip() for line in importtime_output.splitlines() if line.startswith("import time:")]
    return sorted({name for name in names if name and name != "package"})


def _answered(port: int, method: str, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(method, path, body=b"{}" if method == "POST" else None)
        conn.getresponse().read()
        conn.close()
        return True
    except OSError:
        return False


def _imported_while_serving(layer_root: Path) -> list[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = subprocess.Popen(
        ["chroot", str(layer_root), "/usr/bin/python3", "-X", "importtime", "/agent/fake_ecs_agent.py",
         "--host", "127.0.0.1", "--port", str(port), "--docker-socket", "/nonexistent.sock"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin"), "UNITCHAOS_DOCKER_TIMEOUT": "2"})
    try:
        # One 30 s budget for all the requests: the first waits for the agent to listen.
        budget = Deadline(30)
        for method, path in [("GET", "/v1/metadata"), ("GET", "/v1/tasks"), ("POST", "/v1/tasks"),
                             ("GET", "/unitchaos/agent"), ("POST", "/unitchaos/disconnect"), ("GET", "/nope")]:
            wait_until(lambda: _answered(port, method, path), budget.left(),
                       f"the fake agent in the image layer to answer {method} {path}", scale=False, interval=0.1,
                       on_timeout=lambda message, _: UnitchaosError(message))
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    return sorted(set(_import_names(stderr)) | {"encodings.idna"})


def _imported_by_health_daemon(layer_root: Path) -> list[str]:
    """The health daemon imports every module it uses at start-up (it must keep answering
    when the disk is dead), so starting it far enough to print its usage sees them all."""
    done = subprocess.run(["chroot", str(layer_root), "/usr/bin/python3", "-X", "importtime",
                           "/agent/unitchaos-health", "--help"], capture_output=True, text=True, timeout=60)
    return _import_names(done.stderr)


def _copy_packages(rootfs: Path, dest: Path, python: str) -> None:
    for top in ["tmp", "etc", "proc", "sys", "dev", "data", "log"]:
        (dest / top).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    for link in ["bin", "lib", "lib64", "sbin"]:
        os.symlink(os.readlink(rootfs / link), dest / link)
    listed = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-L", *packages(python)],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    skipped = skip_prefixes(python)
    for name in listed:
        rel = name.strip().lstrip("/")
        if not rel or rel.startswith(skipped):
            continue
        # dpkg lists paths under /lib and /bin; they live under /usr on a merged-/usr system.
        src = rootfs / rel
        if src.is_symlink() or src.is_file():
            real = Path(os.path.realpath(src.parent)).relative_to(os.path.realpath(rootfs)) / src.name
            target = dest / real
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() and not target.is_symlink():
                shutil.copy2(src, target, follow_symlinks=False)


def _write_archive(layer: Path, out: Path) -> None:
    layer_digest = _sha256(layer)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["python3", "/agent/fake_ecs_agent.py"],
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
                   "WorkingDir": "/", "StopSignal": "SIGTERM"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "unitchaos: python3 from Debian packages + fake ECS agent"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [TAG], "Layers": [f"{layer_digest}/layer.tar"]}]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tar:
        _add_bytes(tar, config_name, config_bytes)
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        tar.add(layer, arcname=f"{layer_digest}/layer.tar")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
