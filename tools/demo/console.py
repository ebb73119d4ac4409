"""What the demo prints, and how long each step took.

Output must never stop the clean-up: with `avindex demo | tee demo.log`, Ctrl-C ends `tee` too,
and the next write raises BrokenPipeError. From then on output goes to /dev/null, so stopping the
daemon and the broker still happens.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["say", "show", "step"]


def show(text: str = "") -> None:
    """One line on stdout (dropped once the reader is gone)."""
    try:
        print(text, flush=True)
    except (BrokenPipeError, OSError):
        _drop_stdout()


def say(text: str) -> None:
    show(f"[demo] {text}")


def _drop_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # later writes and the exit flush succeed
        os.close(devnull)


@contextlib.contextmanager
def step(name: str, expected_s: float) -> Iterator[None]:
    """Time a step; say so while it runs past `expected_s` (2 CPU cores) and at its end."""
    say(f"{name} ...")
    started = time.monotonic()
    timer = threading.Timer(expected_s, lambda: say(
        f"{name}: still running after {expected_s:.0f}s, slower than expected on 2 CPU cores"))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    took = time.monotonic() - started
    slow = f" (slow: expected about {expected_s:.0f}s)" if took > expected_s else ""
    say(f"{name}: done in {took:.1f}s{slow}")
