"""`--kernel FILE.deb`: a user's linux-image package on a release's userspace.

Bad input (no file, not a .deb, not a kernel package, a kernel that does not boot) is one
line, exit 2, nothing left behind; the release's own image keys never see the package;
the image boots the package's kernel (taken out of the root disk by name); the outcome
names the package. No image is built and no guest booted here: the packages are tiny
fabrications of dpkg-deb --build, the root disk one of mke2fs -d.
"""
import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import cli, errors
from harness.evidence.outcome import Outcome
from harness.images import image, user_kernel
from harness.images.image import Image
from harness.lab.instance import Instance
from harness.lab.lab import Lab

from test_boot_panic import PANICKED_CONSOLE, booting
from test_cli import assert_one_line_error, hermetic, run_cli  # noqa: F401 (hermetic: autouse fixture)

UNAME_R = "9.9.9-unitchaos-test"


def deb(tmp_path: Path, package: str, files: dict[str, bytes], arch: str = "amd64") -> Path:
    """A .deb built by dpkg-deb from FILES (path in the package -> bytes)."""
    root = tmp_path / f"{package}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: {arch}\nMaintainer: test <t@example.org>\n"
        "Description: a test package\n")
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    out = tmp_path / f"{package}_1.0-1_{arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture
def kernel_deb(tmp_path) -> Path:
    return deb(tmp_path, f"linux-image-{UNAME_R}", {f"boot/vmlinuz-{UNAME_R}": b"a kernel",
                                                     f"lib/modules/{UNAME_R}/modules.order": b""})


# -- bad input: one line, exit 2, before any image work -----------------------------

def test_a_missing_file_is_one_line_and_exit_2(capsys, tmp_path):
    line = assert_one_line_error(capsys, run_cli(["run", "yank", "--kernel", str(tmp_path / "nope.deb")]))
    assert "nope.deb: no such file" in line and "linux-image" in line


def test_a_file_that_is_not_a_deb_is_one_line_and_exit_2(capsys, tmp_path):
    fake = tmp_path / "linux-image-fake.deb"
    fake.write_text("not an ar archive\n")
    line = assert_one_line_error(capsys, run_cli(["run", "yank", "--kernel", str(fake)]))
    assert "is not a Debian package" in line and "dpkg-deb" in line


def test_a_deb_without_a_kernel_is_one_line_and_exit_2(capsys, tmp_path):
    headers = deb(tmp_path, "linux-headers-9.9.9", {"usr/src/linux-headers-9.9.9/Makefile": b"all:\n"})
    line = assert_one_line_error(capsys, run_cli(["run", "yank", "--kernel", str(headers)]))
    assert "linux-headers-9.9.9 1.0-1 is not a kernel image package: it has no /boot/vmlinuz-*" in line


def test_a_kernel_for_another_architecture_is_refused(capsys, tmp_path):
    arm = deb(tmp_path, "linux-image-9.9.9-arm64", {"boot/vmlinuz-9.9.9-arm64": b"k"}, arch="arm64")
    line = assert_one_line_error(capsys, run_cli(["image", "build", "--kernel", str(arm)]))
    assert "is for arm64, and the guest is amd64" in line


@pytest.mark.parametrize("argv", [["demo"], ["matrix", "yank"], ["verdict", "yank"], ["versions", "yank"],
                                  ["image", "build"], ["run", "yank", "--release", "bookworm"]])
def test_every_command_with_release_takes_kernel_and_checks_it_first(capsys, tmp_path, argv):
    line = assert_one_line_error(capsys, run_cli([*argv, "--kernel", str(tmp_path / "gone.deb")]))
    assert "gone.deb: no such file" in line


def test_bad_input_leaves_nothing_behind(capsys, tmp_path):
    fake = tmp_path / "x.deb"
    fake.write_text("no")
    assert_one_line_error(capsys, run_cli(["run", "yank", "--kernel", str(fake)]))
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(p for p in cache.rglob("*") if p.is_file())


def test_a_kernel_package_is_read_for_what_names_it(kernel_deb):
    kernel = user_kernel.inspect(kernel_deb)
    assert (kernel.package, kernel.version, kernel.uname_r) == (f"linux-image-{UNAME_R}", "1.0-1", UNAME_R)
    assert kernel.sha256 == subprocess.run(["sha256sum", str(kernel_deb)], capture_output=True,
                                           text=True).stdout.split()[0]
    assert kernel.describe() == f"linux-image-{UNAME_R} 1.0-1 (sha256 {kernel.sha256[:12]})"


# -- keys: the release's own never change; a kernel image follows the package ---------

def test_the_releases_own_image_keys_ignore_the_kernel_code_path():
    # Hashed into every release's key: neither this module nor anything it adds.
    hashed = [p.resolve() for p in image.RECIPE_INPUTS]
    module = Path(user_kernel.__file__).resolve()
    assert all(module != p and p not in module.parents for p in hashed)
    # And the key itself takes no kernel: same inputs, same key.
    assert "kernel" not in image.recipe_key.__code__.co_varnames


def test_a_kernel_image_key_follows_the_package_and_the_release(kernel_deb, tmp_path, monkeypatch):
    kernel = user_kernel.inspect(kernel_deb)
    other = user_kernel.inspect(deb(tmp_path, "linux-image-other", {"boot/vmlinuz-1.2.3": b"k"}))
    key = user_kernel.image_key("bookworm", kernel)
    assert key.startswith("bookworm-kernel-") and key != image.recipe_key("bookworm")
    assert key == user_kernel.image_key("bookworm", kernel)
    assert key != user_kernel.image_key("bookworm", other)
    assert key != user_kernel.image_key("trixie", kernel)
    monkeypatch.setattr(image, "recipe_key", lambda release, extras=image.NO_EXTRAS: f"{release}-changed")
    assert key != user_kernel.image_key("bookworm", kernel)


def test_a_lab_without_kernel_builds_the_releases_own_image(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(image, "ensure_image", lambda release, extras=None: asked.append(release) or "stock")
    monkeypatch.setattr(user_kernel, "ensure_image", lambda *a, **k: pytest.fail("took the kernel path"))
    assert Lab(release="trixie").image == "stock" and asked == ["trixie"]


def test_kernel_is_refused_with_another_backend(kernel_deb):
    with pytest.raises(errors.UserError, match="--kernel boots a kernel package in the harness's own Debian image"):
        Lab(backend="vagrant", kernel=user_kernel.inspect(kernel_deb))


# -- the image: the package's kernel is the one booted -----------------------------

@pytest.fixture
def base(tmp_path, monkeypatch) -> Image:
    """The release's own image, as image.ensure_image hands it out (never built here)."""
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))
    built = Image(image.images_dir() / "bookworm-0123456789abcdef")
    built.path.mkdir()
    built.root.write_bytes(b"root disk")
    for name in ("id_ed25519", "id_ed25519.pub", "vmlinuz", "initrd.img"):
        (built.path / name).write_text(f"stock {name}")
    (built.path / "manifest.json").write_text(json.dumps({
        "release": "bookworm", "kernel": "6.1.0-50-cloud-amd64", "key": built.key, "packages": ["systemd"],
        "package_versions": {"kernel": "6.1.176-1", "systemd": "252.39-1~deb12u2"}}))
    monkeypatch.setattr(image, "ensure_image", lambda release, extras=image.NO_EXTRAS: built)
    return built


def installs(monkeypatch, boot_files: dict[str, bytes]) -> list:
    """Stands in for the loop mount (a plain directory) and apt-get in the chroot (which
    leaves BOOT_FILES in /boot); returns what was mounted and installed."""
    seen = []

    @contextlib.contextmanager
    def mounted(root_img, mnt):
        seen.append(("mounted", root_img.read_bytes()))
        (mnt / "boot").mkdir(parents=True)
        try:
            yield mnt
        finally:
            shutil.rmtree(mnt / "boot")

    def install(tree, kernel, release):
        seen.append(("installed", kernel.package, release))
        for name, data in boot_files.items():
            (tree / "boot" / name).write_bytes(data)

    monkeypatch.setattr(user_kernel, "_mounted", mounted)
    monkeypatch.setattr(user_kernel, "_install_into", install)
    return seen


def test_the_image_is_a_copy_of_the_releases_booting_the_packages_kernel(kernel_deb, base, monkeypatch):
    seen = installs(monkeypatch, {f"vmlinuz-{UNAME_R}": b"the user's kernel", f"initrd.img-{UNAME_R}": b"the user's initrd"})
    kernel = user_kernel.inspect(kernel_deb)
    built = user_kernel.ensure_image("bookworm", kernel)
    assert seen == [("mounted", b"root disk"), ("installed", kernel.package, "bookworm")]
    assert built.kernel.read_bytes() == b"the user's kernel" and built.initrd.read_bytes() == b"the user's initrd"
    assert built.root.read_bytes() == b"root disk" and (built.path / "id_ed25519").read_text() == "stock id_ed25519"
    assert base.kernel.read_text() == "stock vmlinuz"  # the release's own image is untouched
    manifest = built.manifest
    assert manifest["kernel"] == UNAME_R and manifest["user_kernel"] == kernel.to_json()
    assert manifest["package_versions"] == {"kernel": "1.0-1", "systemd": "252.39-1~deb12u2"}
    assert (manifest["key"], manifest["base_image"], manifest["stock_kernel_ignored"]) == (
        built.key, base.key, "6.1.0-50-cloud-amd64")
    # Made once: a second ask reuses it; nothing else is left in the cache.
    monkeypatch.setattr(user_kernel, "_build", lambda *a: pytest.fail("made again"))
    assert user_kernel.ensure_image("bookworm", kernel) == built
    assert sorted(p.name for p in image.images_dir().iterdir()) == sorted(
        [base.key, built.key, f"{built.key}.lock"])


def test_a_package_that_installs_no_initrd_is_one_error_and_leaves_nothing(kernel_deb, base, monkeypatch):
    installs(monkeypatch, {f"vmlinuz-{UNAME_R}": b"the user's kernel"})
    with pytest.raises(errors.UserError, match=f"installed no /boot/initrd.img-{UNAME_R}"):
        user_kernel.ensure_image("bookworm", user_kernel.inspect(kernel_deb))
    assert sorted(p.name for p in image.images_dir().iterdir() if not p.name.endswith(".lock")) == [base.key]


# -- a kernel that does not boot: bad input, console kept ---------------------------

def test_a_user_kernel_that_panics_on_every_boot_is_bad_input_with_its_console_kept(kernel_deb, tmp_path,
                                                                                    monkeypatch, capsys):
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))
    kernel = user_kernel.inspect(kernel_deb)
    run_dir = tmp_path / "20261201-150000-1-0-cold-bindsto-xfs"
    run_dir.mkdir()
    instance = booting(run_dir, "tcg")
    (instance.image.path / "manifest.json").write_text(json.dumps({"release": "trixie", "user_kernel": kernel.to_json()}))
    instance.machine.start = lambda: instance.machine.console_path.write_text(PANICKED_CONSOLE)
    with pytest.raises(errors.KernelDidNotBoot) as failure:
        Instance.boot(instance)
    kept = failure.value.console
    assert kept.read_text() == PANICKED_CONSOLE and run_dir not in kept.parents
    capsys.readouterr()  # the retries' progress lines
    monkeypatch.setattr("harness.cli.run.cmd_run", lambda args: (_ for _ in ()).throw(failure.value))
    line = assert_one_line_error(capsys, run_cli(["run", "yank"]))
    assert line.startswith(f"unitchaos: error: the kernel {kernel.describe()} did not boot on Debian trixie's "
                           "userspace: the guest kernel panicked")
    assert f"console kept: {kept}" in line


def test_the_releases_own_kernel_that_panics_is_still_a_guest_error(tmp_path):
    instance = booting(tmp_path, "tcg")
    instance.machine.start = lambda: instance.machine.console_path.write_text(PANICKED_CONSOLE)
    with pytest.raises(errors.GuestKernelPanic):
        Instance.boot(instance)


# -- the outcome names the package -----------------------------------------------

def test_the_outcome_names_the_package_and_reads_back(kernel_deb):
    kernel = user_kernel.inspect(kernel_deb)
    outcome = Outcome("yank", "bindsto", "xfs", guest_versions={"kernel": UNAME_R}, user_kernel=kernel)
    data = outcome.to_json()
    assert data["kernel"] == UNAME_R
    assert data["user_kernel"] == {"package": kernel.package, "version": "1.0-1", "sha256": kernel.sha256,
                                   "uname_r": UNAME_R, "file": str(kernel_deb.resolve())}
    assert Outcome.from_json(data).user_kernel == kernel
    assert "user_kernel" not in Outcome("yank", "bindsto", "xfs").to_json()
    from harness.cli.options import kernel_said
    assert kernel_said(outcome).endswith(f"--kernel {kernel.describe()} booted as {UNAME_R}")


# -- prune keeps a kernel image while its package is there and unchanged -------------

def test_prune_keeps_a_kernel_image_while_its_package_is_there_unchanged(kernel_deb, tmp_path, monkeypatch):
    from harness.lab import prune
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))
    kernel = user_kernel.inspect(kernel_deb)
    built = image.images_dir() / user_kernel.image_key("bookworm", kernel)
    built.mkdir()
    (built / "manifest.json").write_text(json.dumps({"release": "bookworm", "user_kernel": kernel.to_json()}))
    older = image.images_dir() / "bookworm-kernel-0123456789abcdef"  # an older recipe's, same package
    shutil.copytree(built, older)
    assert {entry.path.name for entry in prune.find()} == {older.name}
    kernel_deb.write_bytes(kernel_deb.read_bytes() + b"\0")  # rebuilt: another sha256, another image
    assert {entry.path.name for entry in prune.find()} == {older.name, built.name}
    kernel_deb.unlink()
    assert {entry.path.name for entry in prune.find()} == {older.name, built.name}
