"""The dead-letter topic: items that cannot be indexed, kept with the reason.

A dead letter is the original key, value and headers plus `avindex.*` headers saying what went
wrong (reason code, stage, message, exception class), where the message came from (topic,
partition, offset, timestamp) and when. A message counts as handled only after the broker
acknowledged its dead letter (acks=all); the runner retries failed attempts.
"""

from __future__ import annotations

import datetime as dt
import logging

from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from avindex.daemon.kafka_config import client_config
from avindex.daemon.messages import Record
from avindex.daemon.settings import KafkaSettings

__all__ = ["DeadLetterProducer", "dead_letter_headers"]

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 2000
HEADER_PREFIX = "avindex."


def dead_letter_headers(record: Record, *, reason: str, stage: str, message: str,
                        exception: str, now: dt.datetime | None = None,
                        value_dropped: str | None = None) -> list[tuple[str, bytes]]:
    """The original headers (ours from an earlier attempt removed) plus the error headers."""
    now = now or dt.datetime.now(dt.UTC)
    ours = {
        "avindex.error.reason": reason,
        "avindex.error.stage": stage,
        "avindex.error.message": message[:MAX_MESSAGE_CHARS],
        "avindex.error.exception": exception,
        "avindex.error.time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "avindex.source.topic": record.topic,
        "avindex.source.partition": str(record.partition),
        "avindex.source.offset": str(record.offset),
    }
    if record.timestamp_ms is not None:
        ours["avindex.source.timestamp_ms"] = str(record.timestamp_ms)
    if value_dropped:
        ours["avindex.value.dropped"] = value_dropped
    kept = [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]
    return kept + [(k, v.encode("utf-8")) for k, v in ours.items()]


class DeadLetterProducer:
    """Writes dead letters synchronously; thread-safe (KafkaProducer is)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.topic = settings.dead_letter_topic
        self.timeout_s = settings.dead_letter_timeout_s
        self._producer = KafkaProducer(
            **client_config(settings),
            acks="all",
            max_request_size=settings.max_message_bytes + 65536,
            linger_ms=0,
        )

    def send(self, record: Record, *, reason: str, stage: str, message: str,
             exception: str) -> None:
        """One attempt; raises the client's error when the broker did not take it."""
        # A record the Kafka client could not read reaches us with neither key nor value: its
        # dead letter carries the coordinates, and its bytes stay in the source topic.
        unread = "unreadable_by_kafka_client" if record.key is record.value is None else None
        headers = dead_letter_headers(record, reason=reason, stage=stage, message=message,
                                      exception=exception, value_dropped=unread)
        try:
            self._send(record.key, record.value, headers)
        except MessageSizeTooLargeError:
            # The original was accepted by the source topic but not here: keep the evidence
            # (key, headers, reason) rather than blocking the partition forever.
            log.warning("dead letter for %s/%d@%d too large; dropping its value", record.topic,
                        record.partition, record.offset)
            headers = dead_letter_headers(record, reason=reason, stage=stage, message=message,
                                          exception=exception,
                                          value_dropped="too_large_for_dead_letter_topic")
            self._send(record.key, None, headers)

    def _send(self, key, value, headers) -> None:
        if key is None and value is None:  # Kafka needs one of them: an empty value then
            value = b""
        future = self._producer.send(self.topic, key=key, value=value, headers=headers)
        future.get(timeout=self.timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self._producer.close(timeout=timeout_s)
        except Exception:  # best effort at shutdown
            log.exception("closing the dead-letter producer failed")
