"""Poison quarantine: a message that kills the daemon is found and dead-lettered, instead of
killing every restart.

Errors inside the pipeline cost one message (a dead letter), but some failures take the whole
process: a native crash, an out-of-memory kill, a bug a message triggers. The message is then
redelivered to the next daemon, which dies the same way, for ever. Kafka itself counts nothing,
so the daemon keeps a small state record per consumer group and partition in a state topic
(`kafka.state_topic`, one partition, compacted):

    {"offset": X, "attempts": k, "clean": false}

- While a partition is assigned it is marked not clean; a revoke or a stop marks it clean.
- A daemon that is assigned a partition whose record says "not clean" knows that its previous
  owner died with unfinished work. It then processes messages *one at a time, alone in the
  whole daemon* (careful mode) for the next `window` messages of that partition, committing
  each before the next and recording, before it starts on message X, `{"offset": X,
  "attempts": k + 1}`.
- If the daemon dies again, the record names exactly the message that was alone in flight. A
  message whose record shows `attempts >= after_crashes` is dead-lettered as `crashed_decoder`
  without being processed.

So a killer message is dead-lettered after it killed the daemon `after_crashes` times while alone
in flight (the first, unexplained death only starts careful mode), and innocent messages are
never blamed. State writes are advisory: when the state topic cannot be read or written, the
daemon logs it and goes on without the quarantine rather than stop indexing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from avindex.daemon.kafka_config import client_config
from avindex.daemon.kafka_probe import read_to_end
from avindex.daemon.ports import TopicPartition
from avindex.daemon.settings import KafkaSettings

__all__ = ["CRASHED_REASON", "PartitionState", "Quarantine", "StateStore", "StateTopic"]

log = logging.getLogger(__name__)

CRASHED_REASON = "crashed_decoder"


@dataclass(frozen=True)
class PartitionState:
    """What the last owner of a partition recorded: the message it was on and how often a
    daemon started on it alone, and whether it let go of the partition cleanly."""

    offset: int
    attempts: int = 0
    clean: bool = True

    def to_bytes(self) -> bytes:
        return json.dumps({"offset": self.offset, "attempts": self.attempts,
                           "clean": self.clean}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> PartitionState | None:
        try:
            data = json.loads(raw or b"")
            return cls(int(data["offset"]), int(data.get("attempts", 0)),
                       bool(data.get("clean", True)))
        except (ValueError, TypeError, KeyError):  # not ours, or damaged: no information
            return None


class StateStore(Protocol):
    """Where partition states live (the state topic in production, a dict in unit tests)."""

    def load(self) -> Mapping[TopicPartition, PartitionState]: ...

    def write(self, tp: TopicPartition, state: PartitionState, wait: bool) -> None: ...


class StateTopic:
    """Partition states in a Kafka topic, keyed `<group>/<topic>/<partition>`."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.topic = settings.state_topic
        self._prefix = f"{settings.group_id}/"
        self._producer: KafkaProducer | None = None

    def ensure(self) -> None:
        """Create the topic (one partition, compacted) unless it exists."""
        admin = KafkaAdminClient(**client_config(self.settings))
        try:
            brokers = len(admin.describe_cluster().get("brokers") or ()) or 1
            admin.create_topics([NewTopic(self.topic, 1, min(3, brokers),
                                          topic_configs={"cleanup.policy": "compact"})])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    def _key(self, tp: TopicPartition) -> bytes:
        return f"{self._prefix}{tp.topic}/{tp.partition}".encode()

    def load(self) -> dict[TopicPartition, PartitionState]:
        out: dict[TopicPartition, PartitionState] = {}
        for record in read_to_end(self.settings, self.topic, timeout_s=15.0):
            key = (record.key or b"").decode("utf-8", "replace")
            if not key.startswith(self._prefix):
                continue  # another group's
            topic, _, partition = key[len(self._prefix):].rpartition("/")
            state = PartitionState.from_bytes(record.value)
            if topic and partition.isdigit() and state is not None:
                out[TopicPartition(topic, int(partition))] = state  # later records win
        return out

    def write(self, tp: TopicPartition, state: PartitionState, wait: bool) -> None:
        if self._producer is None:
            # max_block_ms: a revoke writes from the consumer's IO loop, which must not hang
            self._producer = KafkaProducer(**client_config(self.settings), acks="all",
                                           linger_ms=0, max_block_ms=5000)
        future = self._producer.send(self.topic, key=self._key(tp), value=state.to_bytes())
        if wait:
            future.get(timeout=self.settings.dead_letter_timeout_s)

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception:  # best effort at shutdown
                log.exception("closing the state-topic producer failed")
            self._producer = None


@dataclass
class _Window:
    """A partition in careful mode until its commit point reaches `end`."""

    end: int
    stored: PartitionState | None


class Quarantine:
    """The bookkeeping of careful mode and attempts (runner thread only)."""

    def __init__(self, store: StateStore, *, after_crashes: int, window: int) -> None:
        self.store = store
        self.after_crashes = after_crashes
        self.window = window
        self._careful: dict[TopicPartition, _Window] = {}
        self._states: Mapping[TopicPartition, PartitionState] = {}

    # --------------------------------------------------------------------------- assignment
    def refresh(self) -> None:
        """Read the stored states (once per rebalance, before `assigned`)."""
        try:
            self._states = self.store.load()
        except Exception as exc:  # advisory: index without the quarantine rather than stop
            log.warning("poison quarantine: cannot read its state topic (%s: %s); this "
                        "assignment runs without it", type(exc).__name__, exc)
            self._states = {}

    def assigned(self, tp: TopicPartition, start: int) -> None:
        """`tp` was assigned and will be read from offset `start`."""
        stored = self._states.get(tp)
        if stored is not None and not stored.clean:
            self._careful[tp] = _Window(end=start + self.window,
                                        stored=stored if stored.offset >= start else None)
            log.warning("%s/%d: its previous owner stopped without letting go of it (at offset "
                        "%d); processing the next %d messages one at a time to find a message "
                        "that kills the daemon", tp.topic, tp.partition, stored.offset,
                        self.window)
        attempts = stored.attempts if stored is not None and stored.offset == start else 0
        self._write(tp, PartitionState(start, attempts, clean=False), wait=True)

    def revoked(self, tp: TopicPartition, commit_point: int | None) -> None:
        """Let go of `tp` cleanly (not waited for: at worst the next owner is careful)."""
        self._careful.pop(tp, None)
        if commit_point is not None:
            self._write(tp, PartitionState(commit_point, 0, clean=True), wait=False)

    def stopped(self, commit_points: Mapping[TopicPartition, int | None]) -> None:
        """A clean stop: every partition let go of."""
        for tp, point in commit_points.items():
            self._careful.pop(tp, None)
            if point is not None:
                self._write(tp, PartitionState(point, 0, clean=True), wait=True)

    # ------------------------------------------------------------------------ careful mode
    @property
    def careful(self) -> bool:
        """Some partition is in careful mode: one message in flight in the whole daemon."""
        return bool(self._careful)

    def is_careful(self, tp: TopicPartition) -> bool:
        return tp in self._careful

    def admit(self, tp: TopicPartition, offset: int) -> str | None:
        """Called right before message `offset` of a careful partition starts, alone. Returns
        why it must be dead-lettered instead, or None after recording the attempt."""
        window = self._careful.get(tp)
        if window is None:
            return None
        stored = window.stored
        attempts = stored.attempts if stored is not None and stored.offset == offset else 0
        if self.after_crashes and attempts >= self.after_crashes:
            window.stored = None
            return (f"the daemon died {attempts} times while this message was the only one in "
                    f"flight (kafka.poison_after_crashes={self.after_crashes})")
        log.info("%s/%d@%d runs alone in flight (attempt %d)", tp.topic, tp.partition, offset,
                 attempts + 1)
        self._write(tp, PartitionState(offset, attempts + 1, clean=False), wait=True)
        return None

    def progress(self, tp: TopicPartition, commit_point: int | None) -> None:
        """The commit point moved; leave careful mode once it passed the window."""
        window = self._careful.get(tp)
        if window is None or commit_point is None or commit_point < window.end:
            return
        del self._careful[tp]
        log.info("%s/%d: back to normal processing at offset %d", tp.topic, tp.partition,
                 commit_point)
        self._write(tp, PartitionState(commit_point, 0, clean=False), wait=True)

    def _write(self, tp: TopicPartition, state: PartitionState, wait: bool) -> None:
        try:
            self.store.write(tp, state, wait)
        except Exception as exc:  # advisory, see the module docstring
            log.warning("poison quarantine: cannot record %s for %s/%d (%s: %s)", state,
                        tp.topic, tp.partition, type(exc).__name__, exc)
