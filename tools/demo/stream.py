"""Streaming the demo set: claim-check envelopes into the topic, then watching the daemon's
metrics until every clip is indexed or dead-lettered."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from avindex.tools.demo.console import say, step
from avindex.tools.demo.services import Services
from avindex.tools.scrape import http_get, metric_total

__all__ = ["METADATA_FIELDS", "produce", "wait_indexed"]

METADATA_FIELDS = ("label", "word", "language", "speaker", "split")
INDEXED = "avindex_messages_indexed_total"
DEAD = "avindex_messages_dead_lettered_total"


def produce(bootstrap: str, topic: str, rows: list[dict]) -> None:
    from kafka import KafkaProducer

    with step(f"producing {len(rows)} clips to {topic} (claim-check envelopes)",
              10 + len(rows) * 0.01):
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
        try:
            for row in rows:
                envelope = {"id": row["id"], "uri": Path(row["path"]).as_uri(),
                            "metadata": {k: row[k] for k in METADATA_FIELDS}}
                producer.send(topic, key=row["id"].encode(), value=json.dumps(envelope).encode(),
                              headers=[("content-type", b"application/json")])
            producer.flush(60)
        finally:
            producer.close(10)


def _outcomes(url: str) -> tuple[float, float] | None:
    """(indexed, dead-lettered) from the daemon's /metrics; None when it does not answer."""
    status, body = http_get(url + "/metrics")
    if status != 200:
        return None
    text = body.decode()
    return metric_total(text, INDEXED), metric_total(text, DEAD)


def wait_indexed(services: Services, n: int, stop_requested: threading.Event,
                 state: Path) -> None:
    from tqdm import tqdm

    with step(f"indexing {n} clips (decode, embed, upsert)", 30 + n * 0.15), \
            tqdm(total=n, unit="clip", file=sys.stdout, mininterval=1.0,
                 dynamic_ncols=False, ncols=80) as bar:
        done = 0
        while done < n:
            services.check_daemon()
            if stop_requested.wait(0.5):
                raise KeyboardInterrupt
            outcome = _outcomes(services.url)
            if outcome is not None:
                now = int(sum(outcome))
                bar.update(now - done)
                done = now
    _, dead = _outcomes(services.url) or (0.0, 0.0)
    if dead >= n:
        raise SystemExit(f"avindex demo: every clip was dead-lettered; the reasons are in "
                         f"{state / 'daemon.log'} (use --state DIR to keep it)")
    if dead:
        say(f"{dead:.0f} clips were dead-lettered (see {state / 'daemon.log'}); the MAP leaves "
            "them out")
