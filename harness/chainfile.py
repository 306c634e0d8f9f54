"""A chain file: the user's own unit chain on a volume, its load balancer's checks and the
workload that says whether the service still does its job (TOML, read with tomllib).

    unitchaos.toml in the current directory, or --chain-file FILE; default
    chains/ecs-docker.toml, the incident's chain.

Everything is checked here, before any VM starts: unknown keys, wrong types, a mount
point with no .mount unit, a must_stop unit not in the chain, ports outside 1-65535,
Debian packages apt does not know. Unit files are checked by systemd-analyze when the
chain is rendered (units.check). Each problem is one UserError naming the key and the fix.
"""
import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .paths import REPO

CHAINS_DIR = REPO / "chains"
DEFAULT = CHAINS_DIR / "ecs-docker.toml"
LOCAL_NAME = "unitchaos.toml"
ENV = "UNITCHAOS_CHAIN_FILE"
DEPENDENCIES = ("requires", "bindsto")
FILESYSTEMS = ("xfs", "ext4")
CHECK_TYPES = ("http", "tcp", "command")
# Units the image has and the units directory need not: the deep check's Docker and agent
# probes run only where the chain has these.
DOCKER_UNIT, AGENT_UNIT = "docker.service", "ecs-agent.service"


@dataclass(frozen=True)
class Check:
    """One health check a load balancer runs: http (port, path, status), tcp (port) or
    command (run in the guest, exit 0 = healthy)."""
    name: str
    type: str
    port: int | None = None
    path: str = "/"
    status: int = 200
    command: str = ""

    @property
    def describe(self) -> str:
        return {"http": f"HTTP :{self.port}{self.path} = {self.status}", "tcp": f"TCP :{self.port}",
                "command": f"`{self.command}`"}[self.type]


@dataclass(frozen=True)
class Chain:
    name: str
    source: Path
    # [volume]
    mount_point: str
    fs: str
    mkfs_options: str
    mount_options: str
    size: str
    # [units]
    units_dir: Path
    units: tuple[str, ...]
    must_stop: tuple[str, ...]
    dependency: str
    # [guest]
    packages: tuple[str, ...]
    files: tuple[tuple[Path, str], ...]  # (file on the host, path in the guest)
    # [workload]
    workload: str
    workload_expect: str
    workload_timeout: float
    # [[checks]]
    checks: tuple[Check, ...]

    @property
    def mount_unit(self) -> str:
        return escape_path(self.mount_point) + ".mount"

    @property
    def has_docker(self) -> bool:
        return DOCKER_UNIT in self.units

    @property
    def has_agent(self) -> bool:
        return AGENT_UNIT in self.units

    @property
    def is_incident(self) -> bool:
        return self.name == "ecs-docker"

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(sorted({c.port for c in self.checks if c.port is not None}))

    def guest_view(self) -> dict:
        """What of the chain the guest sees beyond the unit files (part of a snapshot's key)."""
        return {"mount_point": self.mount_point, "mount_options": self.mount_options, "size": self.size,
                "units": list(self.units), "packages": list(self.packages),
                "files": [(str(dest), Path(src).read_bytes().hex()) for src, dest in self.files]}


def escape_path(path: str) -> str:
    """systemd-escape --path: /var/lib/redis -> var-lib-redis."""
    trimmed = path.strip("/")
    if not trimmed:
        return "-"
    out = []
    for i, char in enumerate(trimmed):
        if char == "/":
            out.append("-")
        elif char.isalnum() and char.isascii() or char in ":_" or (char == "." and i > 0):
            out.append(char)
        else:
            out.append("".join(f"\\x{b:02x}" for b in char.encode()))
    return "".join(out)


# key -> (type, required, default); a nested table is a dict of the same.
_SCHEMA = {
    "name": (str, False, None),
    "volume": {
        "mount_point": (str, True, None), "fs": (str, False, "xfs"), "mkfs_options": (str, False, ""),
        "mount_options": (str, False, "defaults"), "size": (str, False, "1G"),
    },
    "units": {
        "directory": (str, True, None), "chain": (list, True, None), "must_stop": (list, False, []),
        "dependency": (str, False, "bindsto"),
    },
    "guest": {"packages": (list, False, []), "files": (list, False, [])},
    "workload": {"command": (str, True, None), "expect": (str, False, ""), "timeout": ((int, float), False, 30)},
    "checks": (list, True, None),
}
_CHECK_KEYS = {"name": str, "type": str, "port": int, "path": str, "status": int, "command": str}
_FILE_KEYS = {"source": str, "destination": str}
_TYPE_WORDS = {str: "a string", list: "a list", int: "a whole number", (int, float): "a number", dict: "a table"}


def find(explicit: str | Path | None = None) -> Path:
    """The chain file to use: EXPLICIT, else $UNITCHAOS_CHAIN_FILE, else ./unitchaos.toml,
    else the incident's chain."""
    for candidate in (explicit, os.environ.get(ENV) or None):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise UserError(f"chain file {path} does not exist",
                                f"pass --chain-file an existing TOML file (e.g. {DEFAULT.relative_to(REPO)})")
            return path
    local = Path.cwd() / LOCAL_NAME
    return local if local.is_file() else DEFAULT


def load(explicit: str | Path | None = None, check_packages: bool = True) -> Chain:
    """The chain file found by find(EXPLICIT), parsed and checked."""
    return parse_file(find(explicit), check_packages=check_packages)


def parse_file(path: Path, check_packages: bool = True) -> Chain:
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}", "fix the syntax (see https://toml.io)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read chain file {path}: {exc}", "pass --chain-file a readable TOML file") from None
    return parse(data, Path(path), check_packages=check_packages)


def parse(data: dict, source: Path, check_packages: bool = True) -> Chain:
    where = source.name
    values = _typed(data, _SCHEMA, where, "")
    base = source.resolve().parent
    volume, unit_table, guest, workload = values["volume"], values["units"], values["guest"], values["workload"]

    mount_point = volume["mount_point"]
    if not mount_point.startswith("/") or mount_point == "/":
        raise UserError(f"{where}: volume.mount_point {mount_point!r} is not an absolute path below /",
                        'write it like mount_point = "/var/lib/redis"')
    if volume["fs"] not in FILESYSTEMS:
        raise UserError(f"{where}: volume.fs {volume['fs']!r} is not supported", f"use one of: {', '.join(FILESYSTEMS)}")
    if not re.fullmatch(r"\d+[MG]", volume["size"]):
        raise UserError(f"{where}: volume.size {volume['size']!r} is not a size", 'write it like size = "1G" or "512M"')
    if unit_table["dependency"] not in DEPENDENCIES:
        raise UserError(f"{where}: units.dependency {unit_table['dependency']!r} is unknown",
                        f"use one of: {', '.join(DEPENDENCIES)}")

    units_dir = (base / unit_table["directory"]).resolve()
    if not units_dir.is_dir():
        raise UserError(f"{where}: units.directory {unit_table['directory']!r} is not a directory ({units_dir})",
                        "point it at the directory of your unit files, relative to the chain file")
    chain_units = tuple(_strings(unit_table["chain"], where, "units.chain"))
    if not chain_units:
        raise UserError(f"{where}: units.chain is empty", "list the chain's units in start order")
    must_stop = tuple(_strings(unit_table["must_stop"], where, "units.must_stop"))
    for unit in must_stop:
        if unit not in chain_units:
            raise UserError(f"{where}: units.must_stop names {unit}, which is not in units.chain",
                            f"add it to units.chain or use one of: {', '.join(chain_units)}")
    mount_unit = escape_path(mount_point) + ".mount"
    if not (units_dir / mount_unit).is_file():
        raise UserError(f"{where}: volume.mount_point {mount_point} has no {mount_unit} in {units_dir}",
                        f"add {mount_unit} (Where={mount_point}) to the units directory")
    if mount_unit not in chain_units:
        raise UserError(f"{where}: units.chain lacks {mount_unit}, the mount of volume.mount_point",
                        f"add {mount_unit} to units.chain")

    packages = tuple(_strings(guest["packages"], where, "guest.packages"))
    for package in packages:
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", package):
            raise UserError(f"{where}: guest.packages: {package!r} is not a Debian package name",
                            "use the name apt-get install takes, e.g. redis-server")
    if check_packages:
        check_debian_packages(packages, where)
    files = []
    for i, entry in enumerate(guest["files"]):
        if not isinstance(entry, dict):
            raise UserError(f"{where}: guest.files[{i}] is not a table",
                            'write it like {source = "redis.conf", destination = "/etc/redis/redis.conf"}')
        entry = _typed(entry, {k: (t, True, None) for k, t in _FILE_KEYS.items()}, where, f"guest.files[{i}].")
        src = (base / entry["source"]).resolve()
        if not src.is_file():
            raise UserError(f"{where}: guest.files[{i}].source {entry['source']!r} does not exist ({src})",
                            "give a file relative to the chain file")
        if not entry["destination"].startswith("/"):
            raise UserError(f"{where}: guest.files[{i}].destination {entry['destination']!r} is not absolute",
                            "give the path the file gets in the guest, e.g. /etc/redis/redis.conf")
        files.append((src, entry["destination"]))

    checks = [_check(entry, i, where) for i, entry in enumerate(values["checks"])]
    if not checks:
        raise UserError(f"{where}: no [[checks]]", "declare at least the check your load balancer runs")
    names = [c.name for c in checks]
    for name in names:
        if names.count(name) > 1 or name == "deep":
            raise UserError(f"{where}: two checks are named {name!r}" if name != "deep"
                            else f"{where}: a check may not be named 'deep' (the lab's own comparison check)",
                            "give each [[checks]] a distinct name")

    if workload["expect"]:
        try:
            re.compile(workload["expect"])
        except re.error as exc:
            raise UserError(f"{where}: workload.expect is not a regular expression: {exc}", "fix or drop it") from None
    if workload["timeout"] <= 0:
        raise UserError(f"{where}: workload.timeout must be positive", "give seconds, e.g. timeout = 30")
    return Chain(
        name=values["name"] or source.stem, source=source.resolve(),
        mount_point=mount_point.rstrip("/"), fs=volume["fs"], mkfs_options=volume["mkfs_options"],
        mount_options=volume["mount_options"], size=volume["size"],
        units_dir=units_dir, units=chain_units, must_stop=must_stop, dependency=unit_table["dependency"],
        packages=packages, files=tuple(files),
        workload=workload["command"], workload_expect=workload["expect"], workload_timeout=float(workload["timeout"]),
        checks=tuple(checks))


def _typed(data: dict, schema: dict, where: str, prefix: str) -> dict:
    """DATA's values by SCHEMA: unknown keys, missing keys and wrong types are errors."""
    for key in data:
        if key not in schema:
            raise UserError(f"{where}: unknown key {prefix}{key}",
                            f"remove it or use one of: {', '.join(prefix + k for k in schema)}")
    out = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            table = data.get(key, {})
            if not isinstance(table, dict):
                raise UserError(f"{where}: {prefix}{key} must be a table", f"write it as [{prefix}{key}]")
            if key not in data and any(required for _, required, _ in spec.values()):
                raise UserError(f"{where}: the [{prefix}{key}] table is missing",
                                f"add [{prefix}{key}] with {', '.join(k for k, v in spec.items() if v[1])}")
            out[key] = _typed(table, spec, where, f"{prefix}{key}.")
            continue
        kind, required, default = spec
        if key not in data:
            if required:
                raise UserError(f"{where}: {prefix}{key} is missing", f"add {prefix}{key} ({_TYPE_WORDS[kind]})")
            out[key] = default
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise UserError(f"{where}: {prefix}{key} must be {_TYPE_WORDS[kind]}, not {type(value).__name__} {value!r}",
                            f"write {prefix}{key} as {_TYPE_WORDS[kind]}")
        out[key] = value
    return out


def _strings(items: list, where: str, key: str) -> list[str]:
    for item in items:
        if not isinstance(item, str):
            raise UserError(f"{where}: {key} must be a list of strings, and holds {item!r}",
                            f'quote each entry, e.g. {key} = ["redis-server.service"]')
    return items


def _check(entry, i: int, where: str) -> Check:
    key = f"checks[{i}]"
    if not isinstance(entry, dict):
        raise UserError(f"{where}: {key} is not a table", "declare each check as [[checks]] with type = ...")
    values = _typed(entry, {k: (t, k == "type", None) for k, t in _CHECK_KEYS.items()}, where, f"{key}.")
    kind = values["type"]
    if kind not in CHECK_TYPES:
        raise UserError(f"{where}: {key}.type {kind!r} is unknown", f"use one of: {', '.join(CHECK_TYPES)}")
    if kind in ("http", "tcp"):
        port = values["port"]
        if port is None:
            raise UserError(f"{where}: {key} ({kind}) has no port", f"add port = 1..65535 to {key}")
        if not 1 <= port <= 65535:
            raise UserError(f"{where}: {key}.port {port} is outside 1-65535", "give the port the service listens on")
        if values["command"] is not None:
            raise UserError(f"{where}: {key} is {kind} and has a command", f"remove {key}.command or use type = \"command\"")
    else:
        if not values["command"]:
            raise UserError(f"{where}: {key} (command) has no command", f"add command = \"...\" to {key}")
        for other in ("port", "path", "status"):
            if values[other] is not None:
                raise UserError(f"{where}: {key} is a command check and has {other}", f"remove {key}.{other}")
    if kind != "http":
        for other in ("path", "status"):
            if values[other] is not None:
                raise UserError(f"{where}: {key} is {kind} and has {other}", f"remove {key}.{other} or use type = \"http\"")
    path = values["path"] or "/"
    if not path.startswith("/"):
        raise UserError(f"{where}: {key}.path {path!r} does not start with /", 'write it like path = "/health"')
    status = values["status"] or 200
    if not 100 <= status <= 599:
        raise UserError(f"{where}: {key}.status {status} is not an HTTP status", "give the status that counts as healthy, e.g. 200")
    default_name = {"http": f"http:{values['port']}{path}", "tcp": f"tcp:{values['port']}",
                    "command": f"command:{(values['command'] or '').split()[0] if values['command'] else ''}"}[kind]
    return Check(name=values["name"] or default_name, type=kind, port=values["port"], path=path, status=status,
                 command=values["command"] or "")


def check_debian_packages(packages: tuple[str, ...], where: str) -> None:
    """Every package must be one apt knows (the host's apt lists stand in for the mirror's);
    apt's own words otherwise."""
    if not packages:
        return
    # One package a call: apt-cache show names none of the unknown once any is found.
    for package in packages:
        try:
            done = subprocess.run(["apt-cache", "show", package], capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            return  # Not a Debian host: the image build names the package instead (mmdebstrap's error).
        if done.returncode == 0:
            continue
        said = [line.strip() for line in done.stderr.splitlines() if line.startswith(("N:", "E:"))]
        raise UserError(f"{where}: guest.packages: apt says about {package}: {'; '.join(said) or done.stderr.strip()}",
                        f"remove or correct {package} (apt-cache search NAME finds it; "
                        "run apt-get update if the host's lists are old)")
