"""Fedora CoreOS: the lab's guest as an Ignition config, rendered from the same files the
Debian guest is built from. Spec 3.3.0: the newest that Debian's Ignition 2.14 validates
as stable (3.4.0 is still experimental there); every current Fedora CoreOS reads it.

What goes in:
- the unit chain, rendered for the variant (harness/units.py), as systemd units and
  drop-ins, enabled where their [Install] says so;
- the guest programs the chain calls (vm/guest): Docker's daemon.json, the agent's
  ecs.config, the agent image loader, the boot-finished marker and the kernel patterns;
- the fake agent's container image (the docker-save archive built with the Debian image,
  harness/images/agent_image.py). Fedora CoreOS has Docker (moby) and podman but no Python, and
  the archive carries its own. It is embedded as a gzip-compressed data: URL (17 MB ->
  about 8 MB of base64): the config then needs nothing else, no server on the host to
  start, reach from the guest and tear down, and works the same in CI;
- the deep health daemon: a Python program, so on Fedora CoreOS it runs with the agent
  image's Python in a podman container (podman's storage is on the root disk, not on the
  volume under test) sharing the host's network, PIDs and the volume's mount.

Paths move where Fedora CoreOS allows writes: /usr is read-only, /usr/local is
/var/usrlocal, so the archive goes to /usr/local/share/unitchaos/.
"""
import base64
import gzip
import json
import shutil
import subprocess
from pathlib import Path

from .. import units
from ..errors import UserError
from .image import Image
from ..paths import VM_DIR, cache_dir

SPEC = "3.3.0"
CONFIG_FW_CFG = "opt/com.coreos/config.ign"
GUEST = VM_DIR / "guest"
DEBIAN_ARCHIVE = "/usr/share/unitchaos/ecs-agent.tar"
FCOS_ARCHIVE = "/usr/local/share/unitchaos/ecs-agent.tar"
PODMAN_IMAGE = "docker.io/amazon/amazon-ecs-agent:latest"
# Guest files that serve the chain on either guest, by their path in the guest.
FILES = {
    "/etc/docker/daemon.json": 0o644,
    "/etc/ecs/ecs.config": 0o644,
    "/usr/local/sbin/unitchaos-load-agent-image": 0o755,
    "/usr/local/sbin/unitchaos-ready": 0o755,
    "/usr/local/share/unitchaos/kernel-patterns.json": 0o644,
}
GUEST_UNITS = ["unitchaos-ready.service"]

# The deep health daemon on a host without Python. Like its Debian unit, no dependency on
# the chain: it must answer 503 exactly when the chain is broken. rslave: a mount or an
# unmount of the volume on the host shows in the container too.
HEALTH_UNIT = f"""[Unit]
Description=Deep health check of the Docker volume, Docker and the ECS agent on :51680 (in podman: no Python on the host)
After=network-online.target

[Service]
ExecStartPre=-/usr/bin/podman rm -f unitchaos-health
ExecStartPre=/usr/bin/mkdir -p /var/lib/docker
ExecStartPre=/bin/sh -c 'podman image exists {PODMAN_IMAGE} || podman load -q -i {FCOS_ARCHIVE}'
ExecStart=/usr/bin/podman run --rm --name unitchaos-health --net=host --pid=host --privileged \\
    -v /var/lib/docker:/var/lib/docker:rslave -v /run:/run:rslave \\
    -v /usr/local/share/unitchaos:/usr/local/share/unitchaos:ro \\
    {PODMAN_IMAGE} python3 /agent/unitchaos-health \\
    --docker-socket /run/docker.sock --docker-pidfile /run/docker.pid
ExecStop=-/usr/bin/podman stop -t 2 unitchaos-health
Restart=always
RestartSec=1
OOMScoreAdjust=-500

[Install]
WantedBy=multi-user.target
"""

# Fedora's Docker labels containers for SELinux, and a labelled container may not talk to
# docker.sock: the agent could not start tasks. The Debian guest runs without SELinux.
# Fedora's options otherwise, less --live-restore: the Debian guest's containers stop with
# dockerd, and BindsTo= experiments depend on that.
DOCKER_SYSCONFIG = ('OPTIONS="--log-driver=journald --default-ulimit nofile=1024:1024 '
                    '--init-path /usr/libexec/docker/docker-init '
                    '--userland-proxy-path /usr/libexec/docker/docker-proxy"\n')


def config(variant: units.Variant, ssh_public_key: str, agent_archive: Path) -> dict:
    """The Ignition config (a dict, JSON-ready) for VARIANT's chain on Fedora CoreOS."""
    rendered = units.check(variant)
    system_units = []
    dropins: dict[str, list[dict]] = {}
    for rel, text in rendered.items():
        if rel in units.GENERATED:
            continue  # The lab guest's own services; HEALTH_UNIT below is Fedora CoreOS's.
        if "/" in rel:
            unit_dir, name = rel.split("/", 1)
            dropins.setdefault(unit_dir.removesuffix(".d"), []).append({"name": name, "contents": text})
        else:
            system_units.append(_unit(rel, text))
    for name, items in dropins.items():
        unit = next((u for u in system_units if u["name"] == name), None)
        if unit is None:  # A drop-in for a unit the OS ships (docker.service).
            unit = {"name": name, "enabled": True}
            system_units.append(unit)
        unit["dropins"] = items
    for name in GUEST_UNITS:
        system_units.append(_unit(name, (GUEST / "etc/systemd/system" / name).read_text()))
    system_units.append(_unit("unitchaos-health.service", HEALTH_UNIT))
    # Zincati would update and reboot the instance in the middle of an experiment.
    system_units.append({"name": "zincati.service", "mask": True})

    files = [_file(path, _guest_text(path).encode(), mode) for path, mode in FILES.items()]
    files.append(_file("/etc/sysconfig/docker", DOCKER_SYSCONFIG.encode(), 0o644, overwrite=True))
    files.append(_file(FCOS_ARCHIVE, agent_archive.read_bytes(), 0o644, compress=True))
    return {
        "ignition": {"version": SPEC},
        # core: Fedora CoreOS's admin user (passwordless sudo); sshd refuses root there.
        "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": [ssh_public_key.strip()]}]},
        # The harness reads the kernel's lines on the serial console; Ignition reboots
        # once to add the argument only if the image lacks it.
        "kernelArguments": {"shouldExist": ["console=ttyS0,115200n8"]},
        "storage": {"files": files},
        "systemd": {"units": system_units},
    }


def render(variant: units.Variant, image: Image) -> dict:
    """The config for VARIANT, with the SSH key and the agent archive of the lab IMAGE."""
    return config(variant, (image.path / "id_ed25519.pub").read_text(), agent_archive(image))


def write(variant: units.Variant, image: Image, out: Path) -> Path:
    out.write_text(json.dumps(render(variant, image), indent=1) + "\n")
    return out


def _guest_text(path: str) -> str:
    text = (GUEST / path.lstrip("/")).read_text()
    # The Debian image keeps the archive under /usr, which is read-only on CoreOS.
    return text.replace(DEBIAN_ARCHIVE, FCOS_ARCHIVE)


def _unit(name: str, text: str) -> dict:
    unit = {"name": name, "contents": text}
    if units.wanted_by(text):
        unit["enabled"] = True
    return unit


def _file(path: str, data: bytes, mode: int, compress: bool = False, overwrite: bool = False) -> dict:
    if compress:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    contents = {"source": "data:;base64," + base64.b64encode(data).decode()}
    if compress:
        contents["compression"] = "gzip"
    entry = {"path": path, "mode": mode, "contents": contents}
    if overwrite:
        entry["overwrite"] = True
    return entry


def agent_archive(image: Image) -> Path:
    """The fake agent's docker-save archive, copied out of IMAGE's root filesystem once
    (debugfs reads ext4 without mounting it)."""
    out = cache_dir() / "ignition" / f"{image.key}-ecs-agent.tar"
    if out.exists():
        return out
    if not shutil.which("debugfs"):
        raise UserError("debugfs is not installed", "apt-get install e2fsprogs")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    done = subprocess.run(["debugfs", "-R", f"dump {DEBIAN_ARCHIVE} {partial}", str(image.root)],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not partial.exists() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        raise UserError(f"could not read {DEBIAN_ARCHIVE} from {image.root}: {done.stderr.strip().splitlines()[-1:]}",
                        "rebuild the image (unitchaos image build --rebuild)")
    partial.rename(out)
    return out


def validate(path: Path) -> None:
    """Runs ignition-validate on PATH: a config Ignition would reject fails here."""
    if not shutil.which("ignition-validate"):
        raise UserError("ignition-validate is not installed", "apt-get install ignition")
    done = subprocess.run(["ignition-validate", str(path)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise UserError(f"ignition-validate rejects {path}: {(done.stderr or done.stdout).strip()}",
                        "correct the unit or guest file it names")
