"""Running real daemons in tests: in a thread (shared Qdrant client) or as a real process.

Everything here talks to the real Tansu broker and real Qdrant engines (Qdrant Edge in a
temporary folder, or the server engine over qdrant-client's local mode); the only stand-ins are
`FlakyClient` (injects server faults in front of the real client) and `FaultyStore` (injects
faults of any class in front of a real engine).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from avindex.daemon.app import Daemon
from avindex.daemon.settings import Settings
from avindex.daemon.store_server import ServerStore
from avindex.tools.processes import ChildProcess
from avindex.tools.scrape import http_get, metric_total

SESSION_MS = 6000  # Tansu waits about half of this on every group join


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2,
             what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def settings_for(model_dir: Path, bootstrap: str, topic: str, *, group: str, dlq: str,
                 edge: Path | None = None, **sections: dict[str, Any]) -> Settings:
    """Test settings: fast group joins, small batches, probes on a free port. The store is
    Qdrant Edge in `edge`, or (without it) the one the test injects into the daemon."""
    s = Settings()
    s.model.dir, s.model.max_batch = str(model_dir), 8
    k = s.kafka
    k.bootstrap_servers, k.topics, k.group_id = [bootstrap], [topic], group
    k.dead_letter_topic = dlq
    k.session_timeout_ms, k.heartbeat_interval_ms = SESSION_MS, 1000
    k.max_poll_interval_ms, k.commit_interval_s, k.revoke_drain_s = 20000, 0.2, 2.0
    if edge is not None:
        s.qdrant.path = str(edge)
        s.qdrant.flush_interval_s = 0.2  # commit as often as the tests' commit interval
    else:
        s.qdrant.url = "http://injected-store.invalid:6333"  # never contacted: see DaemonThread
    s.pipeline.retry_initial_s, s.pipeline.retry_max_s = 0.1, 1.0
    s.pipeline.shutdown_deadline_s = 10.0
    s.http.port, s.http.host = 0, "127.0.0.1"
    s.log.format = "text"
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(s, section), key, value)
    s.validate()
    return s


def settings_file(settings: Settings, path: Path) -> Path:
    """The settings as a YAML config file (for daemons run as processes), secrets included."""
    data = dataclasses.asdict(settings)
    for section in data.values():
        for key in [k for k, v in section.items() if v is None]:
            del section[key]
    path.write_text(yaml.safe_dump(data))
    return path


class DaemonThread:
    """A daemon running in a thread of the test process (signals are simulated)."""

    def __init__(self, settings: Settings, store: Any = None) -> None:
        """`store`: a VectorStore, or a qdrant-client client (the server engine), or None for
        the engine the settings name."""
        if store is not None and not hasattr(store, "ensure_collection"):
            store = ServerStore(store)
        self.daemon = Daemon(settings, store=store)
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.exit_code = self.daemon.run()

    def start(self, timeout: float = 30.0) -> DaemonThread:
        self._thread.start()
        wait_for(lambda: self.daemon.started.is_set() or not self._thread.is_alive(), timeout,
                 what="daemon start")
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        self.daemon.request_stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "daemon thread did not stop"
        return self.exit_code

    def metric(self, name: str, **labels: str) -> float:
        value = self.daemon.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0

    def assignment(self) -> set:
        return self.daemon.assignment()


class DaemonProcess(ChildProcess):
    """`avindex run --config FILE` as a real child process, stopped by its pid."""

    def __init__(self, config: Path, log_path: Path, http_port: int) -> None:
        self.http_port = http_port
        super().__init__("daemon", [sys.executable, "-m", "avindex.tools.cli", "run", "--config",
                                    str(config)], log_path,
                         env={k: v for k, v in os.environ.items() if not k.startswith("AVINDEX_")})

    def get(self, path: str) -> tuple[int, str]:
        status, body = http_get(f"http://127.0.0.1:{self.http_port}{path}", timeout_s=2)
        return status, body.decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples from /metrics (0 when unreachable)."""
        status, text = self.get("/metrics")
        return metric_total(text, name, **labels) if status == 200 else 0.0

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def log_records(self) -> list[dict]:
        out = []
        for line in self.log_lines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


# ----------------------------------------------------------------------------------- Kafka
def produce(bootstrap: str, topic: str, messages: list[tuple]) -> dict[int, int]:
    """Send (key, value, headers) tuples; returns the number of messages per partition."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
    try:
        futures = [producer.send(topic, key=k, value=v, headers=h or []) for k, v, h in messages]
        producer.flush(30)
        per_partition: dict[int, int] = {}
        for f in futures:
            md = f.get(timeout=30)
            per_partition[md.partition] = max(per_partition.get(md.partition, 0), md.offset + 1)
        return per_partition
    finally:
        producer.close(5)


def read_topic(bootstrap: str, topic: str, partitions: int, expected: int,
               timeout: float = 20.0, settle_s: float = 1.0) -> list:
    """Every record of a topic from the start: waits for `expected`, then `settle_s` more so
    that extra (unexpected) records show up too."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    records: list = []
    deadline = time.monotonic() + timeout
    settled_at = None
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if len(records) >= expected:
                settled_at = settled_at or time.monotonic() + settle_s
                if time.monotonic() >= settled_at:
                    break
        return records
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offsets, read without joining the group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


def header(record, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return value.decode()
    return None


# ---------------------------------------------------------------------------------- Qdrant
FAULTS: list[Callable[[], Exception]] = [
    lambda: ResponseHandlingException(httpx.ReadTimeout("timed out")),
    lambda: ResponseHandlingException(httpx.ConnectError("[Errno 111] Connection refused")),
    lambda: UnexpectedResponse(503, "Service Unavailable", b"overloaded", httpx.Headers()),
    lambda: UnexpectedResponse(500, "Internal Server Error", b"boom", httpx.Headers()),
    lambda: TimeoutError("timed out"),
]


class FlakyClient:
    """The real client, except that writes fail while `failing` is set (cycling FAULTS)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.failing = threading.Event()
        self.injected = 0

    def upsert(self, *args, **kwargs):
        if self.failing.is_set():
            fault = FAULTS[self.injected % len(FAULTS)]()
            self.injected += 1
            raise fault
        return self._client.upsert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class FaultyStore:
    """A real engine (any VectorStore) with faults injected into writes. While `fault` is set,
    upserts, deletes and flushes raise `fault(n)` (n counts the injected faults, so a test can
    cycle through several kinds); with `only`, just upserts that hold one of those media ids."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.fault: Callable[[int], BaseException] | None = None
        self.only: set[str] | None = None
        self.injected = 0

    def _maybe_fail(self, media_ids: Any = None) -> None:
        make = self.fault
        if make is None:
            return
        if self.only is not None and not (media_ids and self.only & set(media_ids)):
            return
        self.injected += 1
        raise make(self.injected)

    def upsert(self, collection, points):
        self._maybe_fail([p.media_id for p in points])
        return self._store.upsert(collection, points)

    def delete(self, collection, media_ids):
        self._maybe_fail()
        return self._store.delete(collection, media_ids)

    def flush(self):
        self._maybe_fail()
        return self._store.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
