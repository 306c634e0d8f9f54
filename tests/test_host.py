"""Tests for harness/machines/host.py: what `unitchaos doctor` checks, without booting."""
from harness.machines import host


def test_a_missing_tool_says_which_package_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path))
    monkeypatch.setattr(host.shutil, "which", lambda tool: None if tool == "mmdebstrap" else f"/usr/bin/{tool}")
    monkeypatch.setattr(host.accel, "qemu_version", lambda: "QEMU emulator version 7.2.22")
    monkeypatch.setattr(host.os.path, "exists", lambda path: False)  # no /dev/kvm
    found = {check.name: check for check in host.checks()}
    assert not found["mmdebstrap"].ok and found["mmdebstrap"].detail == "missing: apt-get install mmdebstrap"
    assert found["qemu-img"].ok and found["QEMU version"].detail.startswith("QEMU emulator")
    assert found["KVM"].ok and "TCG" in found["KVM"].detail
    assert list(found)[-1] == "free disk"
