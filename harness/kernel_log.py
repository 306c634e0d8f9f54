"""What the kernel says when a disk or a filesystem fails, in every form seen.

Kernels word the same event differently (see ../shared/notes/incident-facts.md): an XFS
shutdown is "Shutting down filesystem" on old and 6.x metadata errors, but
"Filesystem has been shut down due to log error" on the log path, which
node-problem-detector's XfsShutdown pattern misses.
"""
import re

# name -> pattern; matched case-insensitively against one kernel line.
PATTERNS = {
    "xfs-shutdown": r"XFS \([^)]+\):.*(Shutting down filesystem|Filesystem has been shut down|"
                    r"Log I/O Error Detected|Corruption of in-memory data)",
    "xfs-metadata-io-error": r"XFS \([^)]+\):.*metadata I/O error",
    "xfs-log-io-error": r"XFS \([^)]+\):.*log I/O error",
    "xfs-please-unmount": r"XFS \([^)]+\): Please unmount the filesystem",
    "xfs-device-removed": r"XFS \([^)]+\):.*Block device removal",
    "xfs-unmount": r"XFS \([^)]+\): Unmounting Filesystem",
    "block-io-error": r"I/O error, dev \w+",
    "buffer-io-error": r"Buffer I/O error on dev",
    "lost-page-write": r"lost (async )?page write",
    "ext4-error": r"EXT4-fs (error|warning)",
    "ext4-remount-ro": r"Remounting filesystem read-only",
    "ext4-abort-journal": r"Aborting journal",
    "jbd2-error": r"JBD2: .*(error|Error)",
    "hung-task": r"blocked for more than \d+ seconds",
}
_COMPILED = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in PATTERNS.items()}
# The kernel's console lines: "[   12.345678] text".
KERNEL_LINE = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")


def classify(line: str) -> list[str]:
    """The names of every pattern LINE matches."""
    return [name for name, regex in _COMPILED.items() if regex.search(line)]


def events(console_text: str) -> list[dict]:
    """Kernel lines in CONSOLE_TEXT that match a known disk or filesystem failure."""
    found = []
    for raw in console_text.splitlines():
        match = KERNEL_LINE.match(raw.strip())
        if not match:
            continue
        kinds = classify(match.group(2))
        if kinds:
            found.append({"uptime": float(match.group(1)), "line": match.group(2).strip(), "kinds": kinds})
    return found
