"""Capped exponential back-off, owned by the runner's stages (plugins make one attempt each).

`retry` keeps calling until the call succeeds, raises an error that is not transient, or the stop
event is set (then `Aborted`). Waiting happens on the stop event, so shutdown interrupts a
back-off at once instead of sleeping through it.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Aborted", "Backoff", "retry"]

T = TypeVar("T")


class Aborted(Exception):
    """The stop event was set while waiting to retry."""


@dataclass(frozen=True)
class Backoff:
    """Delay before retry n (0-based): initial * 2**n, capped, with +-jitter."""

    initial_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        base = min(self.max_s, self.initial_s * (2 ** min(attempt, 30)))
        return base * (1 + self.jitter * (2 * random.random() - 1))


def retry(
    call: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    backoff: Backoff,
    stop: threading.Event,
    on_failure: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """Run `call` until it succeeds; non-transient errors propagate; a stop raises Aborted."""
    attempt = 0
    while True:
        if stop.is_set():
            raise Aborted()
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = backoff.delay(attempt)
            if on_failure is not None:
                on_failure(exc, attempt, delay)
            attempt += 1
            if stop.wait(delay):
                raise Aborted() from exc
