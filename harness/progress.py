"""Progress for long steps: a live spinner in a terminal, plain timestamped lines in CI logs."""
import contextlib
import sys
import time

from rich.console import Console

_console = Console(stderr=True)


def _live() -> bool:
    return _console.is_terminal and not _console.is_dumb_terminal


def say(message: str) -> None:
    if _live():
        _console.print(f"[dim]{message}[/dim]", highlight=False)
    else:
        print(f"[unitchaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(title: str):
    """Shows TITLE while the block runs, then how long it took (or that it failed)."""
    started = time.monotonic()
    ok = False
    try:
        if _live():
            with _console.status(title):
                yield
        else:
            say(f"{title} ...")
            yield
        ok = True
    finally:
        took = time.monotonic() - started
        say(f"{title}: {'done' if ok else 'FAILED'} in {took:.1f} s")
