"""What /healthz and /readyz report, gathered in one place that every part updates.

Healthy (liveness): the main loop turned recently, no pipeline thread died, and the last
inference and the last upsert worked. Ready: warmed up, Qdrant and the broker reachable, and not
shutting down. Both answers come with the details that explain them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["Health"]


class Health:
    """Thread-safe state for the probes; writers set facts, readers get verdicts."""

    def __init__(self, stale_s: float = 30.0, *, needs_broker: bool = True) -> None:
        self.stale_s = stale_s
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
        ok = (s["loop_age_s"] < self.stale_s and s["crashed"] is None
              and s["last_inference_ok"] is not False and s["last_upsert_ok"] is not False)
        return ok, s

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        s = self.snapshot()
        ok = (s["stage"] == "running" and s["warmed_up"] and s["qdrant_ok"] is True
              and (s["broker_ok"] is True or not self.needs_broker) and s["crashed"] is None)
        return ok, s
