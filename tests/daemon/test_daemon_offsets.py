"""The offset checkpoint commits only below the first unfinished message of each partition."""

from __future__ import annotations

import random

import pytest

from avindex.daemon.offsets import OffsetTracker, PartitionCheckpoint


def test_commit_point_is_first_unfinished_offset():
    cp = PartitionCheckpoint(epoch=1)
    for offset in (10, 11, 12, 13):
        cp.track(offset)
    assert cp.commit_point is None and cp.in_flight == 4
    cp.finish(12)
    assert cp.commit_point is None  # 10 and 11 still running
    cp.finish(10)
    assert cp.commit_point == 11
    cp.finish(11)
    assert cp.commit_point == 13 and cp.in_flight == 1
    cp.finish(13)
    assert cp.commit_point == 14 and cp.in_flight == 0


def test_gaps_in_offsets_are_respected():
    cp = PartitionCheckpoint(epoch=1)
    for offset in (5, 9, 20):  # compacted topic or transaction markers
        cp.track(offset)
    cp.finish(9)
    cp.finish(5)
    assert cp.commit_point == 10
    cp.finish(20)
    assert cp.commit_point == 21


def test_misuse_is_loud():
    cp = PartitionCheckpoint(epoch=1)
    cp.track(3)
    with pytest.raises(ValueError, match="must increase"):
        cp.track(3)
    cp.finish(3)
    with pytest.raises(ValueError, match="twice"):
        cp.finish(3)
    with pytest.raises(ValueError, match="must increase"):
        cp.track(2)


def test_random_completion_order_never_commits_unfinished_work():
    rng = random.Random(0)
    cp = PartitionCheckpoint(epoch=1)
    offsets = sorted(rng.sample(range(10_000), 500))
    for offset in offsets:
        cp.track(offset)
    order = offsets[:]
    rng.shuffle(order)
    finished: set[int] = set()
    for offset in order:
        cp.finish(offset)
        finished.add(offset)
        point = cp.commit_point
        if point is not None:
            assert all(o in finished for o in offsets if o < point)
            unfinished = [o for o in offsets if o not in finished]
            assert not unfinished or point <= unfinished[0]
    assert cp.commit_point == offsets[-1] + 1


def test_tracker_commits_moved_partitions_and_ignores_stale_epochs():
    t = OffsetTracker()
    a0 = [t.track("a", o) for o in range(3)]
    b0 = t.track("b", 7)
    assert t.in_flight() == 4 and t.in_flight("a") == 3
    t.finish(a0[0])
    t.finish(b0)
    assert t.to_commit() == {"a": 1, "b": 8}
    t.mark_committed({"a": 1, "b": 8})
    assert t.to_commit() == {}
    # "a" is revoked with two in flight, then re-assigned (redelivered from offset 1)
    assert t.revoke("a") == 2
    t.assign("a")
    fresh = t.track("a", 1)
    assert t.finish(a0[1]) is False  # a late ack from the old assignment changes nothing
    assert t.to_commit() == {}
    assert t.finish(fresh) is True
    assert t.to_commit() == {"a": 2}
    assert t.to_commit(partitions={"b"}) == {}
