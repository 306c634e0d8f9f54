"""The pytest plugin: a `lab` fixture that hands out booted instances and tears them all
down after the test, whatever happens; each test's report names the guest kernel and
systemd it ran on.

`--release R` (repeatable; or UNITCHAOS_RELEASE=R[,R...]) picks the guest release; with
more than one, every test that uses `lab` runs once per release (test ids gain `[R]`).

Under CI=true a missing QEMU fails the test: a skipped VM experiment must never pass
for a green run.
"""
import os
import shutil

import pytest

from .errors import UserError
from .image import RELEASES
from .lab import Lab


DEFAULT_RELEASE = "bookworm"
# What every_release means without --release. bookworm-backports is left out: its kernel
# (6.12.95+deb12) oopses while unpacking the initramfs under QEMU 7.2's TCG (also with
# -cpu qemu64 and selinux=0), so it never boots here; trixie's 6.12.117 does.
# `--release bookworm-backports` still runs it.
EVERY_RELEASE = ("bookworm", "trixie")


def pytest_addoption(parser):
    parser.getgroup("unitchaos").addoption(
        "--release", action="append", default=None, metavar="RELEASE",
        help=f"guest release the lab fixture boots, repeatable ({', '.join(RELEASES)}; "
             f"default $UNITCHAOS_RELEASE, else {DEFAULT_RELEASE}, and {', '.join(EVERY_RELEASE)} for tests marked every_release)")


def pytest_configure(config):
    config.addinivalue_line("markers", "vm: boots a QEMU guest (slow)")
    config.addinivalue_line("markers", "every_release: run on every guest release unless --release says which")
    config.unitchaos_releases = _chosen_releases(config)


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
    releases = metafunc.config.unitchaos_releases or (list(EVERY_RELEASE) if every else [DEFAULT_RELEASE])
    # One release and no marker: the test id stays as it was.
    if len(releases) > 1 or every:
        metafunc.parametrize("unitchaos_release", releases, ids=releases)


@pytest.fixture
def unitchaos_release(request):
    """The guest release the lab boots (when not parametrized by release)."""
    return (request.config.unitchaos_releases or [DEFAULT_RELEASE])[0]


def _require_qemu():
    missing = [tool for tool in ("qemu-system-x86_64", "qemu-img") if not shutil.which(tool)]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (apt-get install qemu-system-x86 qemu-utils)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the VM experiments, but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def lab(request, unitchaos_release):
    """Hands out instances (lab.instance(chain=..., fs=...)) and tears them all down after
    the test. A failed test keeps each instance's artifacts (console, journal, dmesg, QMP
    events, unit files) and names the directory in the report."""
    _require_qemu()
    lab = Lab(release=unitchaos_release)
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
        kept = lab.close(keep=bool(report and report.failed))
        for path in kept:
            request.node.user_properties.append(("artifacts", str(path)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.unitchaos_call_report = report
    if report.when == "teardown":
        lines = [f"{key}: {value}" for key, value in item.user_properties
                 if key in ("release", "kernel", "systemd", "artifacts")]
        if lines:
            report.sections.append(("guest", "\n".join(lines)))
    return report


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, but no more VMs than free memory holds."""
    from .capacity import max_parallel_vms
    return max_parallel_vms()
