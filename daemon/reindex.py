"""`avindex reindex`: index every partition up to the end offsets seen at start, then stop.

A model upgrade (docs/operations.md) runs this with the new model directory and a new consumer
group: the normal daemon (same pipeline, same checkpointing) writes into
`<collection_prefix>-<new model_version>` with `qdrant.alias_policy` treated as `never` and
`kafka.auto_offset_reset` as `earliest`. At start it records the end offset of every partition of
`kafka.topics`; once the group's committed offset has reached it on every partition, it drains
and commits as on SIGTERM and, with `--switch-alias`, points `qdrant.alias` at the new collection
in one `update_collection_aliases` call.

Exit codes: 0 caught up (and switched, when asked); 1 stopped (signal) or failed before catching
up, alias untouched; 2 configuration refused, as for `avindex run`; 3 start-up timeout.
"""

from __future__ import annotations

import argparse
import logging
import time

from kafka import KafkaConsumer

from avindex.daemon.app import (
    EXIT_CONFIG,
    ConfigurationError,
    Daemon,
    install_signal_handlers,
    settings_from_args,
)
from avindex.daemon.app import configure as configure_run
from avindex.daemon.retry import Aborted, retry
from avindex.daemon.runner import Runner
from avindex.daemon.settings import KafkaSettings, Settings
from avindex.daemon.sink import is_transient
from avindex.daemon.source import KafkaSource, TopicPartition, client_config

__all__ = ["EXIT_INCOMPLETE", "Reindexer", "configure", "end_offsets", "main"]

log = logging.getLogger("avindex.daemon.reindex")

EXIT_INCOMPLETE = 1
CHECK_INTERVAL_S = 0.5


def end_offsets(kafka: KafkaSettings, timeout_s: float = 30.0) -> dict[TopicPartition, int]:
    """The end offset (high watermark) of every partition of `kafka.topics`, right now.

    ListOffsets(latest) is not trusted alone: Tansu answers it with the offset after the last
    batch's *first* record. Every fetch response carries the partition's high watermark (what
    the lag metric uses), so a group-less consumer fetches once from the listed offset and the
    larger of the two is the end offset. Against Kafka the listed offset is the end, and that
    fetch returns nothing but the watermark.
    """
    consumer = KafkaConsumer(**client_config(kafka), group_id=None, enable_auto_commit=False,
                             max_partition_fetch_bytes=max(kafka.max_message_bytes + 65536,
                                                           1048576))
    try:
        consumer.bootstrap(timeout_ms=int(timeout_s * 1000))
        partitions = []
        for topic in kafka.topics:
            numbers = consumer.partitions_for_topic(topic)
            if not numbers:
                raise ConfigurationError(f"kafka topic {topic!r} does not exist (kafka.topics)")
            partitions += [TopicPartition(topic, p) for p in sorted(numbers)]
        listed = consumer.end_offsets(partitions)
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, listed[tp])
        deadline = time.monotonic() + timeout_s
        while missing := [tp for tp in partitions if consumer.highwater(tp) is None]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no fetch response carried the high watermark of {missing}")
            consumer.poll(timeout_ms=200, max_records=1)  # records are discarded
        return {tp: max(listed[tp], consumer.highwater(tp)) for tp in partitions}
    finally:
        consumer.close(autocommit=False)


class Reindexer(Daemon):
    """The daemon, stopping itself once it has caught up with the end offsets seen at start."""

    def __init__(self, settings: Settings, *, switch_alias: bool = False, **kwargs) -> None:
        settings.qdrant.alias_policy = "never"  # only a completed re-index moves the alias
        settings.kafka.auto_offset_reset = "earliest"  # a new group reads everything
        super().__init__(settings, **kwargs)
        self.switch_alias = switch_alias
        self.targets: dict[TopicPartition, int] = {}
        self.completed = False
        self._reached: set[TopicPartition] = set()
        self._next_check = 0.0
        self._source: KafkaSource | None = None
        self._runner: Runner | None = None

    def run(self) -> int:
        code = super().run()
        if code == 0 and not self.completed:  # a signal during start-up
            return self._incomplete(code)
        return code

    def _incomplete(self, code: int) -> int:
        log.error("re-index stopped before catching up with the end offsets; the alias was "
                  "left alone (the group's committed offsets keep the progress)")
        return code or EXIT_INCOMPLETE

    def _before_run(self, source: KafkaSource, runner: Runner) -> None:
        found: dict[TopicPartition, int] = {}

        def record() -> None:
            found.update(end_offsets(self.settings.kafka, timeout_s=10.0))

        self._until_reachable("Kafka", ",".join(self.settings.kafka.bootstrap_servers), record,
                              lambda exc: not isinstance(exc, ConfigurationError))
        self.targets = found
        self._source, self._runner = source, runner
        runner.done = self._caught_up
        log.info("re-indexing into %s up to %s", self.sink.collection if self.sink else "?",
                 {f"{tp.topic}/{tp.partition}": o for tp, o in sorted(found.items())},
                 extra={"fields": {"end_offsets": {f"{tp.topic}/{tp.partition}": o
                                                   for tp, o in found.items()}}})

    def _caught_up(self) -> bool:
        """Committed offset >= recorded end offset on every partition (runner thread)."""
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + CHECK_INTERVAL_S
        assert self._source is not None and self._runner is not None
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
        runner, source = self._runner, self._source
        assert runner is not None and source is not None
        if tp not in source.assignment():  # another member's (a remote call; throttled)
            point = source.committed(tp)
            return point is not None and point >= end
        point = runner.tracker.committed(tp)
        if point is not None and point >= end:
            return True
        # Everything received is finished and committed and the consumer's position is at or
        # past the end: nothing below `end` is left to process. This is the case for a Job
        # attempt resuming from committed offsets, and where the offsets past the last record
        # hold no records (transaction markers, or retention deleted them).
        if runner.tracker.in_flight(tp) == 0 and not runner.tracker.to_commit({tp}):
            position = source.position(tp)
            return position is not None and position >= end
        return False

    def _after_run(self, code: int) -> int:
        runner = self._runner
        if code != 0 or runner is None or not runner.finished:
            return self._incomplete(code)
        if self.switch_alias:
            assert self.sink is not None
            sink = self.sink

            def on_failure(exc: BaseException, attempt: int, delay: float) -> None:
                log.error("switching alias %s failed (%s: %s); retrying in %.1fs", sink.alias,
                          type(exc).__name__, exc, delay)

            try:
                retry(sink.switch_alias, is_transient=is_transient, backoff=self._backoff(),
                      stop=self.stop, on_failure=on_failure)
            except Aborted:
                raise
            except Exception as exc:  # refused: leave the alias as it is, fail the Job
                log.error("switching alias %s refused: %s: %s", sink.alias, type(exc).__name__,
                          exc)
                return EXIT_INCOMPLETE
        else:
            log.info("re-index complete; alias %s left alone (no --switch-alias)",
                     self.settings.qdrant.alias)
        self.completed = True
        return 0


def configure(parser: argparse.ArgumentParser) -> None:
    configure_run(parser)
    parser.add_argument("--switch-alias", action="store_true",
                        help="once caught up, point qdrant.alias at the new collection")


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings is None:
        return EXIT_CONFIG
    daemon = Reindexer(settings, switch_alias=bool(getattr(args, "switch_alias", False)))
    log.info("avindex reindex starting", extra={"fields": {
        "settings": settings.redacted(), "switch_alias": daemon.switch_alias}})
    install_signal_handlers(daemon)
    code = daemon.run()
    log.info("avindex reindex exiting with code %d", code)
    return code
