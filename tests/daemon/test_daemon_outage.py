"""A failing vector store is an outage, never the messages' fault: every error class injected
in front of a real engine (Qdrant Edge; the server engine over qdrant-client's local mode),
against the real Tansu broker and a real daemon.

Only per-point validation errors (HTTP 400/422, gRPC INVALID_ARGUMENT, Edge's validation
errors) dead-letter a point. Everything else (HTTP 401/403/404/5xx, other gRPC codes, timeouts,
refused connections, Edge's service and storage errors, a full disk, a failing flush) is
retried with back-off while every partition is paused, readiness fails, liveness holds and
nothing is committed or dead-lettered; when it ends, everything is indexed exactly once.
"""

from __future__ import annotations

import json
import time

import grpc
import httpx
import pytest
from daemon_harness import (
    DaemonThread,
    FaultyStore,
    committed,
    header,
    produce,
    read_topic,
    settings_for,
    wait_for,
)
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from avindex.daemon.store_edge import EdgeStore
from avindex.daemon.store_server import ServerStore


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def _http(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status, "x", b"", httpx.Headers())


OUTAGES = {
    "edge": [
        lambda: Exception("Service runtime error: No space left on device (os error 28)"),
        lambda: OSError(28, "No space left on device"),
        lambda: Exception("Inconsistent storage: segment is missing"),
        lambda: Exception("Storage file not found: /x/segments/1/id_tracker"),
        lambda: Exception("Timeout error: waiting for the update lock"),
        lambda: Exception("Out of memory, free: 0, mmap failed"),
        lambda: Exception("Service runtime error: Shard is not initialized"),
    ],
    "server": [
        lambda: _http(401), lambda: _http(403), lambda: _http(404), lambda: _http(500),
        lambda: _http(503), lambda: _RpcError(grpc.StatusCode.UNAVAILABLE),
        lambda: _RpcError(grpc.StatusCode.INTERNAL), lambda: _RpcError(grpc.StatusCode.UNKNOWN),
        lambda: _RpcError(grpc.StatusCode.UNAUTHENTICATED),
        lambda: _RpcError(grpc.StatusCode.NOT_FOUND),
        lambda: _RpcError(grpc.StatusCode.CANCELLED),
        lambda: ResponseHandlingException(httpx.ConnectError("Connection refused")),
        lambda: TimeoutError("timed out"), lambda: OSError(28, "No space left on device"),
    ],
}
INVALID = {
    "edge": [lambda: Exception("Vector dimension error: expected dim: 8, got 3"),
             lambda: Exception("Validation failed: payload too deep")],
    "server": [lambda: _http(400), lambda: _http(422),
               lambda: _RpcError(grpc.StatusCode.INVALID_ARGUMENT)],
}


def envelope(i: int, path) -> tuple:
    media_id = f"clip-{i:03d}"
    body = {"id": media_id, "uri": path.as_uri()}
    return media_id.encode(), json.dumps(body).encode(), [("content-type", b"application/json")]


def engine(name: str, tmp_path):
    return FaultyStore(EdgeStore(tmp_path / "edge") if name == "edge"
                       else ServerStore(QdrantClient(location=":memory:")))


def ids(store, collection) -> list[str]:
    out, offset = [], None
    while True:
        page, offset = store.scroll(collection, limit=256, offset=offset)
        out += [p.payload["media_id"] for p in page]
        if offset is None:
            return out


class Probe:
    """Samples liveness and readiness while an outage lasts."""

    def __init__(self, daemon: DaemonThread) -> None:
        self.health = daemon.daemon.health
        self.alive: list[bool] = []
        self.ready: list[bool] = []

    def sample(self) -> None:
        self.alive.append(self.health.liveness()[0])
        self.ready.append(self.health.readiness()[0])


def outage(broker, daemon, store, group, topic, before, span_s: float, faults) -> Probe:
    """Inject `faults` (cycled) for `span_s` seconds while asserting nothing is committed."""
    probe = Probe(daemon)
    store.fault = lambda n: faults[(n - 1) % len(faults)]()
    started = time.monotonic()
    try:
        wait_for(lambda: store.injected >= len(faults), 30, what="every fault class injected")
        wait_for(lambda: daemon.metric("avindex_paused_partitions") > 0, 10,
                 what="partitions paused")
        while time.monotonic() - started < span_s:
            probe.sample()
            assert committed(broker.bootstrap, group, topic, 2) == before  # nothing committed
            time.sleep(min(5.0, span_s / 10))
    finally:
        store.fault = None
    return probe


@pytest.mark.parametrize("name", ["edge", "server"])
def test_every_error_class_is_an_outage_or_a_bad_point(broker, model_dir, clips, names,
                                                       tmp_path, name):
    topic, dlq, group = names["topic"], names["dlq"], names["group"]
    broker.create_topic(topic, 2)
    broker.create_topic(dlq, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=group, dlq=dlq,
                            media={"allowed_roots": [str(clips[0].parent)]},
                            kafka={"max_in_flight": 8, "max_in_flight_per_partition": 8,
                                   "max_poll_interval_ms": 8000},
                            pipeline={"retry_initial_s": 0.05, "retry_max_s": 0.3})
    store = engine(name, tmp_path)
    daemon = DaemonThread(settings, store).start()
    try:
        before = produce(broker.bootstrap, topic, [envelope(i, clips[i]) for i in range(6)])
        wait_for(lambda: committed(broker.bootstrap, group, topic, 2) == before, 60,
                 what="first wave committed")
        collection = daemon.daemon.sink.collection

        # outage: every class in turn, past the session timeout and max.poll.interval.ms
        ends = produce(broker.bootstrap, topic, [envelope(i, clips[i]) for i in range(6, 30)])
        probe = outage(broker, daemon, store, group, topic, before, 12.0, OUTAGES[name])
        assert all(probe.alive) and not any(probe.ready)
        wait_for(lambda: committed(broker.bootstrap, group, topic, 2) == ends, 60,
                 what="everything committed after the outage")
        assert sorted(ids(store, collection)) == [f"clip-{i:03d}" for i in range(30)]
        assert daemon.daemon.health.readiness()[0]
        assert daemon.metric("avindex_rebalances_total") == 0
        assert daemon.metric("avindex_messages_dead_lettered_total", stage="upsert",
                             reason="rejected") == 0
        reasons = {s.labels["reason"] for m in daemon.daemon.metrics.registry.collect()
                   if m.name == "avindex_failures" for s in m.samples
                   if s.labels.get("stage") in ("upsert", "flush") and s.value > 0}
        assert len(reasons) >= 3, reasons

        # bad points: only these messages are dead-lettered, their neighbours indexed
        bad = {"clip-031", "clip-033", "clip-035"}
        store.only = bad
        store.fault = lambda n: INVALID[name][(n - 1) % len(INVALID[name])]()
        ends = produce(broker.bootstrap, topic, [envelope(i, clips[i]) for i in range(30, 40)])
        wait_for(lambda: committed(broker.bootstrap, group, topic, 2) == ends, 60,
                 what="bad points dead-lettered, the rest committed")
        assert set(ids(store, collection)) == {f"clip-{i:03d}" for i in range(40)} - bad
    finally:
        store.fault = None
        assert daemon.stop() == 0
    letters = read_topic(broker.bootstrap, dlq, 1, expected=3)
    assert {r.key.decode() for r in letters} == bad
    assert {header(r, "avindex.error.reason") for r in letters} == {"rejected"}


@pytest.mark.slow
def test_an_outage_of_several_minutes_dead_letters_nothing_and_loses_nothing(
        broker, model_dir, clips, names, tmp_path):
    """Qdrant Edge failing for 4 real minutes (disk full, then its service errors) while
    producers keep sending; back-off short (0.5 s cap) so the daemon keeps trying."""
    topic, dlq, group = names["topic"], names["dlq"], names["group"]
    broker.create_topic(topic, 2)
    broker.create_topic(dlq, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=group, dlq=dlq,
                            media={"allowed_roots": [str(clips[0].parent)]},
                            kafka={"max_in_flight": 16, "max_in_flight_per_partition": 16},
                            pipeline={"retry_initial_s": 0.1, "retry_max_s": 0.5})
    store = engine("edge", tmp_path)
    daemon = DaemonThread(settings, store).start()
    try:
        before = produce(broker.bootstrap, topic, [envelope(i, clips[i]) for i in range(20)])
        wait_for(lambda: committed(broker.bootstrap, group, topic, 2) == before, 60,
                 what="first wave committed")
        produce(broker.bootstrap, topic, [envelope(i, clips[i]) for i in range(20, 60)])
        probe = outage(broker, daemon, store, group, topic, before, 240.0, OUTAGES["edge"])
        ends = produce(broker.bootstrap, topic, [envelope(i, clips[i]) for i in range(60, 100)])
        wait_for(lambda: committed(broker.bootstrap, group, topic, 2) == ends, 120,
                 what="everything committed after the outage")
        got = ids(store, daemon.daemon.sink.collection)
        assert sorted(got) == [f"clip-{i:03d}" for i in range(100)]  # none lost, none twice
        assert all(probe.alive) and not any(probe.ready) and len(probe.alive) >= 40
        assert daemon.metric("avindex_retries_total", stage="upsert") > 100
        assert daemon.metric("avindex_rebalances_total") == 0
    finally:
        store.fault = None
        assert daemon.stop() == 0
    assert read_topic(broker.bootstrap, dlq, 1, expected=0) == []
