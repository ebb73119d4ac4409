"""Work around a kafka-python 3.0.x stall after pause/resume (used by the benchmarks only).

`Fetcher.fetched_records` restores records parked while their partition was paused only when
`_next_partition_records is None`; an exhausted (empty, falsy) PartitionRecords left in that
slot blocks the restore for ever, and `_fetchable_partitions` skips both partitions, so the
consumer stops fetching with messages left (reproduced: the daemon stopped at 1,851 of 2,000
messages with partition 1 at offset 852 of 1,001, not paused, nothing in flight). Clearing the
empty slot before each call lets the parked records come back. The daemon itself does not
carry this yet: see docs/benchmarks.md.
"""

from __future__ import annotations

from kafka.consumer.fetcher import Fetcher

_original = Fetcher.fetched_records


def _fetched_records(self, *args, **kwargs):
    current = self._next_partition_records
    if current is not None and not current:
        self._next_partition_records = None
    return _original(self, *args, **kwargs)


def apply() -> None:
    Fetcher.fetched_records = _fetched_records
