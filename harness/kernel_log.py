"""What the kernel says when a disk or a filesystem fails, in every form seen.

Kernels word the same event differently (see ../shared/notes/incident-facts.md): an XFS
shutdown is "Shutting down filesystem" on old and 6.x metadata errors, but
"Filesystem has been shut down due to log error" on the log path, which
node-problem-detector's XfsShutdown pattern misses.
"""
import json
import re

from .paths import VM_DIR

# name -> pattern, shared with the guest's deep health daemon so that host and guest agree
# on what counts; matched case-insensitively against one kernel line.
PATTERNS_FILE = VM_DIR / "guest/usr/local/share/unitchaos/kernel-patterns.json"
PATTERNS = {name: spec["regex"] for name, spec in json.loads(PATTERNS_FILE.read_text())["patterns"].items()}
_COMPILED = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in PATTERNS.items()}
# The kernel's console lines: "[   12.345678] text".
KERNEL_LINE = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")


def classify(line: str) -> list[str]:
    """The names of every pattern LINE matches."""
    return [name for name, regex in _COMPILED.items() if regex.search(line)]


def lines(console_text: str) -> list[tuple[float, str]]:
    """Every kernel line in CONSOLE_TEXT (uptime, message), whatever it says."""
    found = []
    for raw in console_text.splitlines():
        match = KERNEL_LINE.match(raw.strip())
        if match:
            found.append((float(match.group(1)), match.group(2).strip()))
    return found


def events(console_text: str) -> list[dict]:
    """Kernel lines in CONSOLE_TEXT that match a known disk or filesystem failure."""
    return [{"uptime": uptime, "line": line, "kinds": kinds}
            for uptime, line in lines(console_text) if (kinds := classify(line))]
