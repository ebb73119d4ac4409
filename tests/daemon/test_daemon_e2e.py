"""End to end in the test process: real Tansu broker, real vector stores, real media.

The 200-clip test runs on Qdrant Edge (the embedded default); the others on the server engine
over qdrant-client's local mode (no Qdrant server can run here), which is the code path of a
Qdrant server. Daemons run in threads so that one store can be shared (two daemons in one
group) and faults can be switched on and off in front of the real engine. Real processes and
real signals are in test_daemon_process.py; tombstones and outages on both engines in
test_daemon_tombstones.py and test_daemon_outage.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import wave

import numpy as np
import pytest
from daemon_harness import (
    DaemonThread,
    FlakyClient,
    committed,
    header,
    produce,
    read_topic,
    settings_for,
    wait_for,
)
from qdrant_client import QdrantClient

from avindex.daemon.encoder import Encoder
from avindex.daemon.media import decode_media
from avindex.daemon.model_dir import load_model_dir
from avindex.daemon.sink import point_id
from avindex.daemon.store_edge import EdgeStore
from avindex.daemon.store_server import ServerStore
from avindex.tools.kafka_admin import free_port
from avindex.tools.synthetic import write_clip


def clip_message(i: int, path, form: str, server: tuple[str, object] | None = None) -> tuple:
    """Message for a clip in one of the value forms: raw bytes, file envelope or http envelope
    (`server` = (host:port, the folder it serves))."""
    media_id = f"clip-{i:03d}"
    if form == "raw":
        kind = "audio/wav" if path.suffix == ".wav" else "video/mp4"
        return (media_id.encode(), path.read_bytes(),
                [("content-type", kind.encode()), ("source", b"raw"), ("n", str(i).encode())])
    if form == "file":
        uri = f"file://{path}"
    else:
        host, root = server
        uri = f"http://{host}/{path.relative_to(root)}"
    envelope = {"id": media_id, "uri": uri, "metadata": {"source": form, "n": i}}
    return media_id.encode(), json.dumps(envelope).encode(), [("content-type", b"application/json")]


def all_points(store, collection) -> dict:
    points, offset = [], None
    while True:
        batch, offset = store.scroll(collection, limit=256, offset=offset, vectors=True)
        points += batch
        if offset is None:
            return {p.payload["media_id"]: p for p in points}


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_200_clips_in_both_forms_are_indexed_and_equal_avindex_embed(
        broker, model_dir, avdigits, media_root, media_server, names, tmp_path):
    corpus, kind = avdigits  # AV-digits when the training package is there, else synthetic
    topic, dlq = names["topic"], names["dlq"]
    broker.create_topic(topic, 4)
    broker.create_topic(dlq, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=names["group"], dlq=dlq,
                            media={"allowed_roots": [str(media_root)],
                                   "allowed_hosts": [media_server]})
    forms = ["raw", "file", "http"]
    messages = [clip_message(i, p, forms[i % 3], (media_server, media_root))
                for i, p in enumerate(corpus)]
    client = EdgeStore(tmp_path / "edge")
    daemon = DaemonThread(settings, client).start()
    try:
        ends = produce(broker.bootstrap, topic, messages)
        collection = daemon.daemon.sink.collection
        wait_for(lambda: client.count(collection) == len(corpus), 120,
                 what=f"{len(corpus)} points")
        wait_for(lambda: committed(broker.bootstrap, names["group"], topic, 4) == ends, 20,
                 what="offsets committed up to the end")
        assert daemon.metric("avindex_messages_indexed_total", topic=topic) == len(corpus)
    finally:
        assert daemon.stop() == 0
    assert read_topic(broker.bootstrap, dlq, 1, expected=0) == []

    points = all_points(client, collection)
    assert len(points) == len(corpus) == 200
    version = collection.split("-", 1)[1]
    for i, path in enumerate(corpus):
        p = points[f"clip-{i:03d}"]
        assert str(p.id) == point_id(f"clip-{i:03d}")
        assert p.payload["modalities"] == sorted(p.vectors)
        assert p.payload["model_version"] == version and p.payload["topic"] == topic
        assert p.payload["duration_s"] > 0.5 and set(p.payload["uncertainty"]) == set(p.vectors)
        if i % 3 == 0:
            assert p.payload["uri"] is None and p.payload["metadata"]["n"] == str(i)
        else:
            assert p.payload["uri"].endswith(path.name) and p.payload["metadata"]["n"] == i
    if kind == "avdigits":
        assert all(p.payload["modalities"] == ["audio", "visual"] for p in points.values())

    # `avindex embed` of the same files gives the stored vectors (Qdrant normalises for cosine)
    out = subprocess.run([sys.executable, "-m", "avindex.tools.cli", "embed", "--model",
                          str(model_dir), *map(str, corpus)], capture_output=True, text=True,
                         check=True, timeout=120)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == len(corpus)
    for i, line in enumerate(lines):
        stored = points[f"clip-{i:03d}"].vectors
        assert sorted(line["modalities"]) == sorted(stored)
        for modality, vector in stored.items():
            np.testing.assert_allclose(unit(vector), unit(line[modality]), atol=1e-4)


def _poison_corpus(tmp_path, clips, media_server, dead_port):
    """[(case, (key, value, headers), (stage, reason))] for every bad kind, and a symlink to
    clean up. Every message carries a `case` header, which the dead letter keeps."""
    root = clips[0].parent
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    write_clip(bad_dir / "long.mp4", 1, seconds=4)
    write_clip(bad_dir / "wide.mp4", 2, width=400, height=300)
    write_clip(bad_dir / "many.mp4", 3, fps=60, seconds=1.5)
    write_clip(bad_dir / "mpeg4.mp4", 4, vcodec="mpeg4")
    with wave.open(str(bad_dir / "silent.wav"), "wb") as w:  # a valid WAV with no samples
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"")
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(clips[0].read_bytes())
    link = root / f"escape-{os.getpid()}.mp4"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    good = clips[0].read_bytes()

    def raw(case, value, ctype="video/mp4", key=True):
        return case, case.encode() if key else None, value, ctype

    def env(case, uri, **extra):
        body = json.dumps({"id": case, "uri": uri, **extra}).encode()
        return case, case.encode(), body, "application/json"

    corpus = [
        (raw("empty", b""), ("decode", "empty")),
        (raw("garbage", os.urandom(2000)), ("decode", "corrupt")),
        (raw("truncated", good[: len(good) * 6 // 10]), ("decode", "corrupt")),
        (raw("text", b"hello", "text/plain"), ("parse", "unsupported_content_type")),
        (raw("huge", os.urandom(200_000)), ("decode", "too_large")),
        (raw("long", (bad_dir / "long.mp4").read_bytes()), ("decode", "too_long")),
        (raw("wide", (bad_dir / "wide.mp4").read_bytes()), ("decode", "resolution")),
        (raw("many", (bad_dir / "many.mp4").read_bytes()), ("decode", "too_many_frames")),
        (raw("mpeg4", (bad_dir / "mpeg4.mp4").read_bytes()), ("decode", "unsupported_codec")),
        (raw("silent", (bad_dir / "silent.wav").read_bytes(), "audio/wav"),
         ("decode", "no_decodable_stream")),
        (raw("bad-json", b"{not json", "application/json"), ("parse", "bad_envelope")),
        (raw("no-uri", b'{"id": "no-uri"}', "application/json"), ("parse", "bad_envelope")),
        (raw("no-key", good, key=False), ("parse", "missing_id")),
        (raw("mismatch", b'{"id": "other", "uri": "file:///x"}', "application/json"),
         ("parse", "id_mismatch")),
        (env("big-meta", f"file://{clips[1]}", metadata={"x": "y" * 2000}),
         ("parse", "metadata_too_large")),
        (env("outside", f"file://{outside}"), ("fetch", "uri_not_allowed")),
        (env("dotdot", f"file://{root}/../{outside.parent.name}/outside.mp4"),
         ("fetch", "uri_not_allowed")),
        (env("symlink", f"file://{link}"), ("fetch", "uri_not_allowed")),
        (env("missing", f"file://{root}/nope.mp4"), ("fetch", "not_found")),
        (env("ftp", "ftp://example.com/a.mp4"), ("fetch", "unsupported_uri_scheme")),
        (env("host", "http://example.invalid/a.mp4"), ("fetch", "uri_not_allowed")),
        (env("redirect", f"http://{media_server}/away"), ("fetch", "uri_not_allowed")),
        (env("404", f"http://{media_server}/synthetic/nope.mp4"), ("fetch", "not_found")),
        (env("dead-host", f"http://127.0.0.1:{dead_port}/a.mp4"), ("fetch", "unreachable")),
    ]
    bad = [(case, (key, value, [("content-type", ctype.encode()), ("case", case.encode())]),
            reason) for (case, key, value, ctype), reason in corpus]
    return bad, link


def test_poison_corpus_is_dead_lettered_with_reasons_and_good_items_indexed(
        broker, model_dir, clips, media_root, media_server, names, tmp_path):
    topic, dlq = names["topic"], names["dlq"]
    broker.create_topic(topic, 3)
    broker.create_topic(dlq, 1)
    dead_port = free_port()
    bad, link = _poison_corpus(tmp_path, clips, media_server, dead_port)
    try:
        assert len({reason for _, _, reason in bad}) >= 12 and len(bad) >= 20
        settings = settings_for(
            model_dir, broker.bootstrap, topic, group=names["group"], dlq=dlq,
            media={"allowed_roots": [str(media_root / "synthetic")],
                   "allowed_hosts": [media_server, f"127.0.0.1:{dead_port}"],
                   "max_bytes": 150_000, "max_duration_s": 3.0, "max_width": 320,
                   "max_height": 240, "max_decoded_frames": 50, "metadata_max_bytes": 1000,
                   "allowed_codecs": ["h264", "aac", "pcm_s16le"], "http_timeout_s": 3.0})
        good = [clip_message(i, clips[i], ["raw", "file", "http"][i % 3],
                             (media_server, media_root)) for i in range(20, 50)]
        mixed = []
        for i in range(max(len(good), len(bad))):  # interleave good and bad traffic
            mixed += [good[i]] if i < len(good) else []
            mixed += [bad[i][1]] if i < len(bad) else []
        client = ServerStore(QdrantClient(location=":memory:"))
        daemon = DaemonThread(settings, client).start()
        try:
            ends = produce(broker.bootstrap, topic, mixed)
            wait_for(lambda: committed(broker.bootstrap, names["group"], topic, 3) == ends, 60,
                     what="every message handled and committed")
            collection = daemon.daemon.sink.collection
            assert client.count(collection) == len(good)
            points = all_points(client, collection)
            assert set(points) == {f"clip-{i:03d}" for i in range(20, 50)}
            for i in range(20, 50):  # sound only, pictures only, or both
                expected = (["audio"] if i % 10 == 7 else ["visual"] if i % 10 == 9
                            else ["audio", "visual"])
                assert points[f"clip-{i:03d}"].payload["modalities"] == expected
        finally:
            assert daemon.stop() == 0
        letters = read_topic(broker.bootstrap, dlq, 1, expected=len(bad))
        got = {header(r, "case"): (header(r, "avindex.error.stage"),
                                   header(r, "avindex.error.reason")) for r in letters}
        assert len(letters) == len(bad)
        assert got == {case: reason for case, _, reason in bad}
        for r in letters:  # the original message travels with the reason
            case = header(r, "case")
            original = next(m for c, m, _ in bad if c == case)
            assert (r.key, r.value or b"") == (original[0], original[1])
            assert header(r, "avindex.source.topic") == topic
            assert int(header(r, "avindex.source.offset")) >= 0
        by_reason = daemon.metric("avindex_messages_dead_lettered_total", stage="fetch",
                                  reason="uri_not_allowed")
        assert by_reason == 5
    finally:
        link.unlink(missing_ok=True)


def test_two_daemons_in_one_group_index_everything_exactly_once(
        broker, model_dir, clips, names):
    topic, dlq, group = names["topic"], names["dlq"], names["group"]
    broker.create_topic(topic, 4)
    broker.create_topic(dlq, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=group, dlq=dlq,
                            media={"allowed_roots": [str(clips[0].parent)]})
    messages = [clip_message(i, p, "file") for i, p in enumerate(clips[:120])]
    shared = ServerStore(QdrantClient(location=":memory:"))
    a = DaemonThread(settings, shared).start()
    b = None
    try:
        produce(broker.bootstrap, topic, messages[:60])
        wait_for(lambda: a.metric("avindex_messages_indexed_total", topic=topic) >= 1, 30,
                 interval=0.02, what="first daemon indexing")
        b = DaemonThread(settings, shared).start()  # joins while the first has work in flight
        wait_for(lambda: a.assignment() and b.assignment() and not a.assignment() & b.assignment()
                 and len(a.assignment() | b.assignment()) == 4, 40, what="partitions shared")
        ends = produce(broker.bootstrap, topic, messages[60:])
        collection = a.daemon.sink.collection
        wait_for(lambda: shared.count(collection) == 120, 60, what="120 points")
        wait_for(lambda: committed(broker.bootstrap, group, topic, 4) == ends, 30,
                 what="all offsets committed")
        indexed_a = a.metric("avindex_messages_indexed_total", topic=topic)
        indexed_b = b.metric("avindex_messages_indexed_total", topic=topic)
        assert indexed_b > 0 and indexed_a > 0
        assert indexed_a + indexed_b >= 120  # a redelivered item may be upserted twice...
    finally:
        codes = [d.stop() for d in (a, b) if d is not None]
    assert codes == [0, 0]
    points = all_points(shared, collection)
    assert sorted(points) == sorted(f"clip-{i:03d}" for i in range(120))  # ...but stored once
    assert read_topic(broker.bootstrap, dlq, 1, expected=0) == []


def test_qdrant_faults_mean_no_commit_no_loss_and_recovery_by_itself(
        broker, model_dir, clips, names):
    topic, dlq, group = names["topic"], names["dlq"], names["group"]
    broker.create_topic(topic, 2)
    broker.create_topic(dlq, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=group, dlq=dlq,
                            media={"allowed_roots": [str(clips[0].parent)]},
                            kafka={"max_in_flight": 6, "max_in_flight_per_partition": 6,
                                   "max_poll_interval_ms": 8000},
                            pipeline={"shutdown_deadline_s": 5.0, "retry_max_s": 0.5})
    messages = [clip_message(i, p, "file") for i, p in enumerate(clips[:30])]
    flaky = FlakyClient(QdrantClient(location=":memory:"))
    daemon = DaemonThread(settings, flaky).start()
    probes = daemon.daemon.health
    try:
        before = produce(broker.bootstrap, topic, messages[:10])
        collection = daemon.daemon.sink.collection
        wait_for(lambda: committed(broker.bootstrap, group, topic, 2) == before, 30,
                 what="first wave committed")
        assignment = daemon.assignment()

        flaky.failing.set()
        ends = produce(broker.bootstrap, topic, messages[10:])
        started = time.monotonic()
        wait_for(lambda: flaky.injected >= 10, 30, what="faults injected")
        wait_for(lambda: daemon.metric("avindex_paused_partitions") > 0, 10,
                 what="partitions paused")
        # not ready (traffic and alerts see it), but alive: a restart would not help
        assert not probes.readiness()[0] and probes.liveness()[0]
        # stay faulty past max.poll.interval.ms and the session timeout
        time.sleep(max(0.0, 10.0 - (time.monotonic() - started)))
        assert committed(broker.bootstrap, group, topic, 2) == before  # nothing committed
        assert flaky.count(collection).count == 10
        assert daemon.metric("avindex_messages_consumed_total", topic=topic) <= 10 + 6
        assert daemon.metric("avindex_rebalances_total") == 0  # never left the group
        assert daemon.assignment() == assignment

        flaky.failing.clear()
        wait_for(lambda: flaky.count(collection).count == 30, 30, what="all 30 indexed")
        wait_for(lambda: committed(broker.bootstrap, group, topic, 2) == ends, 20,
                 what="all committed")
        assert probes.readiness()[0] and probes.liveness()[0]
        for reason in ("timeout", "connection", "http_503", "http_500"):
            assert daemon.metric("avindex_failures_total", stage="upsert", reason=reason) > 0
        assert daemon.metric("avindex_retries_total", stage="upsert") >= 10
        assert daemon.metric("avindex_rebalances_total") == 0
    finally:
        assert daemon.stop() == 0
    assert read_topic(broker.bootstrap, dlq, 1, expected=0) == []


def test_probe_endpoints_answer(broker, model_dir, names):
    topic = names["topic"]
    broker.create_topic(topic, 1)
    settings = settings_for(model_dir, broker.bootstrap, topic, group=names["group"],
                            dlq=names["dlq"])
    daemon = DaemonThread(settings, QdrantClient(location=":memory:")).start()
    try:
        base = f"http://127.0.0.1:{daemon.daemon.http_port}"
        ready = wait_for(lambda: _get(f"{base}/readyz"), 20, what="/readyz 200")
        assert json.loads(ready)["ok"] is True and json.loads(ready)["stage"] == "running"
        assert json.loads(_get(f"{base}/healthz"))["ok"] is True
        body = _get(f"{base}/metrics")
        for name in ("avindex_messages_consumed_total", "avindex_inference_duration_seconds",
                     "avindex_upsert_duration_seconds", "avindex_queue_depth",
                     "avindex_model_info", "avindex_execution_provider",
                     "avindex_end_to_end_latency_seconds", "avindex_in_flight_messages",
                     "avindex_ready 1.0", "avindex_healthy 1.0"):
            assert name in body
        assert 'provider="CPUExecutionProvider"' in body
        assert _get(f"{base}/nope") is None
    finally:
        assert daemon.stop() == 0


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode() if r.status == 200 else None
    except OSError:
        return None


@pytest.mark.slow
def test_daemon_serves_a_model_directory_from_the_exporter(
        broker, tiny_model_dir, avdigits, names):
    """The real exporter's output (EfficientNet-Lite0 + log-mel VAE-CCA) through the daemon."""
    corpus, _ = avdigits
    model = load_model_dir(tiny_model_dir)
    encoder = Encoder(model, device="cpu", max_batch=4)
    decoded = [decode_media(p, model.visual_spec(), model.audio_spec()) for p in corpus[:4]]
    for modality in ("visual", "audio"):
        items = [d.frames if modality == "visual" else d.audio for d in decoded]
        batch = encoder.embed(modality, items).embedding
        for i, item in enumerate(items):  # padding does not change an item's result
            np.testing.assert_allclose(batch[i], encoder.embed(modality, [item]).embedding[0],
                                       atol=1e-4)
    topic = names["topic"]
    broker.create_topic(topic, 2)
    settings = settings_for(tiny_model_dir, broker.bootstrap, topic, group=names["group"],
                            dlq=names["dlq"], media={"allowed_roots": [str(corpus[0].parents[2])]})
    client = QdrantClient(location=":memory:")
    daemon = DaemonThread(settings, client).start()
    try:
        produce(broker.bootstrap, topic, [clip_message(i, p, "file")
                                          for i, p in enumerate(corpus[:20])])
        wait_for(lambda: client.count(daemon.daemon.sink.collection).count == 20, 120,
                 what="20 points")
    finally:
        assert daemon.stop() == 0
    info = client.get_collection(daemon.daemon.sink.collection).config.params.vectors
    assert info["visual"].size == model.embedding_dim
