"""The Kafka side: a consumer with manual commits and pause/resume (the pipeline's `Source`).

A thin adapter over kafka-python (used only from the runner's thread: the consumer is not
thread-safe). It never commits by itself: `enable_auto_commit` is off and the runner commits the
offsets its checkpoint allows. Rebalances are forwarded to the runner's hooks. kafka-python 3
runs them on its IO thread while the runner's thread waits inside `poll()` (so the runner's state
is never touched by two threads at once), and a blocking client call there would deadlock the
IO loop: the revoke hook therefore *returns* the offsets to commit, and the listener awaits an
asynchronous commit of them on the IO loop before the partitions are handed over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from avindex.daemon.kafka_config import client_config
from avindex.daemon.messages import Record
from avindex.daemon.ports import AssignHook, CommitOutcome, RevokeHook
from avindex.daemon.settings import KafkaSettings

__all__ = ["KafkaSource", "drop_failed_records", "release_parked_records"]

log = logging.getLogger(__name__)


def release_parked_records(consumer: KafkaConsumer) -> None:
    """Work around a kafka-python 3.0.x stall after pause/resume.

    The fetcher parks records fetched for a paused partition and puts them back only while its
    in-line slot is `None`; an exhausted (falsy) batch left in that slot keeps them parked for
    ever, and partitions with parked records are never fetched again: the consumer stops with
    messages left. Emptying the exhausted slot before each poll lets the parked records return.
    A client without these internals is left alone.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    current = getattr(fetcher, "_next_partition_records", None)
    if current is not None and not current and hasattr(fetcher, "_paused_partition_records"):
        fetcher._next_partition_records = None


def drop_failed_records(consumer: KafkaConsumer) -> None:
    """Work around a kafka-python 3.0.x hang after `poll()` raised on an unreadable record.

    The fetcher keeps the records it was reading when the record parser raised. Their iterator
    is dead, yet they stay "next in line" while the partition's position equals their next
    offset, and every later `poll()` then loops for ever taking nothing from them (a busy loop
    inside `poll()`, found by tests/daemon/test_daemon_hardening.py). Dropping them, and the
    error kafka-python stashed to raise again, makes the next poll fetch afresh. A client
    without these internals is left alone.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    records = getattr(fetcher, "_next_partition_records", None)
    if records is not None and hasattr(records, "drain"):
        records.drain()
        fetcher._next_partition_records = None
    if getattr(fetcher, "_next_in_line_exception_metadata", None) is not None:
        fetcher._next_in_line_exception_metadata = None


def _inline_partition(consumer: KafkaConsumer) -> TopicPartition | None:
    """The partition whose records kafka-python was reading when it raised (an internal of
    kafka-python 3, used only to try that partition first; None when not available)."""
    records = getattr(getattr(consumer, "_fetcher", None), "_next_partition_records", None)
    return getattr(records, "topic_partition", None)


def _offset_meta(offsets: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


class _Listener(AsyncConsumerRebalanceListener):
    """Runs the runner's hooks on kafka-python's IO loop; commits on revoke without blocking it."""

    def __init__(self, source: KafkaSource, on_revoked: RevokeHook, on_assigned: AssignHook,
                 on_revoke_commit: CommitOutcome) -> None:
        self._source = source
        self._on_revoked, self._on_assigned = on_revoked, on_assigned
        self._on_revoke_commit = on_revoke_commit

    async def on_partitions_revoked(self, revoked):
        offsets = self._on_revoked(list(revoked))
        if not offsets:
            return
        try:
            await self._source.consumer.commit_async(_offset_meta(offsets))
        except KafkaError as exc:  # the new owner redelivers from the last commit: no loss
            self._on_revoke_commit(offsets, exc)
        else:
            self._on_revoke_commit(offsets, None)

    async def on_partitions_assigned(self, assigned):
        self._on_assigned(list(assigned))


class KafkaSource:
    """Consumer-group membership, polling, pausing and committing for the runner."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._consumer: KafkaConsumer | None = None

    def connect(self, on_revoked: RevokeHook, on_assigned: AssignHook,
                on_revoke_commit: CommitOutcome) -> None:
        """Create the consumer and subscribe (the group join happens in the first polls).

        The hooks run during `poll()` when a rebalance takes partitions away or hands them over;
        `on_revoked` returns the offsets to commit for the partitions it gives up, and
        `on_revoke_commit` hears whether that commit worked.
        """
        s = self.settings
        fetch_bytes = max(s.max_message_bytes + 65536, 1048576)
        self._consumer = KafkaConsumer(
            **client_config(s),
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset=s.auto_offset_reset,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            max_poll_records=s.max_poll_records,
            max_partition_fetch_bytes=fetch_bytes,
            fetch_max_bytes=max(fetch_bytes, 52428800),
        )
        self._consumer.subscribe(s.topics, listener=_Listener(self, on_revoked, on_assigned,
                                                               on_revoke_commit))

    @property
    def consumer(self) -> KafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("KafkaSource.connect() was not called")
        return self._consumer

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        release_parked_records(self.consumer)
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000),
                                     max_records=max(1, max_records))
        out = []
        for records in batches.values():
            for r in records:
                out.append(Record(topic=r.topic, partition=r.partition, offset=r.offset,
                                  key=r.key, value=r.value, headers=tuple(r.headers or ()),
                                  timestamp_ms=r.timestamp))
        return out

    def assignment(self) -> set[TopicPartition]:
        """Partitions held now (empty before `connect()` and after `close()`)."""
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def paused(self) -> set[TopicPartition]:
        return set(self.consumer.paused())

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = list(partitions)
        if partitions:
            self.consumer.pause(*partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = list(partitions)
        if partitions:
            self.consumer.resume(*partitions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read `tp` from `offset` on (the next poll re-fetches from there)."""
        self.consumer.seek(tp, offset)

    def locate_unreadable(self, exc: BaseException, timeout_s: float = 2.0
                          ) -> tuple[TopicPartition, int] | None:
        """The partition and offset of the record that made `poll()` raise `exc`, or None
        when no partition reproduces it (then it was not a record's fault).

        kafka-python raises from `poll()` without saying which record it could not read (a
        header key that is not UTF-8, a failed CRC, a malformed batch). When it raises, the
        unreadable record is the next one of its partition, so each assigned partition with
        unread data is polled alone from its position, once, until one raises; everything is
        put back as it was (pause state, positions) except that nothing is consumed.
        """
        c = self.consumer
        assigned, paused = set(c.assignment()), set(c.paused())
        positions = {tp: c.position(tp) for tp in assigned - paused}
        first = _inline_partition(c)
        candidates = sorted((tp for tp, pos in positions.items()
                             if c.highwater(tp) is None or c.highwater(tp) > pos),
                            key=lambda tp: (tp != first, tp))
        drop_failed_records(c)
        try:
            for tp in candidates:
                c.pause(*(assigned - {tp}))
                c.resume(tp)
                c.seek(tp, positions[tp])
                deadline = time.monotonic() + timeout_s
                try:
                    while time.monotonic() < deadline and not c.poll(timeout_ms=100,
                                                                     max_records=1):
                        pass
                except Exception:  # reproduced: this partition's next record is unreadable
                    return tp, positions[tp]
                finally:
                    c.seek(tp, positions[tp])  # whatever was polled is read again later
            log.warning("poll() failed (%s: %s) but no partition reproduces it alone",
                        type(exc).__name__, exc)
            return None
        finally:
            c.pause(*(assigned & paused))
            c.resume(*(assigned - paused))

    def commit(self, offsets: dict[TopicPartition, int], timeout_s: float = 10.0) -> None:
        """Synchronous commit of "everything below offset is done" per partition."""
        if offsets:
            self.consumer.commit(_offset_meta(offsets), timeout_ms=int(timeout_s * 1000))

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end offset as of the last fetch response (no extra request)."""
        return self.consumer.highwater(tp)

    def committed(self, tp: TopicPartition, timeout_s: float = 2.0) -> int | None:
        """The group's committed offset of a partition, asked from the coordinator."""
        return self.consumer.committed(tp, timeout_ms=int(timeout_s * 1000))

    def position(self, tp: TopicPartition, timeout_s: float = 1.0) -> int | None:
        """Offset of the next record poll() would return for an assigned partition."""
        return self.consumer.position(tp, timeout_ms=int(timeout_s * 1000))

    def bootstrap(self, timeout_s: float) -> None:
        """Block until cluster metadata arrived; raises KafkaTimeoutError when unreachable."""
        self.consumer.bootstrap(timeout_ms=int(timeout_s * 1000))

    def connected(self) -> bool:
        """The group coordinator is known (kafka-python has no public call for this)."""
        if self._consumer is None:
            return False
        try:
            return not self._consumer._coordinator.coordinator_unknown()
        except AttributeError:  # a client version without it: do not report a false outage
            return True

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception:  # closing is best effort: the group will time us out anyway
                log.exception("closing the Kafka consumer failed")
            self._consumer = None
