"""Small Kafka chores shared by the demo, the tests and the benchmarks: ports, readiness, topics."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

__all__ = ["create_topics", "free_port", "kafka_answers", "port_free"]


def free_port() -> int:
    """A loopback port nobody listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether a loopback port can be bound now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def kafka_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """The broker at `bootstrap` answers a metadata request."""
    try:
        KafkaAdminClient(bootstrap_servers=bootstrap,
                         request_timeout_ms=int(timeout_s * 1000)).close()
        return True
    except (KafkaError, OSError):
        return False


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 1, *,
                  exist_ok: bool = False) -> None:
    """Create topics with `partitions` partitions (replication 1); with `exist_ok`, topics that
    already exist are left as they are."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        for name in names:
            try:
                admin.create_topics([NewTopic(name, partitions, 1)])
            except TopicAlreadyExistsError:
                if not exist_ok:
                    raise
    finally:
        admin.close()
