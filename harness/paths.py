"""Where things live: the repository's guest-side files and the host's cache."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VM_DIR = REPO / "vm"
UNITS_DIR = VM_DIR / "units"


def cache_dir() -> Path:
    """Images and snapshots are big and slow to make: keep them across runs and checkouts."""
    base = os.environ.get("UNITCHAOS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "unitchaos")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    path = cache_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifacts_dir() -> Path:
    """Kept runs (failed tests, --keep-artifacts): never swept, cleared by hand."""
    path = cache_dir() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path
