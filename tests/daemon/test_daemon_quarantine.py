"""The poison quarantine's bookkeeping (pure logic over a dict store; the Kafka state topic and
real crashes are covered in test_daemon_hardening.py)."""

from __future__ import annotations

from avindex.daemon.ports import TopicPartition
from avindex.daemon.quarantine import PartitionState, Quarantine

TP = TopicPartition("media", 0)
OTHER = TopicPartition("media", 1)


class DictStore:
    def __init__(self, states=None, failing: bool = False) -> None:
        self.states = dict(states or {})
        self.writes: list[tuple[TopicPartition, PartitionState, bool]] = []
        self.failing = failing

    def load(self):
        if self.failing:
            raise ConnectionError("broker gone")
        return dict(self.states)

    def write(self, tp, state, wait):
        if self.failing:
            raise ConnectionError("broker gone")
        self.writes.append((tp, state, wait))
        self.states[tp] = state


def restart(store: DictStore, start: int, after: int = 2, window: int = 5) -> Quarantine:
    q = Quarantine(store, after_crashes=after, window=window)
    q.refresh()
    q.assigned(TP, start)
    return q


def test_a_partition_let_go_of_cleanly_is_processed_normally():
    store = DictStore({TP: PartitionState(10, 0, clean=True)})
    q = restart(store, 10)
    assert not q.careful and q.admit(TP, 10) is None
    assert store.states[TP] == PartitionState(10, 0, clean=False)  # ours now, until let go
    q.revoked(TP, 14)
    assert store.states[TP] == PartitionState(14, 0, clean=True)
    assert store.writes[-1][2] is False  # a revoke does not wait for the broker


def test_after_an_unexplained_death_messages_run_alone_and_the_killer_is_named():
    store = DictStore()
    q = restart(store, 0)
    assert not q.careful
    # the daemon dies: nothing marks the partition clean
    q = restart(store, 3)  # it had committed up to 3
    assert q.careful and q.is_careful(TP) and not q.is_careful(OTHER)
    assert q.admit(TP, 3) is None  # alone in flight, attempt recorded first
    assert store.states[TP] == PartitionState(3, 1, clean=False)
    q.progress(TP, 4)
    assert q.admit(TP, 4) is None and store.states[TP] == PartitionState(4, 1, clean=False)
    # message 4 kills the daemon (twice: once more after this restart)
    q = restart(store, 4)
    assert q.admit(TP, 4) is None and store.states[TP].attempts == 2
    q = restart(store, 4)
    why = q.admit(TP, 4)
    assert why is not None and "died 2 times" in why
    assert q.admit(TP, 5) is None  # the next one runs (alone) as usual


def test_careful_mode_ends_after_its_window_and_the_partition_stays_marked_in_use():
    store = DictStore({TP: PartitionState(7, 0, clean=False)})
    q = restart(store, 7, window=3)
    assert q.careful
    q.progress(TP, 9)
    assert q.careful
    q.progress(TP, 10)
    assert not q.careful and store.states[TP] == PartitionState(10, 0, clean=False)


def test_a_stale_record_blames_nobody():
    """The record names a message below the commit point: it finished after all."""
    store = DictStore({TP: PartitionState(5, 9, clean=False)})
    q = restart(store, 8)
    assert q.careful and q.admit(TP, 8) is None and store.states[TP].attempts == 1


def test_quarantine_off_when_after_crashes_is_zero():
    store = DictStore({TP: PartitionState(5, 9, clean=False)})
    q = restart(store, 5, after=0)
    assert q.admit(TP, 5) is None


def test_a_state_store_that_fails_never_stops_indexing():
    store = DictStore(failing=True)
    q = restart(store, 0)
    assert not q.careful and q.admit(TP, 0) is None
    q.revoked(TP, 3)
    q.stopped({TP: 3})


def test_states_round_trip_and_foreign_bytes_are_ignored():
    state = PartitionState(12, 2, clean=False)
    assert PartitionState.from_bytes(state.to_bytes()) == state
    for junk in (None, b"", b"[]", b'{"offset": "x"}', b"\xff"):
        assert PartitionState.from_bytes(junk) is None
