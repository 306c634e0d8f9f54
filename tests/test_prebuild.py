"""Images built ahead of the tests that need them (harness/images/prebuild.py, plugin)."""
import os
import threading
from types import SimpleNamespace

import pytest

from harness import plugin
from harness.images import prebuild
from harness.images.image import NO_EXTRAS, Extras, images_dir, recipe_key

REDIS = Extras(("redis-server",))


@pytest.fixture
def built(monkeypatch, tmp_path):
    """ensure_image replaced by a recorder that 'builds' by writing the manifest."""
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_ensure(release, extras=NO_EXTRAS):
        # The build, and the mmdebstrap it would fork, run niced: the guest under test keeps its CPU.
        assert os.getpriority(os.PRIO_PROCESS, 0) == os.getpriority(os.PRIO_PROCESS, os.getpid()) + 10 or \
            os.getpriority(os.PRIO_PROCESS, 0) == 19
        calls.append((release, extras))
        if release == "sid":
            raise RuntimeError("apt: unmet dependencies")
        path = images_dir() / recipe_key(release, extras)
        path.mkdir(parents=True)
        (path / "manifest.json").write_text("{}")

    monkeypatch.setattr(prebuild, "ensure_image", fake_ensure)
    return calls


def test_builds_what_is_missing_once_in_order_and_survives_a_failed_build(built):
    already = images_dir() / recipe_key("bookworm", NO_EXTRAS)
    already.mkdir(parents=True)
    (already / "manifest.json").write_text("{}")
    ahead = prebuild.Prebuild([("bookworm", NO_EXTRAS), ("sid", NO_EXTRAS), ("trixie", NO_EXTRAS),
                               ("bookworm", REDIS), ("trixie", NO_EXTRAS)]).start()
    ahead._thread.join(timeout=10)
    assert built == [("sid", NO_EXTRAS), ("trixie", NO_EXTRAS), ("bookworm", REDIS)]
    ahead.stop()


def test_stop_waits_for_the_build_in_progress_and_starts_no_other(monkeypatch, tmp_path):
    monkeypatch.setenv("UNITCHAOS_CACHE", str(tmp_path / "cache"))
    started, release_it, calls = threading.Event(), threading.Event(), []

    def slow_ensure(release, extras=NO_EXTRAS):
        calls.append(release)
        started.set()
        release_it.wait(10)

    monkeypatch.setattr(prebuild, "ensure_image", slow_ensure)
    ahead = prebuild.Prebuild([("trixie", NO_EXTRAS), ("sid", NO_EXTRAS)]).start()
    assert started.wait(10)
    threading.Timer(0.3, release_it.set).start()
    ahead.stop()
    assert not ahead._thread.is_alive()
    assert calls == ["trixie"]


def test_nothing_to_build_starts_no_thread(built):
    for release in ("bookworm", "trixie"):
        path = images_dir() / recipe_key(release, NO_EXTRAS)
        path.mkdir(parents=True)
        (path / "manifest.json").write_text("{}")
    ahead = prebuild.Prebuild([("bookworm", NO_EXTRAS), ("trixie", NO_EXTRAS)]).start()
    assert not ahead._thread.is_alive() and ahead.wanted == []
    ahead.stop()
    assert built == []


def _item(fixtures, release=None, **lab_kwargs):
    marker = SimpleNamespace(kwargs=lab_kwargs) if lab_kwargs else None
    return SimpleNamespace(fixturenames=fixtures, get_closest_marker=lambda name: marker,
                           callspec=SimpleNamespace(params={"unitchaos_release": release}) if release else None)


def test_the_plugin_wants_each_vm_tests_image_in_collection_order(monkeypatch):
    config = SimpleNamespace(unitchaos_releases=None, getoption=lambda name: None)
    chains = {None: SimpleNamespace(packages=[], files=[]),
              "chains/redis.toml": SimpleNamespace(packages=["redis-server"], files=[])}
    monkeypatch.setattr(plugin, "_chain", lambda config, chain_file: chains[chain_file])
    items = [_item(["tmp_path"]),                                   # a fast test: no image
             _item(["lab", "unitchaos_release"], release="trixie"),
             _item(["lab"]),                                        # the default release
             _item(["lab"], chain_file="chains/redis.toml"),
             _item(["lab"], guest="fcos")]                          # not a Debian image
    assert plugin._wanted_images(config, items) == [("trixie", NO_EXTRAS), ("bookworm", NO_EXTRAS),
                                                    ("bookworm", REDIS)]
