"""Reading a daemon's /metrics from outside (the demo's progress bar, tests of real processes,
benchmarks), with prometheus_client's own text parser."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["http_get", "metric_total"]


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """(status, body); (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` (e.g. `avindex_messages_indexed_total`) whose labels
    include `labels`, in a Prometheus text exposition."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
