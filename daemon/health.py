"""What /healthz and /readyz report, gathered in one place that every part updates.

Healthy (liveness): the main loop turned recently, no pipeline thread died, the last inference
worked, and no message has been stuck in a fetch, decode or inference for longer than allowed
(messages waiting on the vector store or on the dead-letter topic do not count: that is an
outage, which readiness reports). Only the process's own state: an outage of the vector store
or the broker never gets the process restarted (it would not help). Ready: warmed up, the vector
store, the broker and the dead-letter topic reachable, and not shutting down. Both answers come
with the details that explain them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["Health"]


class Health:
    """Thread-safe state for the probes; writers set facts, readers get verdicts."""

    def __init__(self, stale_s: float = 30.0, max_in_flight_age_s: float = 0.0, *,
                 needs_broker: bool = True) -> None:
        self.stale_s = stale_s
        self.max_in_flight_age_s = max_in_flight_age_s  # 0: not checked
        self.needs_broker = needs_broker  # `avindex serve` has no Kafka consumer
        self._lock = threading.Lock()
        self._facts: dict[str, Any] = {
            "stage": "starting",  # starting -> model -> qdrant -> kafka -> running -> stopping
            "warmed_up": False,
            "qdrant_ok": None,  # None: not tried yet
            "qdrant_error": None,
            "broker_ok": None,
            "last_inference_ok": None,
            "last_upsert_ok": None,
            "dead_letter_ok": None,  # False after kafka.dead_letter_failures_unready failures
            "dead_letter_error": None,
            "oldest_active_age_s": 0.0,  # oldest message not waiting on an outage
            "crashed": None,
        }
        self._beat = time.monotonic()

    def set(self, **facts: Any) -> None:
        with self._lock:
            self._facts.update(facts)

    def beat(self) -> None:
        """The main loop (or the start-up sequence) is alive."""
        with self._lock:
            self._beat = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._facts)
            out["loop_age_s"] = round(time.monotonic() - self._beat, 3)
        return out

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        s = self.snapshot()
        stuck = (self.max_in_flight_age_s > 0
                 and s["oldest_active_age_s"] > self.max_in_flight_age_s)
        ok = (s["loop_age_s"] < self.stale_s and s["crashed"] is None and not stuck
              and s["last_inference_ok"] is not False)
        return ok, s

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        s = self.snapshot()
        ok = (s["stage"] == "running" and s["warmed_up"] and s["qdrant_ok"] is True
              and (s["broker_ok"] is True or not self.needs_broker)
              and s["dead_letter_ok"] is not False and s["crashed"] is None)
        return ok, s
