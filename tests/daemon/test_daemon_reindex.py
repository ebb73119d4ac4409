"""`avindex reindex` against the real Tansu broker, on the server engine (qdrant-client local
mode) and on Qdrant Edge: a new model version's collection is filled up to the end offsets seen
at start, then the alias moves to it in one call; interrupted, it exits non-zero and leaves the
alias alone. (Tombstones and migration between engines: test_daemon_tombstones.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

from daemon_harness import (
    committed,
    produce,
    settings_file,
    settings_for,
    wait_for,
)
from daemon_helpers import build_model_dir
from qdrant_client import QdrantClient, models

from avindex.daemon.app import EXIT_CONFIG
from avindex.daemon.kafka_probe import end_offsets
from avindex.daemon.model_dir import load_model_dir
from avindex.daemon.reindex import EXIT_INCOMPLETE, reindex_daemon
from avindex.daemon.sink import QdrantSink
from avindex.daemon.store_edge import EdgeStore
from avindex.daemon.store_server import ServerStore


def envelope(i: int, uri: str) -> tuple:
    media_id = f"clip-{i:03d}"
    return (media_id.encode(), json.dumps({"id": media_id, "uri": uri}).encode(),
            [("content-type", b"application/json")])


def old_collection_behind_alias(store, model_dir) -> str:
    """What the running daemons have built: the old model's collection, the alias on it."""
    model = load_model_dir(model_dir)
    if isinstance(store, QdrantClient):
        store = ServerStore(store)
    sink = QdrantSink(store, model_version=model.model_version,
                      embedding_dim=model.embedding_dim, distance=model.distance,
                      modalities=list(model.graphs), alias_policy="always")
    sink.connect()
    return sink.collection


def alias_target(client, alias: str = "avindex") -> str | None:
    return {a.alias_name: a.collection_name for a in client.get_aliases().aliases}.get(alias)


class AliasSpy:
    """The real client, recording every update_collection_aliases call."""

    def __init__(self, client) -> None:
        self._client = client
        self.alias_calls: list[list] = []

    def update_collection_aliases(self, change_aliases_operations, **kwargs):
        self.alias_calls.append(list(change_aliases_operations))
        return self._client.update_collection_aliases(
            change_aliases_operations=change_aliases_operations, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_end_offsets_are_the_high_watermarks_even_where_list_offsets_is_wrong(
        broker, model_dir, names):
    """Tansu answers ListOffsets(latest) with the offset after a batch's first record; the
    recorded end offsets must be the real ones (what the producer got acknowledged)."""
    topic = names["topic"]
    broker.create_topic(topic, partitions=3)
    ends = produce(broker.bootstrap, topic, [(f"k{i}".encode(), b"x", None) for i in range(25)])
    s = settings_for(model_dir, broker.bootstrap, topic, group=names["group"],
                     dlq=names["dlq"])
    found = end_offsets(s.kafka, timeout_s=20)
    assert {tp.partition: o for tp, o in found.items()} == {p: ends.get(p, 0) for p in range(3)}
    assert sum(found.values()) == 25


def test_reindex_fills_the_new_collection_then_switches_the_alias_in_one_call(
        broker, model_dir, clips, media_root, names, tmp_path):
    topic, n = names["topic"], 30
    broker.create_topic(topic, partitions=3)
    client = QdrantClient(location=":memory:")
    old = old_collection_behind_alias(client, model_dir)
    ends = produce(broker.bootstrap, topic,
                   [envelope(i, f"file://{clips[i]}") for i in range(n)])
    new_dir = build_model_dir(tmp_path / "next", seed=1)
    new = f"avindex-{load_model_dir(new_dir).model_version}"
    assert new != old
    settings = settings_for(new_dir, broker.bootstrap, topic, group=names["group"],
                            dlq=names["dlq"], media={"allowed_roots": [str(media_root)]})
    spy = AliasSpy(client)
    reindexer = reindex_daemon(settings, switch_alias=True, qdrant_client=spy)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(reindexer.run()), daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "reindex did not finish"
    assert result == [0]
    assert client.count(new).count == n
    assert client.count(old).count == 0  # the old collection was not written to
    assert alias_target(client) == new
    [ops] = spy.alias_calls  # one call: delete and create together
    assert [type(op) for op in ops] == [models.DeleteAliasOperation,
                                        models.CreateAliasOperation]
    assert ops[1].create_alias.collection_name == new
    assert committed(broker.bootstrap, names["group"], topic, 3) == {
        p: ends.get(p) for p in range(3)}


def test_a_retried_reindex_resumes_from_the_committed_offsets_and_then_switches(
        broker, model_dir, clips, media_root, names, tmp_path):
    """Without --switch-alias the alias stays; a second attempt in the same group (a Job retry)
    has nothing left to read, sees that it is caught up and switches."""
    topic, n = names["topic"], 8
    broker.create_topic(topic, partitions=2)
    client = QdrantClient(location=":memory:")
    old = old_collection_behind_alias(client, model_dir)
    produce(broker.bootstrap, topic, [envelope(i, f"file://{clips[i]}") for i in range(n)])
    new_dir = build_model_dir(tmp_path / "next", seed=1)
    new = f"avindex-{load_model_dir(new_dir).model_version}"

    def attempt(switch: bool) -> int:
        settings = settings_for(new_dir, broker.bootstrap, topic, group=names["group"],
                                dlq=names["dlq"], media={"allowed_roots": [str(media_root)]})
        result: list[int] = []
        reindexer = reindex_daemon(settings, switch_alias=switch, qdrant_client=client)
        thread = threading.Thread(target=lambda: result.append(reindexer.run()), daemon=True)
        thread.start()
        thread.join(120)
        assert not thread.is_alive(), "reindex did not finish"
        return result[0]

    assert attempt(switch=False) == 0
    assert client.count(new).count == n and alias_target(client) == old
    assert attempt(switch=True) == 0
    assert alias_target(client) == new


def test_reindex_interrupted_by_sigterm_exits_non_zero_and_leaves_the_alias(
        broker, model_dir, clips, media_root, media_server, names, tmp_path):
    """A real `avindex reindex --switch-alias` process, stopped by SIGTERM before it can catch
    up (every fetch takes 2 s): non-zero exit, alias still on the old collection."""
    topic, n = names["topic"], 20
    broker.create_topic(topic, partitions=2)
    qdrant_path = tmp_path / "qdrant"
    store = EdgeStore(qdrant_path)
    old = old_collection_behind_alias(store, model_dir)
    store.close()
    produce(broker.bootstrap, topic,
            [envelope(i, f"http://{media_server}/slow/2/{clips[i].relative_to(media_root)}")
             for i in range(n)])
    new_dir = build_model_dir(tmp_path / "next", seed=1)
    settings = settings_for(new_dir, broker.bootstrap, topic, group=names["group"],
                            dlq=names["dlq"], media={"allowed_hosts": [media_server]},
                            edge=qdrant_path,
                            log={"format": "json"})
    config = settings_file(settings, tmp_path / "reindex.yaml")
    log_path = tmp_path / "reindex.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "avindex.tools.cli", "reindex", "--switch-alias",
             "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("AVINDEX_")})
        try:
            wait_for(lambda: "re-indexing into" in log_path.read_text(errors="replace")
                     or proc.poll() is not None, 90, what="reindex start")
            assert proc.poll() is None, log_path.read_text(errors="replace")
            os.kill(proc.pid, signal.SIGTERM)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
    text = log_path.read_text(errors="replace")
    assert code == EXIT_INCOMPLETE, text
    assert "stopped before catching up" in text
    assert EdgeStore(qdrant_path).aliases() == {"avindex": old}


def test_reindex_with_a_bad_model_directory_exits_2(broker, names, tmp_path):
    topic = names["topic"]
    broker.create_topic(topic)
    bad = build_model_dir(tmp_path / "bad")
    (bad / "audio.onnx").write_bytes(b"not a model")
    settings = settings_for(bad, broker.bootstrap, topic, group=names["group"],
                            dlq=names["dlq"])
    assert reindex_daemon(settings, switch_alias=True,
                          qdrant_client=QdrantClient(location=":memory:")).run() == EXIT_CONFIG
