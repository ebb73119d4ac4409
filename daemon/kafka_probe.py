"""Group-less reads of topics: where each partition ends, and a small topic read to its end.

Used where the daemon needs a topic's state without joining a consumer group: `avindex reindex`
records the end offsets it must reach, and the poison quarantine reads its state topic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord

from avindex.daemon.kafka_config import client_config
from avindex.daemon.ports import TopicPartition
from avindex.daemon.settings import KafkaSettings

__all__ = ["TopicMissingError", "end_offsets", "read_to_end"]


class TopicMissingError(LookupError):
    """A topic the daemon was told to use does not exist."""


def _consumer(kafka: KafkaSettings) -> KafkaConsumer:
    return KafkaConsumer(**client_config(kafka), group_id=None, enable_auto_commit=False,
                         max_partition_fetch_bytes=max(kafka.max_message_bytes + 65536, 1048576))


def _partitions(consumer: KafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    out = []
    for topic in topics:
        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise TopicMissingError(f"kafka topic {topic!r} does not exist")
        out += [TopicPartition(topic, p) for p in sorted(numbers)]
    return out


def _ends(consumer: KafkaConsumer, partitions: list[TopicPartition],
          timeout_s: float) -> dict[TopicPartition, int]:
    """ListOffsets(latest) is not trusted alone: Tansu answers it with the offset after the last
    batch's *first* record. Every fetch response carries the partition's high watermark, so the
    consumer fetches once from the listed offset and the larger of the two is the end offset.
    Against Kafka the listed offset is the end, and that fetch returns nothing but the
    watermark."""
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


def end_offsets(kafka: KafkaSettings, topics: Iterable[str] | None = None,
                timeout_s: float = 30.0) -> dict[TopicPartition, int]:
    """The end offset (high watermark) of every partition of `topics` (default
    `kafka.topics`), right now."""
    consumer = _consumer(kafka)
    try:
        consumer.bootstrap(timeout_ms=int(timeout_s * 1000))
        partitions = _partitions(consumer, kafka.topics if topics is None else topics)
        return _ends(consumer, partitions, timeout_s)
    finally:
        consumer.close(autocommit=False)


def read_to_end(kafka: KafkaSettings, topic: str, timeout_s: float = 30.0
                ) -> list[ConsumerRecord]:
    """Every record of a (small) topic from its start to its end as of now."""
    consumer = _consumer(kafka)
    try:
        consumer.bootstrap(timeout_ms=int(timeout_s * 1000))
        partitions = _partitions(consumer, [topic])
        ends = _ends(consumer, partitions, timeout_s)
        consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} to its end took over {timeout_s}s")
            for batch in consumer.poll(timeout_ms=200).values():
                records += batch
        return records
    finally:
        consumer.close(autocommit=False)
