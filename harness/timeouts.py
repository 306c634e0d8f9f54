"""Every wait has a timeout. The defaults suit TCG on a 2-core machine; a slower host
(or a loaded CI runner) sets UNITCHAOS_TIMEOUT_SCALE instead of editing tests."""
import os


def scale() -> float:
    try:
        return max(0.1, float(os.environ.get("UNITCHAOS_TIMEOUT_SCALE", "1")))
    except ValueError:
        return 1.0


def scaled(seconds: float) -> float:
    return seconds * scale()


def wait_until(condition, timeout: float, what: str, every: float = 0.25):
    """Polls CONDITION until it returns something true (returned), or raises GuestTimeout
    naming WHAT after TIMEOUT seconds (scaled). WHAT may be a callable, asked only then."""
    import time

    from .errors import GuestTimeout
    deadline = time.monotonic() + scaled(timeout)
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise GuestTimeout(f"{what() if callable(what) else what} (waited {scaled(timeout):.0f} s)")
        time.sleep(every)
    return result
