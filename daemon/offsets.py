"""Per-partition offset checkpoints: commit only below the first unfinished message.

Messages of one partition finish out of order (decoding takes longer for some, a batch may hold
items from many partitions). Kafka's committed offset means "everything below this is done", so
the commit point of a partition is the offset of its first unfinished message, or one past the
last message when all are finished. Offsets need not be contiguous (compaction, transaction
markers), so the tracker remembers the offsets it was given rather than assuming +1 steps.

Pure logic, owned by the runner's thread. A partition that is revoked and later re-assigned gets a
new epoch, so a late acknowledgement for the old assignment cannot move the new one's checkpoint.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["OffsetTracker", "PartitionCheckpoint", "Token"]


class PartitionCheckpoint:
    """Offsets of one partition, in the order they were received."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._received: deque[int] = deque()  # received and not yet below the commit point
        self._unfinished: set[int] = set()
        self._next: int | None = None  # commit point reached so far (offset of next message)
        self.committed: int | None = None  # last commit point sent to the broker

    def track(self, offset: int) -> None:
        if self._received:
            last = self._received[-1]
        else:
            last = self._next - 1 if self._next is not None else -1
        if offset <= last:
            raise ValueError(f"offset {offset} received after {last}: offsets must increase")
        self._received.append(offset)
        self._unfinished.add(offset)

    def finish(self, offset: int) -> None:
        if offset not in self._unfinished:
            raise ValueError(f"offset {offset} finished twice or never tracked")
        self._unfinished.remove(offset)
        while self._received and self._received[0] not in self._unfinished:
            self._next = self._received.popleft() + 1

    @property
    def in_flight(self) -> int:
        """Messages received and not finished."""
        return len(self._unfinished)

    @property
    def commit_point(self) -> int | None:
        """The offset to commit (first unfinished), or None when nothing finished yet."""
        return self._next


@dataclass(frozen=True)
class Token:
    """Identifies one tracked message; handed back to `OffsetTracker.finish`."""

    partition: Hashable
    epoch: int
    offset: int


class OffsetTracker:
    """Checkpoints for every assigned partition."""

    def __init__(self) -> None:
        self._partitions: dict[Hashable, PartitionCheckpoint] = {}
        self._epoch = 0

    def assign(self, partition: Hashable) -> None:
        """Start a fresh checkpoint (a new epoch) for a newly assigned partition."""
        self._epoch += 1
        self._partitions[partition] = PartitionCheckpoint(self._epoch)

    def revoke(self, partition: Hashable) -> int:
        """Forget a partition; returns how many of its messages were still in flight."""
        cp = self._partitions.pop(partition, None)
        return cp.in_flight if cp else 0

    def track(self, partition: Hashable, offset: int) -> Token:
        cp = self._partitions.get(partition)
        if cp is None:
            self.assign(partition)
            cp = self._partitions[partition]
        cp.track(offset)
        return Token(partition, cp.epoch, offset)

    def finish(self, token: Token) -> bool:
        """Mark a message finished; False when it belongs to a revoked assignment (ignored)."""
        cp = self._partitions.get(token.partition)
        if cp is None or cp.epoch != token.epoch:
            return False
        cp.finish(token.offset)
        return True

    def in_flight(self, partition: Hashable | None = None) -> int:
        if partition is not None:
            cp = self._partitions.get(partition)
            return cp.in_flight if cp else 0
        return sum(cp.in_flight for cp in self._partitions.values())

    def to_commit(self, partitions=None) -> dict[Hashable, int]:
        """Commit points that moved since the last `mark_committed` (optionally for some only)."""
        out = {}
        for partition, cp in self._partitions.items():
            if partitions is not None and partition not in partitions:
                continue
            point = cp.commit_point
            if point is not None and point != cp.committed:
                out[partition] = point
        return out

    def mark_committed(self, offsets: dict[Hashable, int]) -> None:
        for partition, offset in offsets.items():
            cp = self._partitions.get(partition)
            if cp is not None:
                cp.committed = offset

    def committed(self, partition: Hashable) -> int | None:
        cp = self._partitions.get(partition)
        return cp.committed if cp else None
