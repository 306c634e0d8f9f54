"""The pytest plugin: a `lab` fixture that hands out booted instances and tears them all
down after the test, whatever happens; each test's report names the guest kernel and
systemd it ran on.

Under CI=true a missing QEMU fails the test: a skipped VM experiment must never pass
for a green run. With --keep-on-failure a failed test's instances stay up (as
`unitchaos up` leaves one) and the failure says how to reach them.
"""
import os
import re
import shutil

import pytest

from . import interactive
from .errors import UserError
from .lab import Lab


def pytest_addoption(parser):
    parser.addoption("--keep-on-failure", action="store_true",
                     help="leave a failed experiment's VM running for a look (unitchaos status/shell/down)")


def pytest_configure(config):
    config.addinivalue_line("markers", "vm: boots a QEMU guest (slow)")


def _require_qemu():
    missing = [tool for tool in ("qemu-system-x86_64", "qemu-img") if not shutil.which(tool)]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (apt-get install qemu-system-x86 qemu-utils)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the VM experiments, but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def lab(request):
    """Hands out instances (lab.instance(chain=..., fs=...)) and tears them all down after
    the test. A failed test keeps each instance's artifacts (console, journal, dmesg, QMP
    events, unit files) and names the directory in the report."""
    _require_qemu()
    keep_up = request.config.getoption("keep_on_failure")
    # Experiments leave their instance to this fixture, which knows whether the test failed.
    lab = Lab(hold=True, outlive_owner=keep_up)
    try:
        yield lab
    except UserError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        for instance in lab.instances:
            for key, value in instance.guest_versions.items():
                request.node.user_properties.append((key, value))
        report = getattr(request.node, "unitchaos_call_report", None)
        failed = bool(report and report.failed)
        if failed and keep_up:
            _keep_up(request, lab)
        for path in lab.close(keep=failed):
            request.node.user_properties.append(("artifacts", str(path)))


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
        artifacts = lab.keep_copy(instance)
        state = interactive.hand_over(lab, instance, name, artifacts)
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
        lines = [f"{key}: {value}" for key, value in item.user_properties if key in ("kernel", "systemd", "artifacts")]
        lines += getattr(item, "unitchaos_kept_up", [])
        if lines:
            # "teardown" in the name: pytest shows such sections with the failure.
            report.sections.append(("unitchaos guest (teardown)", "\n".join(lines)))
    return report


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, but no more VMs than free memory holds."""
    from .capacity import max_parallel_vms
    return max_parallel_vms()
