"""Deletes by Kafka tombstone, re-indexing a compacted topic, and moving an Edge index to the
server engine, against the real Tansu broker and both real engines (Qdrant Edge; the server
engine over qdrant-client's local mode)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from daemon_harness import DaemonThread, committed, produce, read_topic, settings_for, wait_for
from daemon_helpers import build_model_dir
from qdrant_client import QdrantClient

from avindex.daemon.model_dir import load_model_dir
from avindex.daemon.reindex import reindex_daemon
from avindex.daemon.store import point_id
from avindex.daemon.store_edge import EdgeStore
from avindex.daemon.store_server import ServerStore


def envelope(media_id: str, path) -> tuple:
    body = {"id": media_id, "uri": path.as_uri(), "metadata": {"n": media_id}}
    return media_id.encode(), json.dumps(body).encode(), [("content-type", b"application/json")]


def tombstone(media_id: str) -> tuple:
    return media_id.encode(), None, []


def make_store(engine: str, tmp_path):
    return EdgeStore(tmp_path / "edge") if engine == "edge" else \
        ServerStore(QdrantClient(location=":memory:"))


def media_ids(store, collection) -> set[str]:
    out, offset = set(), None
    while True:
        page, offset = store.scroll(collection, limit=256, offset=offset)
        out |= {p.payload["media_id"] for p in page}
        if offset is None:
            return out


@pytest.mark.parametrize("engine", ["edge", "server"])
def test_tombstones_delete_points_and_win_over_an_upsert_in_flight(
        broker, model_dir, clips, names, tmp_path, engine):
    topic, dlq, group = names["topic"], names["dlq"], names["group"]
    broker.create_topic(topic, 2)
    broker.create_topic(dlq, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=group, dlq=dlq,
                            media={"allowed_roots": [str(clips[0].parent)]})
    store = make_store(engine, tmp_path)
    daemon = DaemonThread(settings, store).start()
    try:
        first = produce(broker.bootstrap, topic,
                        [envelope(f"clip-{i:03d}", clips[i]) for i in range(10)])
        wait_for(lambda: committed(broker.bootstrap, group, topic, 2) == first, 60,
                 what="first ten committed")
        collection = daemon.daemon.sink.collection
        assert store.count(collection) == 10
        # deletes of indexed items, of one never indexed, and an upsert followed at once by
        # its tombstone (same key, same partition: the delete must win)
        ends = produce(broker.bootstrap, topic, [
            tombstone("clip-002"), tombstone("clip-005"), tombstone("never-indexed"),
            envelope("clip-010", clips[10]), tombstone("clip-010"),
            tombstone("clip-011"), envelope("clip-011", clips[11])])  # re-created after
        wait_for(lambda: committed(broker.bootstrap, group, topic, 2) == ends, 60,
                 what="tombstones committed")
        assert media_ids(store, collection) == (
            {f"clip-{i:03d}" for i in range(10)} - {"clip-002", "clip-005"} | {"clip-011"})
        assert daemon.metric("avindex_messages_deleted_total", topic=topic) == 5
    finally:
        assert daemon.stop() == 0
    assert read_topic(broker.bootstrap, dlq, 1, expected=0) == []


def test_tombstones_can_go_to_the_dead_letter_topic(broker, model_dir, clips, names,
                                                    tmp_path):
    topic, dlq, group = names["topic"], names["dlq"], names["group"]
    broker.create_topic(topic, 1)
    broker.create_topic(dlq, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=group, dlq=dlq,
                            edge=tmp_path / "edge", kafka={"tombstones": "dead_letter"},
                            media={"allowed_roots": [str(clips[0].parent)]})
    daemon = DaemonThread(settings).start()  # the Edge folder named by the settings
    try:
        ends = produce(broker.bootstrap, topic, [envelope("clip-000", clips[0]),
                                                 tombstone("clip-000")])
        wait_for(lambda: committed(broker.bootstrap, group, topic, 1) == ends, 60,
                 what="both committed")
        assert daemon.daemon.sink.store.count(daemon.daemon.sink.collection) == 1
    finally:
        assert daemon.stop() == 0
    [letter] = read_topic(broker.bootstrap, dlq, 1, expected=1)
    headers = dict(letter.headers)
    assert letter.key == b"clip-000" and letter.value is None
    assert headers["avindex.error.reason"] == b"tombstone"


def run_reindex(settings, store, switch: bool = True) -> int:
    result: list[int] = []
    reindexer = reindex_daemon(settings, switch_alias=switch, store=store)
    thread = threading.Thread(target=lambda: result.append(reindexer.run()), daemon=True)
    thread.start()
    thread.join(180)
    assert not thread.is_alive(), "reindex did not finish"
    return result[0]


@pytest.mark.parametrize("engine", ["edge", "server"])
def test_reindex_of_a_compacted_topic_honours_deletes(broker, model_dir, clips, names,
                                                      tmp_path, engine):
    """The topic as log compaction leaves it: the latest value per key, and tombstones of
    deleted items until the broker drops them. clip-003 was deleted before compaction ran
    (its upsert and tombstone are both still there), clip-007's upsert was compacted away,
    clip-005 was re-sent (two values). The new model's collection holds exactly the live
    items, and the alias moves to it."""
    topic = names["topic"]
    broker.create_topic(topic, 3)
    log = [envelope(f"clip-{i:03d}", clips[i]) for i in range(12) if i != 7]
    log += [envelope("clip-005", clips[5]), tombstone("clip-003"), tombstone("clip-007")]
    produce(broker.bootstrap, topic, log)
    new_dir = build_model_dir(tmp_path / "next", seed=1)
    settings = settings_for(new_dir, broker.bootstrap, topic, group=names["group"],
                            dlq=names["dlq"], media={"allowed_roots": [str(clips[0].parent)]})
    store = make_store(engine, tmp_path)
    assert run_reindex(settings, store) == 0
    new = f"avindex-{load_model_dir(new_dir).model_version}"
    assert store.aliases() == {"avindex": new}
    assert media_ids(store, new) == {f"clip-{i:03d}" for i in range(12)} - {"clip-003",
                                                                             "clip-007"}
    store.close()


def test_an_edge_index_moves_to_a_server_by_reindexing_the_topic(
        broker, model_dir, clips, names, tmp_path):
    """Migration: a daemon on Qdrant Edge indexed the topic; `avindex reindex` with the same
    model against a server (here the server engine on local mode) in a new group rebuilds the
    same index: the same point ids, vectors and payloads, deletes included."""
    topic, dlq = names["topic"], names["dlq"]
    broker.create_topic(topic, 2)
    broker.create_topic(dlq, 1)
    media = {"allowed_roots": [str(clips[0].parent)]}
    ends = produce(broker.bootstrap, topic,
                   [envelope(f"clip-{i:03d}", clips[i]) for i in range(16)]
                   + [tombstone("clip-004")])
    edge_settings = settings_for(model_dir, broker.bootstrap, topic, group=names["group"],
                                 dlq=dlq, edge=tmp_path / "edge", media=media)
    daemon = DaemonThread(edge_settings).start()
    try:
        wait_for(lambda: committed(broker.bootstrap, names["group"], topic, 2) == ends, 60,
                 what="the Edge daemon caught up")
    finally:
        assert daemon.stop() == 0
    edge = EdgeStore(tmp_path / "edge")
    server = ServerStore(QdrantClient(location=":memory:"))
    settings = settings_for(model_dir, broker.bootstrap, topic, group=names["group"] + "-m",
                            dlq=dlq, media=media)
    assert run_reindex(settings, server) == 0
    [collection] = edge.collections()
    assert server.aliases() == {"avindex": collection}
    ids = [f"clip-{i:03d}" for i in range(16) if i != 4]
    assert media_ids(server, collection) == media_ids(edge, collection) == set(ids)
    for media_id in ids:
        [a] = edge.retrieve(collection, [point_id(media_id)], vectors=True)
        [b] = server.retrieve(collection, [point_id(media_id)], vectors=True)
        assert set(a.vectors) == set(b.vectors)
        for name in a.vectors:
            np.testing.assert_allclose(a.vectors[name], b.vectors[name], atol=1e-5)
        same = ("media_id", "uri", "modalities", "model_version", "metadata", "duration_s")
        assert {k: a.payload[k] for k in same} == {k: b.payload[k] for k in same}
    edge.close()
