"""The pytest plugin: a `lab` fixture that hands out booted instances and tears them all
down after the test, whatever happens; each test's report names the guest kernel and
systemd it ran on.

Under CI=true a missing QEMU fails the test: a skipped VM experiment must never pass
for a green run.
"""
import os
import shutil

import pytest

from .errors import UserError
from .lab import Lab


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
    lab = Lab()
    try:
        yield lab
    except UserError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
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
        lines = [f"{key}: {value}" for key, value in item.user_properties if key in ("kernel", "systemd", "artifacts")]
        if lines:
            report.sections.append(("guest", "\n".join(lines)))
    return report


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, but no more VMs than free memory holds."""
    from .capacity import max_parallel_vms
    return max_parallel_vms()
