"""The pytest plugin: a `lab` fixture that hands out booted instances and tears them all
down after the test, whatever happens; each test's report names the guest kernel and
systemd it ran on.

`--release R` (repeatable; or UNITCHAOS_RELEASE=R[,R...]) picks the guest release; with
more than one, every test that uses `lab` runs once per release (test ids gain `[R]`).

`--chain-file FILE` (or UNITCHAOS_CHAIN_FILE, else ./unitchaos.toml, else the incident's
chains/ecs-docker.toml) picks the chain lab.acquire() boots; a test module can pin its
own with @pytest.mark.lab(chain_file=...).

`--kernel FILE.deb` (or UNITCHAOS_KERNEL) boots that linux-image package on every
release's userspace instead of the release's kernel (see images/user_kernel.py).

Under CI=true a missing QEMU fails the test: a skipped VM experiment must never pass
for a green run. With --keep-on-failure a failed test's instances stay up (as
`unitchaos up` leaves one) and the failure says how to reach them.
"""
import os
import re
import shutil
from pathlib import Path

import pytest

from . import units
from .runs import interactive
from .lab.backends import FCOS_IMAGE_ENV
from .errors import ArchiveBroken, UserError
from .images import user_kernel
from .images.image import RELEASES
from .lab.lab import Lab


# Set by the nightly Fedora CoreOS jobs, which download an image: there a missing image
# is a failure. Elsewhere no image can be had, and the FCOS experiments are skipped,
# saying why (a skip is never counted as a pass).
REQUIRE_FCOS_ENV = "UNITCHAOS_REQUIRE_FCOS"
TOOLS = {
    "qemu": [("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils")],
    "vagrant": [("vagrant", "vagrant vagrant-libvirt"), ("virsh", "libvirt-clients"),
                ("libvirtd", "libvirt-daemon-system"), ("virtlogd", "libvirt-daemon-system"),
                ("qemu-img", "qemu-utils")],
}


DEFAULT_RELEASE = "bookworm"
# What every_release means without --release: the releases CI runs the incident suite on.
# sid (kernel 7.2.13, systemd 262.1) joined on 2026-12-01 after its yank and unplug passed
# here (an uninstallable sid archive is a skip saying so, see _archive_broken).
# trixie-backports (kernel 7.3.4, the 7.x kernel on a stable base) joined on 2026-12-01
# once its guest had one TCG vCPU and a paced deep check (machines/tcg.py) and its incident
# suite passed here (18:16-18:36 UTC, host load 1.1-2.8, 8 passed in 20 min, three of them making
# its warm snapshots).
EVERY_RELEASE = ("bookworm", "trixie", "bookworm-backports", "sid", "trixie-backports")


def pytest_addoption(parser):
    parser.addoption("--shard", default=None, metavar="K/N",
                     help="run only the K-th of N equal shares of the collected tests (CI matrices)")
    parser.addoption("--keep-on-failure", action="store_true",
                     help="leave a failed experiment's VM running for a look (unitchaos status/shell/down)")
    parser.getgroup("unitchaos").addoption(
        "--release", action="append", default=None, metavar="RELEASE",
        help=f"guest release the lab fixture boots, repeatable ({', '.join(RELEASES)}; "
             f"default $UNITCHAOS_RELEASE, else {DEFAULT_RELEASE}, and {', '.join(EVERY_RELEASE)} for tests marked every_release)")
    parser.getgroup("unitchaos").addoption(
        "--chain-file", default=None, metavar="FILE",
        help="the chain file lab.acquire() boots (default $UNITCHAOS_CHAIN_FILE, else ./unitchaos.toml, "
             "else the incident's chains/ecs-docker.toml)")
    parser.getgroup("unitchaos").addoption(
        "--kernel", default=None, metavar="FILE.deb",
        help="a linux-image package the lab fixture boots instead of the release's kernel (default $UNITCHAOS_KERNEL)")


def pytest_configure(config):
    config.addinivalue_line("markers", "vm: boots a QEMU guest (slow)")
    config.addinivalue_line("markers", "lab(backend='qemu', guest='debian'): how the lab fixture runs its guests")
    config.addinivalue_line("markers", "every_release: run on every guest release unless --release says which")
    config.addinivalue_line("markers", "releases(*names): run on these releases (those of them --release names, if given)")
    config.unitchaos_releases = _chosen_releases(config)
    config.unitchaos_kernel = _chosen_kernel(config)


def _chosen_kernel(config) -> user_kernel.UserKernel | None:
    """The kernel package asked for (--kernel, else UNITCHAOS_KERNEL), checked once, or None."""
    given = config.getoption("kernel") or os.environ.get("UNITCHAOS_KERNEL")
    try:
        return user_kernel.inspect(given) if given else None
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None


def _chosen_releases(config) -> list[str] | None:
    """The releases asked for (--release, else UNITCHAOS_RELEASE), or None."""
    chosen = config.getoption("release") or \
        [name.strip() for name in os.environ.get("UNITCHAOS_RELEASE", "").split(",") if name.strip()]
    unknown = [name for name in chosen if name not in RELEASES]
    if unknown:
        raise pytest.UsageError(f"unknown release {', '.join(unknown)} (fix: use one of {', '.join(RELEASES)})")
    return list(dict.fromkeys(chosen)) or None


def pytest_generate_tests(metafunc):
    if "unitchaos_release" not in metafunc.fixturenames:
        return
    every = metafunc.definition.get_closest_marker("every_release") is not None
    only = metafunc.definition.get_closest_marker("releases")
    releases = metafunc.config.unitchaos_releases or (list(EVERY_RELEASE) if every else [DEFAULT_RELEASE])
    if only:
        # A test about what only some kernels do: those of its releases that were asked for.
        releases = [r for r in only.args if r in releases] if metafunc.config.unitchaos_releases else list(only.args)
    # One release and no marker: the test id stays as it was.
    if len(releases) > 1 or every or only:
        metafunc.parametrize("unitchaos_release", releases, ids=releases)


@pytest.fixture
def unitchaos_release(request):
    """The guest release the lab boots (when not parametrized by release)."""
    return (request.config.unitchaos_releases or [DEFAULT_RELEASE])[0]


def pytest_collection_modifyitems(config, items):
    shard = config.getoption("--shard")
    if not shard:
        return
    try:
        k, n = (int(part) for part in shard.split("/"))
        assert 1 <= k <= n
    except (ValueError, AssertionError):
        raise pytest.UsageError(f"--shard {shard!r} is not K/N with 1 <= K <= N (e.g. --shard 2/4)") from None
    # Round-robin over the collection order: neighbouring (similar) tests go to different shards.
    keep = [item for index, item in enumerate(items) if index % n == k - 1]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


def _unavailable(message: str, ci_must_run: bool) -> None:
    if ci_must_run:
        pytest.fail(f"CI must run the VM experiments, but {message}", pytrace=False)
    pytest.skip(message)


def _require(backend: str, guest: str) -> None:
    ci = os.environ.get("CI", "").lower() == "true"
    missing = [(tool, package) for tool, package in TOOLS[backend] if not shutil.which(tool)]
    if missing:
        _unavailable(f"{', '.join(tool for tool, _ in missing)} not installed "
                     f"(apt-get install {' '.join(sorted({p for _, p in missing}))})", ci)
    if guest == "fcos":
        image = os.environ.get(FCOS_IMAGE_ENV)
        if not image or not Path(image).is_file():
            _unavailable(f"no Fedora CoreOS image: set {FCOS_IMAGE_ENV} to a qemu qcow2 (coreos-installer "
                         "download -s stable -p qemu -f qcow2.xz --decompress); none can be downloaded here",
                         os.environ.get(REQUIRE_FCOS_ENV) == "1")


@pytest.fixture
def lab(request, unitchaos_release):
    """Hands out instances of the chain file's chain (lab.acquire(), or with overrides
    chain=..., fs=...) and tears them all down after the test. A failed test keeps each instance's artifacts (console, journal, dmesg, QMP
    events, unit files) and names the directory in the report. A test marked
    @pytest.mark.lab(backend="vagrant") or @pytest.mark.lab(guest="fcos") gets its guests
    from Vagrant or Fedora CoreOS (cold boots)."""
    marker = request.node.get_closest_marker("lab")
    options = {"backend": "qemu", "guest": "debian", **(marker.kwargs if marker else {})}
    chain_file = options.pop("chain_file", None) or request.config.getoption("chain_file")
    _require(options["backend"], options["guest"])
    keep_up = request.config.getoption("keep_on_failure")
    try:
        chain = _chain(request.config, chain_file)
        lab = _TestLab(release=unitchaos_release, outlive_owner=keep_up, chain=chain,
                       kernel=request.config.unitchaos_kernel, **options)
    except ArchiveBroken as exc:
        _archive_broken(exc)
    except UserError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield lab
    except UserError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if lab.instances:
            request.node.user_properties.append(("release", unitchaos_release))
        for instance in lab.instances:
            for key, value in instance.guest_versions.items():
                request.node.user_properties.append((key, value))
        report = getattr(request.node, "unitchaos_call_report", None)
        failed = bool(report and report.failed)
        if failed and keep_up:
            _keep_up(request, lab)
        lab.test_over = True
        for instance in list(lab.instances):
            if path := lab.release(instance, keep=failed):
                request.node.user_properties.append(("artifacts", str(path)))


class _TestLab(Lab):
    """A test's lab: an instance released as the lab decides (keep=None, as experiments.run
    releases its own) stays until the test is over, when the fixture, which knows whether
    the test failed, releases it and keeps its evidence if it did."""
    test_over = False

    def release(self, instance, keep=None, running=False):
        if keep is None and not running and not self.test_over:
            return None
        return super().release(instance, keep, running)


def _chain(config, chain_file):
    """The chain file, loaded and checked once a session (systemd-analyze, apt-cache)."""
    loaded = config.__dict__.setdefault("unitchaos_chains", {})
    if chain_file not in loaded:
        loaded[chain_file] = units.load_chain(chain_file)
    return loaded[chain_file]


def _archive_broken(exc: ArchiveBroken):
    """sid half way through a transition: neither a pass nor the project's failure. The
    skip's reason (shown by -rA, and in junit.xml) says it in apt's words, with the date."""
    pytest.skip(f"NOT RUN, archive uninstallable: {exc.problem}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except ArchiveBroken as exc:
        # Raised where the test first asks for an instance (the image is built then).
        _archive_broken(exc)


def _keep_up(request, lab: Lab) -> None:
    """Hands the failed test's running instances over to the interactive lab, each under
    a name made from the test's, and says how to reach them."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")[:56] or "failed"
    for index, instance in enumerate(list(lab.instances)):
        if not instance.machine.running:
            continue
        name = base if index == 0 else f"{base}-{index}"
        if (interactive.state_dir() / f"{name}.json").exists():
            name = f"{name}-{os.getpid()}"
        artifacts = lab.release(instance, keep=True, running=True)
        state = interactive.hand_over(instance, name, artifacts)
        request.node.user_properties.append(("kept_up", name))
        request.node.user_properties.append(("artifacts", str(artifacts)))
        request.node.unitchaos_kept_up = [*getattr(request.node, "unitchaos_kept_up", []),
                                         interactive.how_to_reach(state)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.unitchaos_call_report = report
    if report.when == "teardown":
        lines = [f"{key}: {value}" for key, value in item.user_properties
                 if key in ("release", "kernel", "systemd", "artifacts")]
        lines += getattr(item, "unitchaos_kept_up", [])
        if lines:
            # "teardown" in the name: pytest shows such sections with the failure.
            report.sections.append(("unitchaos guest (teardown)", "\n".join(lines)))
    return report


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: as many workers as the host has cores for their guests and free memory
    holds (capacity.max_parallel_tests)."""
    from .capacity import max_parallel_tests
    return max_parallel_tests()
