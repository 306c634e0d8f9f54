"""The fake ECS agent's container image, packed from the guest's own Debian packages.

No registry is reachable from the lab, and the real agent is a container, so the image
is written in `docker save` format (loaded in the guest with `docker load`): one layer
holding Python from the guest's packages and the agent program.
"""
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .paths import VM_DIR

TAG = "amazon/amazon-ecs-agent:latest"
PACKAGES = ["python3-minimal", "python3.11-minimal", "libpython3.11-minimal",
            "libpython3.11-stdlib", "libc6", "zlib1g", "libexpat1", "libffi8", "libssl3",
            "libbz2-1.0", "liblzma5"]
AGENT = VM_DIR / "agent" / "fake_ecs_agent.py"
# Big parts of these packages that the agent never touches.
SKIP_PREFIXES = ("usr/lib/x86_64-linux-gnu/gconv/", "usr/share/", "usr/lib/python3.11/test/",
                 "usr/lib/python3.11/ensurepip/", "usr/lib/python3.11/idlelib/",
                 "usr/lib/python3.11/lib2to3/", "usr/lib/python3.11/pydoc_data/")


def build(rootfs: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="agent-rootfs.", dir=out.parent.parent) as tmp:
        layer_root = Path(tmp) / "root"
        _copy_packages(rootfs, layer_root)
        (layer_root / "agent").mkdir()
        shutil.copy(AGENT, layer_root / "agent" / "fake_ecs_agent.py")
        # Compiled once here: under emulation, compiling the stdlib at every start costs seconds.
        subprocess.run(["chroot", str(layer_root), "/usr/bin/python3", "-m", "compileall", "-q",
                        "/usr/lib/python3.11", "/agent"],
                       check=True, stdout=subprocess.DEVNULL)
        layer = Path(tmp) / "layer.tar"
        with tarfile.open(layer, "w") as tar:
            for entry in sorted(layer_root.iterdir()):
                tar.add(entry, arcname=entry.name)
        _write_archive(layer, out)


def _copy_packages(rootfs: Path, dest: Path) -> None:
    for top in ["tmp", "etc", "proc", "sys", "dev", "data", "log"]:
        (dest / top).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    for link in ["bin", "lib", "lib64", "sbin"]:
        os.symlink(os.readlink(rootfs / link), dest / link)
    listed = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-L", *PACKAGES],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for name in listed:
        rel = name.strip().lstrip("/")
        if not rel or rel.startswith(SKIP_PREFIXES):
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
