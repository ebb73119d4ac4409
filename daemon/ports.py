"""The narrow interfaces between the pipeline and the things it drives.

The runner and the pipeline see their source, encoder, sink and dead-letter producer only
through these Protocols, so each stage can be read, tested and replaced alone: a second storage
engine, a fake source in a unit test, or a completion policy such as `avindex reindex` plug in
without touching the loop. The concrete adapters live in `source.py` (Kafka), `encoder.py`
(ONNX Runtime), `sink.py` (Qdrant) and `deadletter.py` (the dead-letter topic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from kafka import TopicPartition
from kafka.errors import KafkaError

from avindex.daemon.messages import Record
from avindex.daemon.offsets import OffsetTracker

__all__ = [
    "AliasedCollection",
    "AssignHook",
    "CommitOutcome",
    "CompletionPolicy",
    "DeadLetters",
    "Embedder",
    "Embeddings",
    "Point",
    "RevokeHook",
    "Sink",
    "Source",
    "TopicPartition",
]

RevokeHook = Callable[[list[TopicPartition]], dict[TopicPartition, int]]
AssignHook = Callable[[list[TopicPartition]], None]
CommitOutcome = Callable[[dict[TopicPartition, int], KafkaError | None], None]


@dataclass
class Embeddings:
    """Per item: the embedding (the VAE mean) and its variance, both float32 [n, dim]."""

    embedding: np.ndarray
    variance: np.ndarray


@dataclass
class Point:
    """One media item as the sink stores it: named vectors plus payload."""

    media_id: str
    vectors: dict[str, list[float]]
    payload: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    """A consumer-group member that the runner polls, pauses and commits (one thread only)."""

    def connect(self, on_revoked: RevokeHook, on_assigned: AssignHook,
                on_revoke_commit: CommitOutcome) -> None: ...

    def bootstrap(self, timeout_s: float) -> None: ...

    def poll(self, timeout_s: float, max_records: int) -> list[Record]: ...

    def assignment(self) -> set[TopicPartition]: ...

    def paused(self) -> set[TopicPartition]: ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None: ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None: ...

    def commit(self, offsets: dict[TopicPartition, int]) -> None: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def locate_unreadable(self, exc: BaseException) -> tuple[TopicPartition, int] | None:
        """The record that made `poll()` raise `exc`, or None when it was not one record."""

    def highwater(self, tp: TopicPartition) -> int | None: ...

    def committed(self, tp: TopicPartition) -> int | None: ...

    def position(self, tp: TopicPartition) -> int | None: ...

    def connected(self) -> bool: ...

    def close(self) -> None: ...


class Embedder(Protocol):
    """Embeds batches of one modality; `max_input` is the largest item (warm-up, probes)."""

    @property
    def modalities(self) -> list[str]: ...

    def embed(self, modality: str, items: Sequence[np.ndarray]) -> Embeddings: ...

    def max_input(self, modality: str) -> np.ndarray: ...


class Sink(Protocol):
    """Writes and deletes points (each returns once the store applied it), makes what it wrote
    durable on `flush` (called before offsets are committed), and tells a refusal of the data
    (`is_invalid`: dead-letter the point) from everything else (an outage: retry).
    `flush_interval_s`: how often a flush is worth its cost; commits wait for one."""

    flush_interval_s: float

    def write_batch(self, points: Sequence[Point]) -> None: ...

    def delete(self, media_ids: Sequence[str]) -> None: ...

    def flush(self) -> None: ...

    def is_invalid(self, exc: BaseException) -> bool: ...

    def failure_reason(self, exc: BaseException) -> str: ...


class DeadLetters(Protocol):
    """Keeps an item that cannot be indexed, with the reason; raises when not accepted."""

    def send(self, record: Record, *, reason: str, stage: str, message: str,
             exception: str) -> None: ...


class AliasedCollection(Protocol):
    """The collection a daemon writes and the alias applications query."""

    collection: str
    alias: str

    def switch_alias(self) -> None: ...


class CompletionPolicy(Protocol):
    """Decides when a daemon's run is complete, and what completing means.

    `avindex run` has none (it runs until a signal); `avindex reindex` passes one that records
    the end offsets before consuming, stops once the group caught up and then switches the alias.
    """

    def prepare(self, source: Source, tracker: OffsetTracker,
                collection: AliasedCollection) -> None:
        """Kafka and storage are reachable, nothing consumed yet: the moment to set targets."""

    def done(self) -> bool:
        """Asked after every turn of the main loop; True ends it like a graceful stop."""

    def finish(self, code: int, caught_up: bool) -> int:
        """The runner stopped and committed (storage still open); returns the exit code.
        `caught_up` is True when the loop ended because `done()` said so."""
