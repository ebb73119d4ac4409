"""Streaming the demo set: claim-check envelopes into the topic (`avindex produce`'s code), then
watching the daemon's metrics until every clip is indexed or dead-lettered."""

from __future__ import annotations

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
    """What `avindex produce MANIFEST.csv --by-reference` sends, for the chosen rows."""
    from avindex.daemon.settings import KafkaSettings
    from avindex.tools.produce import Item, Limits, encode, producer_for, send

    with step(f"producing {len(rows)} clips to {topic} (claim-check envelopes)",
              10 + len(rows) * 0.01):
        limits = Limits()
        items = [Item(row["id"], Path(row["path"]), {k: row[k] for k in METADATA_FIELDS})
                 for row in rows]
        messages = [(i.media_id.encode(), *encode(i, by_reference=True, root=None,
                                                  limits=limits)) for i in items]
        producer = producer_for(KafkaSettings(bootstrap_servers=[bootstrap]), limits)
        try:
            send(producer, topic, messages, progress=False)
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
