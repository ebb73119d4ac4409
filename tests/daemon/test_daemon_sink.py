"""Qdrant sink against qdrant-client local mode: bootstrap, refusal, alias, idempotent upserts."""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest
from daemon_harness import FAULTS
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from avindex.daemon.retry import Aborted, Backoff, retry
from avindex.daemon.sink import (
    MEDIA_NAMESPACE,
    CollectionMismatchError,
    Point,
    QdrantSink,
    failure_reason,
    is_transient,
    point_id,
)


def sink(client, version="v1", **kw) -> QdrantSink:
    return QdrantSink(client, model_version=version, embedding_dim=4, distance="Cosine",
                      modalities=["visual", "audio"], **kw)


def test_bootstrap_creates_named_vectors_and_alias():
    client = QdrantClient(location=":memory:")
    s = sink(client)
    s.connect()
    s.connect()  # idempotent
    vectors = client.get_collection("avindex-v1").config.params.vectors
    assert set(vectors) == {"visual", "audio"}
    assert vectors["audio"].size == 4 and vectors["audio"].distance == models.Distance.COSINE
    aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
    assert aliases == {"avindex": "avindex-v1"}


def test_alias_policies_for_a_new_model_version():
    client = QdrantClient(location=":memory:")
    sink(client, "v1").connect()
    sink(client, "v2").connect()  # if_missing: the old model keeps serving until re-indexed
    assert client.get_aliases().aliases[0].collection_name == "avindex-v1"
    sink(client, "v2", alias_policy="never").connect()
    assert client.get_aliases().aliases[0].collection_name == "avindex-v1"
    sink(client, "v2", alias_policy="always").connect()
    assert client.get_aliases().aliases[0].collection_name == "avindex-v2"


def test_mismatched_collection_is_refused_with_a_clear_error():
    client = QdrantClient(location=":memory:")
    client.create_collection("avindex-v1", vectors_config={
        "visual": models.VectorParams(size=4, distance=models.Distance.DOT),
        "audio": models.VectorParams(size=16, distance=models.Distance.COSINE)})
    with pytest.raises(CollectionMismatchError) as info:
        sink(client).connect()
    assert "'visual' is 4-d Dot" in str(info.value) and "'audio' is 16-d" in str(info.value)
    client.create_collection("avindex-v2", vectors_config=models.VectorParams(
        size=4, distance=models.Distance.COSINE))
    with pytest.raises(CollectionMismatchError, match="unnamed vector"):
        sink(client, "v2").connect()


def test_replay_overwrites_instead_of_duplicating():
    client = QdrantClient(location=":memory:")
    s = sink(client)
    s.connect()
    points = [Point(f"media-{i}", {"visual": [1, i, 0, 0], "audio": [0, 1, i, 0]},
                    {"media_id": f"media-{i}", "offset": i}) for i in range(5)]
    s.write_batch(points)
    s.write_batch(points[:3])  # redelivered after a crash
    s.write_batch([Point("media-9", {"audio": [1, 0, 0, 0]}, {"media_id": "media-9"})])  # sound
    assert client.count("avindex-v1").count == 6
    got = client.retrieve("avindex-v1", [point_id("media-9")], with_vectors=True)[0]
    assert set(got.vector) == {"audio"}
    assert point_id("media-1") == str(uuid.uuid5(MEDIA_NAMESPACE, "media-1"))


def test_transient_errors_are_told_apart_from_rejections():
    for make in FAULTS:
        assert is_transient(make()), make()
    assert not is_transient(UnexpectedResponse(400, "Bad Request", b"wrong dim", httpx.Headers()))
    assert not is_transient(ValueError("wrong vector size"))
    assert is_transient(UnexpectedResponse(429, "Too Many", b"", httpx.Headers()))
    assert [failure_reason(f()) for f in FAULTS] == [
        "timeout", "connection", "http_503", "http_500", "timeout"]
    assert failure_reason(ValueError("x")) == "rejected"


def test_retry_backs_off_and_stops_when_asked():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("slow")
        return "ok"

    delays = []
    stop = threading.Event()
    assert retry(flaky, is_transient=is_transient, backoff=Backoff(0.01, 0.02, jitter=0),
                 stop=stop, on_failure=lambda e, a, d: delays.append(d)) == "ok"
    assert delays == [0.01, 0.02]  # doubled, then capped
    with pytest.raises(ValueError):
        retry(lambda: (_ for _ in ()).throw(ValueError("no")), is_transient=is_transient,
              backoff=Backoff(0.01, 0.02), stop=stop)
    stop.set()
    with pytest.raises(Aborted):
        retry(flaky, is_transient=is_transient, backoff=Backoff(10, 10), stop=stop)
