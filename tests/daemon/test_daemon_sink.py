"""The sink over both engines (Qdrant Edge and the server engine on qdrant-client's local
mode): bootstrap, refusal, alias policies, idempotent upserts, deletes; and the retry loop."""

from __future__ import annotations

import threading
import uuid

import pytest
from qdrant_client import QdrantClient, models

from avindex.daemon.retry import Aborted, Backoff, retry
from avindex.daemon.sink import (
    MEDIA_NAMESPACE,
    CollectionMismatchError,
    Point,
    QdrantSink,
    point_id,
)
from avindex.daemon.store_edge import EdgeStore
from avindex.daemon.store_server import ServerStore


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    s = EdgeStore(tmp_path / "edge") if request.param == "edge" else \
        ServerStore(QdrantClient(location=":memory:"))
    yield s
    s.close()


def sink(store, version="v1", **kw) -> QdrantSink:
    return QdrantSink(store, model_version=version, embedding_dim=4, distance="Cosine",
                      modalities=["visual", "audio"], **kw)


def test_bootstrap_creates_named_vectors_and_alias(store):
    s = sink(store)
    s.connect()
    s.connect()  # idempotent
    assert store.collections() == ["avindex-v1"]
    assert store.aliases() == {"avindex": "avindex-v1"}
    with pytest.raises(CollectionMismatchError, match="8-d"):  # another model, same name
        QdrantSink(store, model_version="v1", embedding_dim=8, distance="Cosine",
                   modalities=["visual", "audio"]).connect()


def test_alias_policies_for_a_new_model_version(store):
    sink(store, "v1").connect()
    sink(store, "v2").connect()  # if_missing: the old model keeps serving until re-indexed
    assert store.aliases() == {"avindex": "avindex-v1"}
    sink(store, "v2", alias_policy="never").connect()
    assert store.aliases() == {"avindex": "avindex-v1"}
    sink(store, "v2", alias_policy="always").connect()
    assert store.aliases() == {"avindex": "avindex-v2"}
    sink(store, "v1", alias_policy="never").switch_alias()  # what `reindex --switch-alias` does
    assert store.aliases() == {"avindex": "avindex-v1"}


def test_mismatched_server_collection_is_refused_with_a_clear_error():
    client = QdrantClient(location=":memory:")
    client.create_collection("avindex-v1", vectors_config={
        "visual": models.VectorParams(size=4, distance=models.Distance.DOT),
        "audio": models.VectorParams(size=16, distance=models.Distance.COSINE)})
    with pytest.raises(CollectionMismatchError) as info:
        sink(ServerStore(client)).connect()
    assert "'visual' is 4-d Dot" in str(info.value) and "'audio' is 16-d" in str(info.value)
    client.create_collection("avindex-v2", vectors_config=models.VectorParams(
        size=4, distance=models.Distance.COSINE))
    with pytest.raises(CollectionMismatchError, match="unnamed vector"):
        sink(ServerStore(client), "v2").connect()


def test_replay_overwrites_and_tombstones_delete(store):
    s = sink(store)
    s.connect()
    points = [Point(f"media-{i}", {"visual": [1, i, 0, 0], "audio": [0, 1, i, 0]},
                    {"media_id": f"media-{i}", "offset": i}) for i in range(5)]
    s.write_batch(points)
    s.write_batch(points[:3])  # redelivered after a crash
    s.write_batch([Point("media-9", {"audio": [1, 0, 0, 0]}, {"media_id": "media-9"})])  # sound
    assert store.count(s.collection) == 6
    got = store.retrieve(s.collection, [point_id("media-9")], vectors=True)[0]
    assert set(got.vectors) == {"audio"}
    assert point_id("media-1") == str(uuid.uuid5(MEDIA_NAMESPACE, "media-1"))
    s.delete(["media-1", "media-9", "media-never"])
    s.flush()
    assert store.count(s.collection) == 4


def timeouts(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError)


def test_retry_backs_off_and_stops_when_asked():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("slow")
        return "ok"

    delays = []
    stop = threading.Event()
    assert retry(flaky, is_transient=timeouts, backoff=Backoff(0.01, 0.02, jitter=0),
                 stop=stop, on_failure=lambda e, a, d: delays.append(d)) == "ok"
    assert delays == [0.01, 0.02]  # doubled, then capped
    with pytest.raises(ValueError):
        retry(lambda: (_ for _ in ()).throw(ValueError("no")), is_transient=timeouts,
              backoff=Backoff(0.01, 0.02), stop=stop)
    stop.set()
    with pytest.raises(Aborted):
        retry(flaky, is_transient=timeouts, backoff=Backoff(10, 10), stop=stop)
