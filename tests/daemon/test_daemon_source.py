"""The Kafka source against the real broker: pausing and resuming never strands messages.

kafka-python 3.0.x parks fetched records of a paused partition and restores them only while its
in-line slot is empty (`None`); an exhausted batch left in that slot kept them parked for ever,
and the consumer stopped fetching with messages left (found by the end-to-end benchmark: the
daemon stopped at 1,851 of 2,000 messages). The daemon's back-pressure pauses and resumes
partitions all the time, so this is checked here with the real client and broker.
"""

from __future__ import annotations

import time

from daemon_harness import SESSION_MS, produce

from avindex.daemon.settings import KafkaSettings
from avindex.daemon.source import KafkaSource, TopicPartition


def test_pause_resume_churn_consumes_every_message(broker, names):
    topic, total = names["topic"], 800
    broker.create_topic(topic, 2)
    ends = produce(broker.bootstrap, topic,
                   [(f"k{i}".encode(), b"x" * 200, []) for i in range(total)])
    assert sum(ends.values()) == total and len(ends) == 2
    s = KafkaSettings(bootstrap_servers=[broker.bootstrap], topics=[topic],
                      group_id=names["group"], session_timeout_ms=SESSION_MS,
                      heartbeat_interval_ms=1000, max_poll_interval_ms=20000)
    source = KafkaSource(s)
    source.connect(lambda revoked: {}, lambda assigned: None, lambda offsets, error: None)
    seen: dict[int, set[int]] = {0: set(), 1: set()}
    deadline = time.monotonic() + 90
    turn = 0
    try:
        while sum(map(len, seen.values())) < total and time.monotonic() < deadline:
            turn += 1
            # back-pressure as the runner does it: one partition paused every other turn
            victim = TopicPartition(topic, turn % 2)
            if turn % 3 == 0 and victim in source.assignment():
                source.pause([victim])
            else:
                source.resume(source.paused())
            for r in source.poll(0.05, max_records=7):
                seen[r.partition].add(r.offset)
    finally:
        source.close()
    assert seen == {p: set(range(end)) for p, end in ends.items()}
