"""A chain's unit files (the incident's by default), rendered for one variant and packed
for the guest.

Unit files may hold placeholders ({{fs}}, {{mkfs}}, {{dependency}}, {{device}},
{{device_unit}}, {{mount_point}}, {{mount_unit}}, {{mount_options}}) that the variant
fills in; a user's own units directory may use them or not. The result is a tar that the guest's generator unpacks at boot (see
vm/guest/usr/lib/systemd/system-generators/unitchaos-units).
"""
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

from . import chainfile
from .errors import UserError
from .machines import tcg
from .paths import UNITS_DIR, VM_DIR

CHAINS = {"requires": "Requires", "bindsto": "BindsTo"}
FILESYSTEMS = {"xfs": "/usr/sbin/mkfs.xfs -f", "ext4": "/usr/sbin/mkfs.ext4 -F -q"}
# Without -f/-F, mkfs refuses a device that already holds a filesystem.
UNFORCED_MKFS = {"xfs": "/usr/sbin/mkfs.xfs", "ext4": "/usr/sbin/mkfs.ext4 -q"}
DOCKER_NEEDS_MOUNT = "docker.service.d/10-volume.conf"
DEVICE = "/dev/vdb"
# The guest's own services learn the chain from these drop-ins (see vm/guest): which
# unit says boot is over, where the volume is, which deep probes apply.
HEALTH_DROPIN = "unitchaos-health.service.d/50-chain.conf"
# What the machine the guest runs on needs of the deep check (its pacing on one TCG vCPU,
# see machines/tcg.py): not part of the chain, so a drop-in of its own.
MACHINE_HEALTH_DROPIN = "unitchaos-health.service.d/60-machine.conf"
# The same machine's container budget for the agent's Docker calls: "can start containers"
# has one budget (lab/container_start.py). The agent runs in a container that gets its
# environment from this file only (ecs-agent.service: --env-file), so the drop-in writes it
# there before the agent starts; the image's own file is left as it is everywhere else.
MACHINE_AGENT_DROPIN = "ecs-agent.service.d/60-machine.conf"
AGENT_ENV_FILE = "/etc/ecs/ecs.config"
READY_DROPIN = "unitchaos-ready.service.d/50-chain.conf"
GENERATED = (HEALTH_DROPIN, READY_DROPIN)
# Unit files and drop-ins that make systemd stop the chain when the volume's filesystem
# shuts down (vm/remedies/NAME/), laid over the chain's units.
REMEDIES_DIR = VM_DIR / "remedies"


# What a remedy needs of the image (package, lowest major version): without it the agent
# BindsTo= a unit that does not exist and never starts, so it is refused before any boot.
REMEDY_NEEDS = {"healer-bindsto": ("xfsprogs", 7)}


def remedies() -> list[str]:
    return sorted(p.name for p in REMEDIES_DIR.iterdir() if p.is_dir())


def check_remedy_fits(remedy: str | None, release: str, package_versions: dict) -> None:
    """UserError if REMEDY cannot work on RELEASE's image (its manifest's package versions)."""
    if remedy not in REMEDY_NEEDS:
        return
    package, major = REMEDY_NEEDS[remedy]
    have = package_versions.get(package)
    if have is None or int(re.match(r"(?:\d+:)?(\d+)", have).group(1)) < major:
        raise UserError(f"remedy {remedy} cannot apply on {release}: it needs {package} {major} or later, "
                        f"the image has {package} {have or 'of unknown version'}",
                        f"pick a release with {package} {major} (sid), or another remedy")


@cache
def incident() -> chainfile.Chain:
    """The incident's chain (chains/ecs-docker.toml), the default."""
    return chainfile.parse_file(chainfile.DEFAULT, check_packages=False)


CHAIN = list(incident().units)
# What systemd says of a healthy incident chain (Instance.unit_states() of a guest that is up).
ALL_ACTIVE = {unit: "active" for unit in CHAIN}
# Complaints from systemd-analyze that are about the host, not the unit files.
HOST_ONLY = re.compile(r"is not executable: No such file or directory|Failed to .*unit file.*not found|"
                       r"Unit .* not found")


@dataclass(frozen=True)
class Variant:
    chain: str = "bindsto"
    fs: str = "xfs"
    units_dir: Path | None = None  # None: the chain file's
    mkfs: str | None = None  # overrides the filesystem's mkfs command (a fault may need that)
    # The mkfs-refuses experiments: the volume already holds a filesystem and the format
    # unit neither wipes it nor forces mkfs; and, optionally, Docker does not require the mount.
    old_fs: bool = False
    docker_requires_mount: bool = True
    spec: chainfile.Chain = field(default_factory=incident)
    remedy: str | None = None

    def __post_init__(self):
        if self.units_dir is None:
            object.__setattr__(self, "units_dir", self.spec.units_dir)
        if self.remedy is not None and self.remedy not in remedies():
            raise UserError(f"unknown remedy {self.remedy!r}", f"use one of: {', '.join(remedies())}")
        if self.chain not in CHAINS:
            raise UserError(f"unknown chain {self.chain!r}", f"use one of: {', '.join(CHAINS)}")
        if self.fs not in FILESYSTEMS:
            raise UserError(f"unknown filesystem {self.fs!r}", f"use one of: {', '.join(FILESYSTEMS)}")

    def with_(self, **changes) -> "Variant":
        return replace(self, **changes)

    @property
    def values(self) -> dict[str, str]:
        mkfs = self.mkfs or " ".join(filter(None, [(UNFORCED_MKFS if self.old_fs else FILESYSTEMS)[self.fs],
                                                   self.spec.mkfs_options]))
        return {"fs": self.fs, "mkfs": mkfs,
                "dependency": CHAINS[self.chain], "device": DEVICE,
                "device_unit": "dev-" + DEVICE.removeprefix("/dev/") + ".device",
                "mount_point": self.spec.mount_point, "mount_unit": self.spec.mount_unit,
                "mount_options": self.spec.mount_options}

    @property
    def deep_probes(self) -> list[str]:
        """The deep check's probes for this chain: Docker and the agent only where it has them."""
        return ["volume", "io", "space", "kernel"] + ["docker"] * self.spec.has_docker + ["agent"] * self.spec.has_agent


def render(variant: Variant, health_env: dict[str, str] | None = None) -> dict[str, str]:
    """Relative path -> text of every unit file and drop-in, placeholders filled."""
    units_dir = Path(variant.units_dir)
    if not units_dir.is_dir():
        raise UserError(f"units directory {units_dir} does not exist", "pass --units a directory of unit files")
    # A unit of the chain is a file here, or a package's unit this directory has a drop-in for.
    missing = [name for name in variant.spec.units
               if not (units_dir / name).is_file() and not (units_dir / f"{name}.d").is_dir()]
    if missing:
        raise UserError(f"{units_dir} lacks {', '.join(missing)} (in units.chain of {variant.spec.source.name})",
                        f"add the unit file, or a {missing[0]}.d/ drop-in if a package installs it "
                        f"(see {UNITS_DIR} for the incident's chain)")
    rendered = {}
    sources = [(units_dir, path) for path in sorted(units_dir.rglob("*")) if path.is_file()]
    if variant.remedy:
        top = REMEDIES_DIR / variant.remedy
        sources += [(top, path) for path in sorted(top.rglob("*")) if path.is_file() and path.suffix != ".md"]
    for top, path in sources:
        rel = path.relative_to(top)
        if any(part.startswith(".") for part in rel.parts):
            continue  # Editor swap files, a .git directory: not units.
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise UserError(f"{path} is not a text file", "keep only unit files and drop-ins in the units directory") from None
        for key, value in variant.values.items():
            text = text.replace("{{" + key + "}}", value)
        leftover = re.search(r"\{\{(\w+)\}\}", text)
        if leftover:
            raise UserError(f"{path}: unknown placeholder {leftover.group(0)}",
                            f"use one of: {', '.join('{{' + k + '}}' for k in variant.values)}")
        if variant.old_fs:
            # A format unit that wipes first would never meet the old filesystem.
            text = re.sub(r"(?m)^ExecStart(Pre)?=.*wipefs.*\n", "", text)
        rendered[str(rel)] = text
    if not variant.docker_requires_mount:
        rendered.pop(DOCKER_NEEDS_MOUNT, None)
    rendered[HEALTH_DROPIN] = ("[Service]\n"
                               f"Environment=UNITCHAOS_HEALTH_MOUNT_POINT={variant.spec.mount_point}\n"
                               f"Environment=UNITCHAOS_HEALTH_DEVICE={DEVICE}\n"
                               f"Environment=UNITCHAOS_HEALTH_FSTYPE={variant.fs}\n"
                               f"Environment=UNITCHAOS_HEALTH_PROBES={','.join(variant.deep_probes)}\n")
    if health_env:
        rendered[MACHINE_HEALTH_DROPIN] = "[Service]\n" + "".join(
            f"Environment={name}={value}\n" for name, value in sorted(health_env.items()))
    if health_env and tcg.CONTAINER_BUDGET_ENV in health_env and variant.spec.has_agent:
        setting = f"UNITCHAOS_DOCKER_TIMEOUT={int(tcg.container_budget(health_env))}"
        rendered[MACHINE_AGENT_DROPIN] = (
            "[Service]\n"
            f"ExecStartPre=/bin/sh -c 'sed -i /^UNITCHAOS_DOCKER_TIMEOUT=/d {AGENT_ENV_FILE} "
            f"&& echo {setting} >> {AGENT_ENV_FILE}'\n")
    if not variant.spec.has_agent:
        # Without the agent, boot is over when the chain's last unit has started (or failed).
        rendered[READY_DROPIN] = f"[Service]\nEnvironment=UNITCHAOS_READY_UNIT={variant.spec.units[-1]}\n"
    return rendered


def verify(rendered: dict[str, str]) -> None:
    """Rejects unit files that systemd itself would complain about (unknown keys, bad values)."""
    if not shutil.which("systemd-analyze"):
        return  # Checked again by systemd in the guest; the host may lack systemd.
    with tempfile.TemporaryDirectory(prefix="unitchaos-units.") as tmp:
        for rel, text in rendered.items():
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / rel).write_text(text)
        # A drop-in for a unit only the guest has (docker.service.d/): verify it on a stub.
        for dropin_dir in Path(tmp).glob("*.d"):
            unit = Path(tmp) / dropin_dir.name.removesuffix(".d")
            if not unit.exists():
                unit.write_text("[Service]\nExecStart=/bin/true\n")
        top_level = sorted(str(p) for p in Path(tmp).iterdir() if p.is_file())
        env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp}:"}
        done = subprocess.run(["systemd-analyze", "verify", "--man=no", "--generators=no", *top_level],
                              capture_output=True, text=True, timeout=60, env=env)
    problems = [line.replace(tmp + "/", "") for line in (done.stderr + done.stdout).splitlines()
                if line.strip() and not HOST_ONLY.search(line)]
    if problems:
        raise UserError(f"systemd-analyze rejects the unit files: {problems[0]}",
                        "correct the unit file (see systemd.unit(5))")


def check(variant: Variant, health_env: dict[str, str] | None = None) -> dict[str, str]:
    """Renders and verifies VARIANT's units: bad unit files fail before any VM starts."""
    rendered = render(variant, health_env)
    verify(rendered)
    return rendered


def load_chain(explicit: str | Path | None = None, check_packages: bool = True) -> chainfile.Chain:
    """The chain file (see chainfile.find), parsed, with its unit files rendered and checked
    by systemd-analyze: everything wrong with it is found before any VM starts."""
    chain = chainfile.load(explicit, check_packages=check_packages)
    check(Variant(chain=chain.dependency, fs=chain.fs, spec=chain))
    return chain


def wanted_by(text: str) -> list[str]:
    targets = []
    for match in re.finditer(r"^\s*(?:WantedBy|RequiredBy)\s*=\s*(.+)$", text, re.MULTILINE):
        targets += match.group(1).split()
    return targets


def pack(variant: Variant, out: Path, health_env: dict[str, str] | None = None,
         extra: dict[str, str] | None = None) -> dict[str, str]:
    """Writes the tar the guest unpacks at boot; returns the rendered files. HEALTH_ENV: the
    deep check's environment the machine needs (machines/tcg.py's deep_check_env). EXTRA:
    more drop-ins (relative path -> text), verified with the rest (bench --survey's options)."""
    rendered = {**render(variant, health_env), **(extra or {})}
    verify(rendered)
    with tarfile.open(out, "w") as tar:
        for rel, text in rendered.items():
            _add(tar, rel, text.encode())
            # A generator's output is not "enabled" by [Install]: link the .wants ourselves.
            if "/" not in rel:
                for target in wanted_by(text):
                    link = tarfile.TarInfo(f"{target}.wants/{rel}")
                    link.type = tarfile.SYMTYPE
                    link.linkname = f"../{rel}"
                    tar.addfile(link)
    return rendered


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
