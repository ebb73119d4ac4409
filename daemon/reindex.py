"""Re-indexing as a completion policy: index every partition up to the end offsets seen at start.

A model upgrade (docs/operations.md) runs the normal daemon (same pipeline, same checkpointing)
with the new model directory and a new consumer group, plus this policy: it writes into
`<collection_prefix>-<new model_version>` with `qdrant.alias_policy` treated as `never` and
`kafka.auto_offset_reset` as `earliest` (`reindex_settings`). Before consuming it records the end
offset of every partition of `kafka.topics`; once the group's committed offset has reached it on
every partition, the daemon drains and commits as on SIGTERM and, with `switch_alias`, the policy
points `qdrant.alias` at the new collection in one atomic alias update.

Tombstones in the topic delete as they do in the daemon, so re-indexing a compacted topic (the
latest value per key, tombstones for deleted items until the broker drops them) leaves deleted
items out of the new collection. The alias update is atomic on both engines (one
`update_collection_aliases` call on a server; a new alias file renamed into place on Qdrant
Edge).

Exit codes: 0 caught up (and switched, when asked); 1 stopped (signal) or failed before catching
up, alias untouched; 2 configuration refused, as for `avindex run`; 3 start-up timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

from avindex.daemon.app import ConfigurationError, Daemon
from avindex.daemon.kafka_probe import TopicMissingError, end_offsets
from avindex.daemon.offsets import OffsetTracker
from avindex.daemon.ports import AliasedCollection, Source, TopicPartition
from avindex.daemon.retry import Aborted, Backoff, retry
from avindex.daemon.settings import Settings

__all__ = [
    "EXIT_INCOMPLETE",
    "ReindexPolicy",
    "reindex_daemon",
    "reindex_settings",
]

log = logging.getLogger("avindex.daemon.reindex")

EXIT_INCOMPLETE = 1
CHECK_INTERVAL_S = 0.5


def reindex_settings(settings: Settings) -> Settings:
    """The settings a re-index runs with: only a completed re-index moves the alias, and a new
    group reads everything."""
    return dataclasses.replace(
        settings,
        qdrant=dataclasses.replace(settings.qdrant, alias_policy="never"),
        kafka=dataclasses.replace(settings.kafka, auto_offset_reset="earliest"))


class ReindexPolicy:
    """Stops the daemon once it caught up with the end offsets seen at start (a
    `CompletionPolicy`); then optionally switches the alias."""

    def __init__(self, settings: Settings, *, switch_alias: bool = False,
                 stop: threading.Event | None = None) -> None:
        self.kafka = settings.kafka
        self.alias = settings.qdrant.alias
        self.backoff = Backoff(settings.pipeline.retry_initial_s, settings.pipeline.retry_max_s)
        self.switch_alias = switch_alias
        self.stop = stop or threading.Event()  # ends the alias-switch retries
        self.targets: dict[TopicPartition, int] = {}
        self.completed = False
        self._reached: set[TopicPartition] = set()
        self._next_check = 0.0
        self._source: Source | None = None
        self._tracker: OffsetTracker | None = None
        self._collection: AliasedCollection | None = None

    def prepare(self, source: Source, tracker: OffsetTracker,
                collection: AliasedCollection) -> None:
        try:
            self.targets = end_offsets(self.kafka, timeout_s=10.0)
        except TopicMissingError as exc:
            raise ConfigurationError(f"{exc} (kafka.topics)") from exc
        self._source, self._tracker, self._collection = source, tracker, collection
        log.info("re-indexing into %s up to %s", collection.collection,
                 {f"{tp.topic}/{tp.partition}": o for tp, o in sorted(self.targets.items())},
                 extra={"fields": {"end_offsets": {f"{tp.topic}/{tp.partition}": o
                                                   for tp, o in self.targets.items()}}})

    def done(self) -> bool:
        """Committed offset >= recorded end offset on every partition (runner thread)."""
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + CHECK_INTERVAL_S
        for tp, end in self.targets.items():
            if tp in self._reached:
                continue
            try:
                if not self._reached_end(tp, end):
                    return False
            except Exception as exc:  # the coordinator moved, a rebalance: ask again later
                log.debug("progress of %s unavailable: %s", tp, exc)
                return False
            self._reached.add(tp)
        log.info("caught up: the group's committed offsets reached the end offsets on every "
                 "partition; draining")
        return True

    def _reached_end(self, tp: TopicPartition, end: int) -> bool:
        if end <= 0:
            return True
        source, tracker = self._source, self._tracker
        assert source is not None and tracker is not None
        if tp not in source.assignment():  # another member's (a remote call; throttled)
            point = source.committed(tp)
            return point is not None and point >= end
        point = tracker.committed(tp)
        if point is not None and point >= end:
            return True
        # Everything received is finished and committed and the consumer's position is at or
        # past the end: nothing below `end` is left to process. This is the case for a Job
        # attempt resuming from committed offsets, and where the offsets past the last record
        # hold no records (transaction markers, or retention deleted them).
        if tracker.in_flight(tp) == 0 and not tracker.to_commit({tp}):
            position = source.position(tp)
            return position is not None and position >= end
        return False

    def finish(self, code: int, caught_up: bool) -> int:
        if code != 0 or not caught_up:
            log.error("re-index stopped before catching up with the end offsets; the alias was "
                      "left alone (the group's committed offsets keep the progress)")
            return code or EXIT_INCOMPLETE
        if self.switch_alias:
            collection = self._collection
            assert collection is not None
            store = getattr(collection, "store", None)
            is_refusal = getattr(store, "is_refusal", lambda exc: False)

            def transient(exc: BaseException) -> bool:
                """Retry anything but a refusal (credentials, permissions, an unknown
                collection); a server's or Edge's outage passes."""
                return not (isinstance(exc, KeyError | ValueError) or is_refusal(exc))

            def on_failure(exc: BaseException, attempt: int, delay: float) -> None:
                log.error("switching alias %s failed (%s: %s); retrying in %.1fs",
                          collection.alias, type(exc).__name__, exc, delay)

            try:
                retry(collection.switch_alias, is_transient=transient, backoff=self.backoff,
                      stop=self.stop, on_failure=on_failure)
            except Aborted:
                return EXIT_INCOMPLETE
            except Exception as exc:  # refused: leave the alias as it is, fail the Job
                log.error("switching alias %s refused: %s: %s", collection.alias,
                          type(exc).__name__, exc)
                return EXIT_INCOMPLETE
        else:
            log.info("re-index complete; alias %s left alone (no --switch-alias)", self.alias)
        self.completed = True
        return 0


def reindex_daemon(settings: Settings, *, switch_alias: bool = False, store: Any = None,
                   qdrant_client: Any = None) -> Daemon:
    """A daemon that re-indexes (its policy is `daemon.completion`); `run()` returns the exit
    code above. A stop request also ends the alias switch's retries. `store`/`qdrant_client`:
    as for `Daemon`."""
    settings = reindex_settings(settings)
    policy = ReindexPolicy(settings, switch_alias=switch_alias)
    daemon = Daemon(settings, store=store, qdrant_client=qdrant_client, completion=policy)
    policy.stop = daemon.stop
    return daemon
