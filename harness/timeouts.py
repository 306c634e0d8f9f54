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
