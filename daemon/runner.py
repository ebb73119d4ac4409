"""The main loop: poll, hand messages to the pipeline, checkpoint, commit, pause, shut down.

Runs on one thread, the only one that touches the Kafka consumer. Each turn it
1. records finished messages (acknowledgements queued by the pipeline threads),
2. commits the offsets the checkpoint allows (every `kafka.commit_interval_s`, or every
   `sink.flush_interval_s` when that is longer), after the vector store made their points
   durable (`sink.flush()`: Qdrant Edge syncs its WAL and segments),
3. pauses partitions when too much is in flight and resumes them when it drains, and pauses
   every partition while the vector store is failing (an outage: nothing is committed),
4. polls (always, even with every partition paused, so the group keeps us), and
5. submits what it got.

A record the Kafka client cannot read makes `poll()` raise; the runner finds which record it was
(`Source.locate_unreadable`), submits it as a poisoned job (dead-lettered with its coordinates,
stage `consume`) and reads on after it. The poison quarantine (`quarantine.py`) finds a message
that kills the whole process: after such a death the new owner processes one message at a time
and dead-letters a message that killed the daemon `kafka.poison_after_crashes` times.

Stopping (first SIGTERM/SIGINT): intake stops, in-flight work gets `shutdown_deadline_s` to
finish, what is left is dropped (never committed, redelivered later), finished offsets are
committed and the consumer leaves the group; exit code 0. A second signal skips the wait.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

from kafka.errors import KafkaError

from avindex.daemon.health import Health
from avindex.daemon.messages import Record
from avindex.daemon.metrics import Metrics
from avindex.daemon.offsets import OffsetTracker, Token
from avindex.daemon.pipeline import Job, Pipeline, Poison
from avindex.daemon.ports import Source, TopicPartition
from avindex.daemon.quarantine import CRASHED_REASON, Quarantine
from avindex.daemon.settings import Settings

__all__ = ["Runner"]

log = logging.getLogger(__name__)

POLL_S = 0.1
LAG_INTERVAL_S = 1.0
POLL_RETRY_S = 1.0  # after poll() failed for a reason that is not one record


class Runner:
    """Owns the consumer, the offset checkpoint and the stop sequence."""

    def __init__(self, settings: Settings, source: Source, pipeline: Pipeline,
                 acks: queue.SimpleQueue, metrics: Metrics, health: Health,
                 stop: threading.Event, force: threading.Event,
                 quarantine: Quarantine | None = None) -> None:
        self.settings, self.source, self.pipeline = settings, source, pipeline
        self.acks, self.metrics, self.health = acks, metrics, health
        self.stop, self.force = stop, force
        self.quarantine = quarantine
        self.tracker = OffsetTracker()
        self._new_partitions: list[TopicPartition] = []  # assigned, not yet seen by quarantine
        self._last_commit = 0.0
        self._last_lag = 0.0
        self._saturated = False  # global in-flight cap reached; cleared at 3/4
        self._stopping = False
        self._flush_failed = False  # the last durability barrier failed: store outage
        # `avindex reindex`: checked after every turn; True ends the loop like a graceful stop
        self.done: Callable[[], bool] | None = None
        self.finished = False  # the loop ended because `done` said so

    # -------------------------------------------------------------------------------- loop
    def run(self) -> int:
        """Until a stop is requested; then drain and return the exit code."""
        self.health.set(stage="running")
        while not self.stop.is_set():
            if self.pipeline.crashed:
                log.error("stopping: %s", self.pipeline.crashed)
                self.stop.set()
                break
            self._turn(intake=True)
            if self.done is not None and self.done():
                self.finished = True
                break
        return self._shutdown()

    def _turn(self, intake: bool) -> None:
        self.health.beat()
        self._drain_acks()
        self._commit(force=False)
        headroom = self._backpressure() if intake else 0
        if not intake:
            self.source.pause(self.source.assignment())
        try:
            records = self.source.poll(POLL_S, max_records=max(1, headroom))
        except Exception as exc:  # one unreadable record, or the client failing: never fatal
            records = []
            self._poll_failed(exc, intake)
        self.health.set(broker_ok=self.source.connected())
        self._adopt_new_partitions(records)
        if records and not intake:
            # only possible when a rebalance inside poll() assigned new partitions; they are
            # paused in on_assigned, and anything untracked is simply not committed.
            log.info("dropping %d records fetched while stopping", len(records))
            records = []
        records = self._one_at_a_time(records)
        for r in records:
            self._submit(r, self._verdict(r))
        self._gauges()

    def _one_at_a_time(self, records: list[Record]) -> list[Record]:
        """In careful mode at most one message is in flight: records beyond that (fetched by
        the poll that brought a new assignment, before careful mode was known) are put back:
        their partitions are read again from the first one not taken."""
        if self.quarantine is None or not self.quarantine.careful or not records:
            return records
        keep = records[:1] if self.pipeline.pending == 0 else []
        put_back: dict[TopicPartition, int] = {}
        for r in records[len(keep):]:
            tp = TopicPartition(r.topic, r.partition)
            put_back[tp] = min(r.offset, put_back.get(tp, r.offset))
        for tp, offset in put_back.items():
            self.source.seek(tp, offset)
        return keep

    def _track(self, r: Record) -> Token:
        tp = TopicPartition(r.topic, r.partition)
        try:
            return self.tracker.track(tp, r.offset)
        except ValueError:
            # The position moved backwards (offset reset or seek): start a new checkpoint;
            # late acks of the old one are ignored and re-read messages are processed again.
            log.warning("%s/%d went back to offset %d; restarting its checkpoint", r.topic,
                        r.partition, r.offset)
            self.tracker.assign(tp)
            return self.tracker.track(tp, r.offset)

    def _submit(self, r: Record, poison: Poison | None = None) -> None:
        token = self._track(r)
        self.metrics.consumed.labels(r.topic).inc()
        self.pipeline.submit(Job(record=r, token=token, poison=poison))

    def _verdict(self, r: Record) -> Poison | None:
        """In careful mode (the quarantine), record the attempt of a message that is about to
        run alone, or dead-letter it when it killed the daemon too often already."""
        tp = TopicPartition(r.topic, r.partition)
        if self.quarantine is None or not self.quarantine.is_careful(tp):
            return None
        self._commit(force=True)  # everything before it is done: the commit point is r
        why = self.quarantine.admit(tp, r.offset)
        return None if why is None else Poison("decode", CRASHED_REASON, why)

    def _poll_failed(self, exc: BaseException, intake: bool) -> None:
        """Dead-letter the record the client cannot read and read on after it; when no record
        is to blame, count the failure and poll again after a pause."""
        located = self.source.locate_unreadable(exc) if intake else None
        if located is None:
            self.metrics.failures.labels("consume", type(exc).__name__).inc()
            log.error("polling Kafka failed (%s: %s); polling again in %.0fs",
                      type(exc).__name__, str(exc)[:300], POLL_RETRY_S)
            self.stop.wait(POLL_RETRY_S)
            return
        tp, offset = located
        log.warning("%s/%d@%d cannot be read by the Kafka client (%s: %s); dead-lettering its "
                    "coordinates and reading on after it", tp.topic, tp.partition, offset,
                    type(exc).__name__, str(exc)[:300])
        self._submit(Record(topic=tp.topic, partition=tp.partition, offset=offset, key=None,
                            value=None),
                     Poison("consume", "corrupt_record",
                            f"the Kafka client cannot read this record ({type(exc).__name__}: "
                            f"{str(exc)[:500]}); its bytes stay in the source topic"))
        self.source.seek(tp, offset + 1)

    def _adopt_new_partitions(self, records: list[Record]) -> None:
        """Tell the quarantine where newly assigned partitions start (before their records)."""
        if not self._new_partitions:
            return
        new, self._new_partitions = self._new_partitions, []
        if self.quarantine is None:
            return
        assigned = self.source.assignment()
        self.quarantine.refresh()
        for tp in new:
            if tp not in assigned:
                continue
            first = [r.offset for r in records if (r.topic, r.partition) == tp]
            start = min(first) if first else self.source.position(tp)
            if start is not None:
                self.quarantine.assigned(tp, start)

    def _drain_acks(self) -> None:
        while True:
            try:
                token: Token = self.acks.get_nowait()
            except queue.Empty:
                return
            self.tracker.finish(token)  # False for a revoked assignment: nothing to do

    def _commit(self, force: bool, partitions=None) -> None:
        now = time.monotonic()
        interval = max(self.settings.kafka.commit_interval_s,
                       getattr(self.pipeline.sink, "flush_interval_s", 0.0))
        if not force and now - self._last_commit < interval:
            return
        self._last_commit = now
        offsets = self.tracker.to_commit(partitions)
        if not offsets or not self._durable():
            return
        try:
            self.source.commit(offsets)
        except KafkaError as exc:  # rebalance in progress, coordinator moved: try again later
            self.metrics.failures.labels("commit", type(exc).__name__).inc()
            log.warning("offset commit failed (%s); will retry", exc)
            return
        self.tracker.mark_committed(offsets)
        self.metrics.commits.inc()
        if self.quarantine is not None:
            for tp, point in offsets.items():
                self.quarantine.progress(tp, point)
        log.debug("committed %s", {f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()})

    def _durable(self) -> bool:
        """The durability barrier before a commit: every acknowledged point was written before
        this call, so after it they survive a crash. False (commit nothing) when it fails."""
        start = time.perf_counter()
        try:
            self.pipeline.sink.flush()
        except Exception as exc:
            self._flush_failed = True
            reason = self.pipeline.sink.failure_reason(exc)
            self.metrics.failures.labels("flush", reason).inc()
            self.health.set(qdrant_ok=False, qdrant_error=f"flush: {exc!r}"[:300])
            log.error("making the index durable failed (%s: %s); offsets not committed, will "
                      "retry", reason, exc)
            return False
        self.metrics.flush_seconds.observe(time.perf_counter() - start)
        if self._flush_failed:
            self._flush_failed = False
            if not self.pipeline.outage.is_set():
                self.health.set(qdrant_ok=True, qdrant_error=None)
        return True

    def _backpressure(self) -> int:
        """Pause/resume partitions by in-flight counts; returns how many records may be taken.
        In the quarantine's careful mode one message at a time is in flight in the daemon."""
        k = self.settings.kafka
        total = self.pipeline.pending
        outage = self.pipeline.outage.is_set() or self._flush_failed
        if self.quarantine is not None and self.quarantine.careful:
            assigned = self.source.assignment()
            if total:
                self.source.pause(assigned - self.source.paused())
                return 0
            self.source.resume(self.source.paused())
            return 1
        if total >= k.max_in_flight:
            self._saturated = True
        elif total <= k.max_in_flight * 3 // 4:
            self._saturated = False
        assigned, paused = self.source.assignment(), self.source.paused()
        to_pause, to_resume = [], []
        for tp in assigned:
            n = self.tracker.in_flight(tp)
            if outage or self._saturated or n >= k.max_in_flight_per_partition:
                if tp not in paused:
                    to_pause.append(tp)
            elif tp in paused and n <= k.max_in_flight_per_partition * 3 // 4:
                to_resume.append(tp)
        self.source.pause(to_pause)
        self.source.resume(to_resume)
        if outage:
            return 0
        return max(0, min(k.max_poll_records, k.max_in_flight - total))

    def _gauges(self) -> None:
        m = self.metrics
        m.in_flight.set(self.tracker.in_flight())
        m.oldest_in_flight.set(self.pipeline.oldest_age())
        self.health.set(oldest_active_age_s=round(self.pipeline.oldest_age(active_only=True), 3))
        for name, depth in self.pipeline.depths().items():
            m.queue_depth.labels(name).set(depth)
        now = time.monotonic()
        if now - self._last_lag < LAG_INTERVAL_S:
            return
        self._last_lag = now
        assigned = self.source.assignment()
        m.assigned_partitions.set(len(assigned))
        m.paused_partitions.set(len(self.source.paused()))
        for tp in assigned:
            high = self.source.highwater(tp)
            point = self.tracker.committed(tp)
            if high is not None and point is not None:
                m.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - point))

    # --------------------------------------------------------------------------- rebalance
    def on_revoked(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Give revoked partitions' work a moment to finish, forget the rest; return the
        offsets to commit for them (the source commits them before the hand-over)."""
        if not partitions:  # the first join of a group "revokes" nothing
            return {}
        self.metrics.rebalances.inc()
        # While stopping, the drain already happened in _shutdown (close() revokes everything).
        stopping = self.force.is_set() or self.stop.is_set()
        wait = 0 if stopping else self.settings.kafka.revoke_drain_s
        deadline = time.monotonic() + wait
        while (any(self.tracker.in_flight(tp) for tp in partitions)
               and time.monotonic() < deadline and not self.force.is_set()):
            self._drain_acks()
            time.sleep(0.05)
        self._drain_acks()
        offsets = self.tracker.to_commit(set(partitions))
        if offsets and not self._durable():
            offsets = {}  # the new owner re-reads them: replays overwrite, nothing is lost
        for tp in partitions:
            if self.quarantine is not None:
                self.quarantine.revoked(tp, offsets.get(tp, self.tracker.committed(tp)))
            dropped = self.tracker.revoke(tp)
            if dropped:
                log.info("%s/%d revoked with %d messages in flight; the new owner redelivers "
                         "them", tp.topic, tp.partition, dropped)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        log.info("partitions revoked: %s", _names(partitions))
        return offsets

    def on_revoke_commit(self, offsets: dict[TopicPartition, int],
                         error: KafkaError | None) -> None:
        """The outcome of the commit made for revoked partitions before their hand-over."""
        if error is None:
            self.metrics.commits.inc()
            return
        self.metrics.failures.labels("commit", type(error).__name__).inc()
        log.warning("commit on revoke failed (%s); the new owner re-reads %s from the previous "
                    "commit (replays overwrite, nothing is lost)", error, _names(offsets))

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.tracker.assign(tp)
        self._new_partitions += partitions
        if self.stop.is_set():
            self.source.pause(partitions)
        log.info("partitions assigned: %s", _names(partitions))

    # ----------------------------------------------------------------------------- shutdown
    def _shutdown(self) -> int:
        deadline_s = self.settings.pipeline.shutdown_deadline_s
        self.health.set(stage="stopping")
        log.info("stopping: no new messages; draining %d in flight (deadline %.0fs)",
                 self.tracker.in_flight(), deadline_s)
        deadline = time.monotonic() + deadline_s
        while (self.tracker.in_flight() and time.monotonic() < deadline
               and not self.force.is_set()):
            self._turn(intake=False)
        self._drain_acks()
        left = self.tracker.in_flight()
        self.pipeline.abort()
        self._commit(force=True)
        if self.quarantine is not None and not self.force.is_set():
            self.quarantine.stopped({tp: self.tracker.committed(tp)
                                     for tp in self.source.assignment()})
        if left:
            log.warning("%s: dropped %d in-flight messages; they were not committed and will be "
                        "redelivered (items already upserted are overwritten, not duplicated)",
                        "forced exit" if self.force.is_set() else "shutdown deadline passed",
                        left)
        else:
            log.info("drained: every taken message is indexed or dead-lettered and committed")
        self.source.close()
        # A forced exit does not wait for stages still inside a slow fetch or decode: their
        # work is dropped (uncommitted) anyway, and the threads are daemon threads.
        self.pipeline.join(timeout_s=0.2 if self.force.is_set() else 2.0)
        return 1 if self.force.is_set() or self.pipeline.crashed else 0


def _names(partitions) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)
