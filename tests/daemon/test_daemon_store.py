"""Both vector-store engines through the one interface: Qdrant Edge (real, in a temporary
folder) and the server engine over qdrant-client's local mode (no Qdrant server runs here).

The same checks run on both: collections, payload indexes, writes, reads, Qdrant's filter
language (must/should/must_not, match value/any/except, ranges on numbers and datetimes),
aliases, and which errors blame the points (dead-letter) versus which are outages (retry).
"""

from __future__ import annotations

import json
import os
import threading

import grpc
import httpx
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from avindex.daemon.ports import Point
from avindex.daemon.store import (
    CollectionMismatchError,
    CollectionSpec,
    StoreBusyError,
    point_id,
    resolve,
)
from avindex.daemon.store_edge import EdgeStore
from avindex.daemon.store_server import ServerStore

SPEC = CollectionSpec(vectors=("visual", "audio"), dim=4, distance="Cosine",
                      payload_indexes={"metadata.language": "keyword",
                                       "metadata.recorded_at": "datetime"})


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    s = EdgeStore(tmp_path / "edge") if request.param == "edge" else \
        ServerStore(QdrantClient(location=":memory:"))
    yield s
    s.close()


def points(n: int = 12) -> list[Point]:
    out = []
    for i in range(n):
        out.append(Point(f"m{i}", {"visual": [1.0, i, 0.5, 0.0], "audio": [0.0, 1.0, i, 0.5]},
                         {"media_id": f"m{i}", "n": i,
                          "indexed_at": f"2026-12-{1 + i % 3:02d}T10:00:00.000Z",
                          "metadata": {"language": ["en", "fr", "es"][i % 3],
                                       "recorded_at": f"2025-0{1 + i % 9}-15T00:00:00Z"}}))
    return out


def ids(found) -> set[str]:
    return {p.payload["media_id"] for p in found}


def test_collection_bootstrap_is_idempotent_and_refuses_a_mismatch(store):
    assert store.ensure_collection("c-v1", SPEC) is True
    assert store.ensure_collection("c-v1", SPEC) is False
    assert "c-v1" in store.collections()
    with pytest.raises(CollectionMismatchError, match="8-d"):
        store.ensure_collection("c-v1", CollectionSpec(("visual", "audio"), 8, "Cosine"))
    with pytest.raises(CollectionMismatchError, match="no vector named 'text'"):
        store.ensure_collection("c-v1", CollectionSpec(("text",), 4, "Cosine"))


def test_configured_payload_indexes_are_created_on_edge(tmp_path):
    store = EdgeStore(tmp_path / "edge")
    store.ensure_collection("c", SPEC)
    schema = store._shard("c").info().payload_schema
    assert str(schema["metadata.language"].data_type).endswith("Keyword")
    assert str(schema["metadata.recorded_at"].data_type).endswith("Datetime")
    assert str(schema["indexed_at"].data_type).endswith("Datetime")
    store.close()
    # an index configured later is added to the existing collection
    store = EdgeStore(tmp_path / "edge")
    store.ensure_collection("c", CollectionSpec(("visual", "audio"), 4, "Cosine",
                                                {"metadata.speaker": "keyword"}))
    assert "metadata.speaker" in store._shard("c").info().payload_schema
    store.close()


def test_configured_payload_indexes_are_created_on_a_server():
    calls = []

    class Spy(QdrantClient):
        def create_payload_index(self, collection_name, field_name, field_schema=None, **kw):
            calls.append((field_name, field_schema))
            return super().create_payload_index(collection_name, field_name,
                                                field_schema=field_schema, **kw)

    store = ServerStore(Spy(location=":memory:"))
    store.ensure_collection("c", SPEC)
    assert ("metadata.language", models.PayloadSchemaType.KEYWORD) in calls
    assert ("metadata.recorded_at", models.PayloadSchemaType.DATETIME) in calls
    assert ("media_id", models.PayloadSchemaType.KEYWORD) in calls


def test_writes_reads_and_deletes(store):
    store.ensure_collection("c", SPEC)
    store.upsert("c", points())
    store.upsert("c", points()[:4])  # a replay overwrites
    assert store.count("c") == 12
    got = store.retrieve("c", [point_id("m3")], vectors=["audio"], payload=["media_id"])
    assert got[0].payload == {"media_id": "m3"} and set(got[0].vectors) == {"audio"}
    assert got[0].id == point_id("m3")
    assert store.retrieve("c", [point_id("nobody")]) == []
    store.delete("c", ["m3", "m4", "never-indexed"])
    store.flush()
    assert store.count("c") == 10 and store.retrieve("c", [point_id("m3")]) == []
    seen, offset = [], None
    while True:
        page, offset = store.scroll("c", limit=4, offset=offset)
        seen += page
        if offset is None:
            break
    assert len(seen) == 10 and len({p.id for p in seen}) == 10


def test_query_ranks_by_cosine_with_pages(store):
    store.ensure_collection("c", SPEC)
    store.upsert("c", points())
    top = store.query("c", [1.0, 5.0, 0.5, 0.0], using="visual", limit=3)
    assert top[0].payload["media_id"] == "m5"
    assert top[0].score >= top[1].score >= top[2].score
    second = store.query("c", [1.0, 5.0, 0.5, 0.0], using="visual", limit=3, offset=3)
    assert not ids(top) & ids(second)
    only_id = store.query("c", [1.0, 5.0, 0.5, 0.0], using="visual", limit=1,
                          payload=["media_id"])
    assert only_id[0].payload == {"media_id": "m5"}


FILTERS = {
    "match value": (models.Filter(must=[models.FieldCondition(
        key="metadata.language", match=models.MatchValue(value="fr"))]),
        {"m1", "m4", "m7", "m10"}),
    "match any": (models.Filter(must=[models.FieldCondition(
        key="metadata.language", match=models.MatchAny(any=["fr", "es"]))]),
        {f"m{i}" for i in range(12) if i % 3}),
    "match except": (models.Filter(must=[models.FieldCondition(
        key="metadata.language", match=models.MatchExcept(**{"except": ["en", "fr"]}))]),
        {"m2", "m5", "m8", "m11"}),
    "number range": (models.Filter(must=[models.FieldCondition(
        key="n", range=models.Range(gte=3, lt=6))]), {"m3", "m4", "m5"}),
    "datetime range": (models.Filter(must=[models.FieldCondition(
        key="indexed_at", range=models.DatetimeRange(gte="2026-12-03T00:00:00Z"))]),
        {"m2", "m5", "m8", "m11"}),
    "datetime range on metadata": (models.Filter(must=[models.FieldCondition(
        key="metadata.recorded_at", range=models.DatetimeRange(lt="2025-03-01T00:00:00Z"))]),
        {"m0", "m1", "m9", "m10"}),
    "must_not": (models.Filter(must_not=[models.FieldCondition(
        key="metadata.language", match=models.MatchValue(value="en"))], must=[
        models.FieldCondition(key="n", range=models.Range(lte=5))]),
        {"m1", "m2", "m4", "m5"}),
    "should": (models.Filter(should=[
        models.FieldCondition(key="n", match=models.MatchValue(value=0)),
        models.FieldCondition(key="media_id", match=models.MatchValue(value="m11"))]),
        {"m0", "m11"}),
    "nested bool": (models.Filter(must=[models.Filter(should=[
        models.FieldCondition(key="n", range=models.Range(gt=9)),
        models.FieldCondition(key="n", range=models.Range(lt=1))])], must_not=[
        models.HasIdCondition(has_id=[point_id("m11")])]), {"m0", "m10"}),
}


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_qdrant_filter_language_on_both_engines(store, name):
    query_filter, expected = FILTERS[name]
    store.ensure_collection("c", SPEC)
    store.upsert("c", points())
    found = store.query("c", [1.0, 1.0, 1.0, 1.0], using="audio", limit=20,
                        filter=query_filter)
    assert ids(found) == expected
    assert store.count("c", query_filter) == len(expected)


def test_edge_refuses_what_it_cannot_express(tmp_path):
    store = EdgeStore(tmp_path / "edge")
    store.ensure_collection("c", SPEC)
    geo = models.Filter(must=[models.FieldCondition(key="where", geo_radius=models.GeoRadius(
        center=models.GeoPoint(lon=0, lat=0), radius=10))])
    with pytest.raises(ValueError, match="geo"):
        store.query("c", [1, 0, 0, 0], using="audio", limit=1, filter=geo)
    store.close()


def test_aliases_switch_atomically(store):
    store.ensure_collection("c-v1", SPEC)
    store.ensure_collection("c-v2", SPEC)
    assert store.aliases() == {}
    store.switch_alias("live", "c-v1")
    store.switch_alias("other", "c-v1")
    store.switch_alias("live", "c-v2")
    assert store.aliases() == {"live": "c-v2", "other": "c-v1"}
    assert resolve(store, "live") == "c-v2" and resolve(store, "c-v1") == "c-v1"
    assert resolve(store, "missing") is None


def test_edge_alias_file_is_replaced_whole_and_shared_between_processes(tmp_path):
    root = tmp_path / "edge"
    a = EdgeStore(root)
    a.ensure_collection("c-v1", SPEC)
    a.ensure_collection("c-v2", SPEC)
    a.switch_alias("live", "c-v1")
    before = (root / "aliases.json").stat().st_ino
    # a concurrent writer of another alias through another handle (as `avindex reindex` does)
    b = EdgeStore(root)
    threads = [threading.Thread(target=b.switch_alias, args=(f"x{i}", "c-v2"))
               for i in range(8)]
    for t in threads:
        t.start()
    a.switch_alias("live", "c-v2")
    for t in threads:
        t.join()
    table = json.loads((root / "aliases.json").read_text())
    assert table["live"] == "c-v2" and all(table[f"x{i}"] == "c-v2" for i in range(8))
    assert (root / "aliases.json").stat().st_ino != before  # renamed over, not rewritten
    assert not [p for p in os.listdir(root) if p.startswith(".aliases.json.")]
    with pytest.raises(KeyError):
        a.switch_alias("live", "c-v9")
    a.close()
    b.close()


def test_edge_is_one_process_per_folder_and_reopens_what_it_wrote(tmp_path):
    root = tmp_path / "edge"
    a = EdgeStore(root)
    a.ensure_collection("c", SPEC)
    a.upsert("c", points())
    b = EdgeStore(root)
    with pytest.raises(StoreBusyError, match="another process"):
        b.count("c")
    a.close()
    assert b.count("c") == 12  # the lock went with the first handle
    b.close()


def test_edge_refuses_a_local_mode_folder(tmp_path):
    client = QdrantClient(path=str(tmp_path / "old"))
    client.create_collection("x", vectors_config=models.VectorParams(
        size=2, distance=models.Distance.COSINE))
    client.close()
    with pytest.raises(CollectionMismatchError, match="local-mode"):
        EdgeStore(tmp_path / "old")


# ------------------------------------------------------------------------------------ errors
def test_edge_tells_bad_points_from_its_own_failures(tmp_path):
    store = EdgeStore(tmp_path / "edge")
    store.ensure_collection("c", SPEC)
    bad = {
        "wrong size": Point("a", {"visual": [1.0, 2.0]}),
        "unknown vector": Point("b", {"text": [1.0, 0, 0, 0]}),
        "payload not JSON": Point("c", {"visual": [1.0, 0, 0, 0]}, {"x": object()}),
        "vector not numbers": Point("d", {"visual": ["a", "b", "c", "d"]}),
    }
    for name, point in bad.items():
        with pytest.raises(Exception) as info:
            store.upsert("c", [point])
        assert store.is_invalid(info.value), name
        assert store.failure_reason(info.value) == "invalid"
    shard = store._shard("c")
    shard.close()  # the engine itself fails now: an outage, not the data's fault
    with pytest.raises(Exception) as info:
        store.upsert("c", points()[:1])
    assert not store.is_invalid(info.value)
    assert store.failure_reason(info.value) == "edge_service"
    assert not store.is_invalid(OSError(28, "No space left on device"))
    assert store.failure_reason(OSError(28, "No space left on device")) == "os_error"


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def test_server_blames_points_only_for_validation_answers():
    store = ServerStore(QdrantClient(location=":memory:"))

    def http(status: int) -> UnexpectedResponse:
        return UnexpectedResponse(status, "x", b"", httpx.Headers())

    invalid = [http(400), http(422), _RpcError(grpc.StatusCode.INVALID_ARGUMENT)]
    outages = [http(401), http(403), http(404), http(409), http(429), http(500), http(502),
               http(503), _RpcError(grpc.StatusCode.UNAVAILABLE),
               _RpcError(grpc.StatusCode.INTERNAL), _RpcError(grpc.StatusCode.UNKNOWN),
               _RpcError(grpc.StatusCode.UNAUTHENTICATED), _RpcError(grpc.StatusCode.NOT_FOUND),
               _RpcError(grpc.StatusCode.CANCELLED), _RpcError(grpc.StatusCode.DEADLINE_EXCEEDED),
               ResponseHandlingException(httpx.ConnectError("refused")), TimeoutError("slow"),
               OSError(28, "No space left on device"), RuntimeError("anything else")]
    assert all(store.is_invalid(e) for e in invalid)
    assert not any(store.is_invalid(e) for e in outages)
    assert [store.failure_reason(e) for e in (http(503), outages[-4], outages[-3])] == [
        "http_503", "connection", "timeout"]
    assert store.failure_reason(_RpcError(grpc.StatusCode.UNAVAILABLE)) == "grpc_unavailable"
    # start-up: credentials and permissions end the daemon (exit 2); the rest is retried
    assert store.is_refusal(http(401)) and store.is_refusal(http(403))
    assert not store.is_refusal(http(503)) and not store.is_refusal(http(404))


def test_server_local_mode_refusals_count_as_invalid():
    store = ServerStore(QdrantClient(location=":memory:"))
    store.ensure_collection("c", SPEC)
    with pytest.raises(ValueError) as info:
        store.upsert("c", [Point("a", {"visual": [1.0, 2.0]})])
    assert store.is_invalid(info.value)
