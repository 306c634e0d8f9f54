"""Builds the images a test run will need ahead of the tests that need them, one at a time
in a background thread, while the VM tests of images already built run.

Why: a run on a fresh machine (or after a recipe change) needs an image per release and
per chain with packages of its own (seven in CI: bookworm, trixie, bookworm-backports,
trixie-backports, sid, Redis, PostgreSQL). Built where each is first needed, at ~3.5 min
each (measured 2026-12-01, quiet host), they wait in line behind each other; built behind
the running tests, most of that time is hidden. One builder at a time, at nice 10: at a
host load of 5-8 a TCG guest's own checks time out (a container start over 20 s, seen
2026-12-01), so the guest under test must keep its CPU and the build takes what is left.

A build that fails here is not reported: the test that needs the image builds it again
through ensure_image and reports it as usual (with apt's words for an uninstallable sid).
Two processes asking for one image are serialized by ensure_image's lock, so the test
simply waits for a build in progress.
"""
import os
import threading

from .. import progress
from .image import Extras, ensure_image, recipe_key, images_dir


class Prebuild:
    """Builds WANTED, a list of (release, Extras), in order, in a background thread.

        ahead = Prebuild([("trixie", NO_EXTRAS), ("sid", NO_EXTRAS)]).start()
        ...
        ahead.stop()   # lets the build in progress finish (never half an image), starts no other
    """

    def __init__(self, wanted: list[tuple[str, Extras]]):
        self.wanted = [(release, extras) for release, extras in dict.fromkeys(wanted)
                       if not (images_dir() / recipe_key(release, extras) / "manifest.json").exists()]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._build_all, name="unitchaos-prebuild", daemon=True)

    def start(self) -> "Prebuild":
        """Starts building, unless every image is already there."""
        if self.wanted:
            progress.say(f"Building {len(self.wanted)} guest image(s) ahead, one at a time: "
                         + ", ".join(release + (" +" + "+".join(extras.packages) if extras.packages else "")
                                     for release, extras in self.wanted))
            self._thread.start()
        return self

    def stop(self) -> None:
        """Starts no further build and waits for the one in progress (ensure_image's own
        build timeout bounds that wait)."""
        self._stopping.set()
        if self._thread.is_alive():
            progress.say("Waiting for the guest image being built ahead to finish (a half-built one is never kept)")
            self._thread.join()

    def _build_all(self) -> None:
        # Linux keeps the nice value per thread, and mmdebstrap's processes inherit it.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        for release, extras in self.wanted:
            if self._stopping.is_set():
                return
            try:
                ensure_image(release, extras=extras)
            except Exception:  # noqa: BLE001 - the test that needs it builds it again and reports
                continue
