"""The pipeline's own logic: batching across messages, one outcome per message, and telling a
poison item from a broken encoder or a rejected point from an unavailable Qdrant.

The model, the decoder and the vector store (Qdrant Edge in a temporary folder; the server
engine over qdrant-client's local mode where a server's answers are the point) are real. The
dead-letter writer is a list (the Kafka side is covered end to end elsewhere), and faults are
injected by small wrappers.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
from daemon_harness import wait_for
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse

from avindex.daemon.encoder import Encoder
from avindex.daemon.health import Health
from avindex.daemon.media import DecodeLimits, decode_media
from avindex.daemon.messages import Fetcher, Record
from avindex.daemon.metrics import Metrics
from avindex.daemon.model_dir import load_model_dir
from avindex.daemon.offsets import OffsetTracker
from avindex.daemon.pipeline import Job, Pipeline
from avindex.daemon.retry import Backoff
from avindex.daemon.sink import QdrantSink, point_id
from avindex.daemon.store_edge import EdgeStore
from avindex.daemon.store_server import ServerStore


class DeadLetters:
    """Records dead letters instead of producing them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def send(self, record, *, reason, stage, message, exception) -> None:
        self.sent.append((record.key.decode() if record.key else None, stage, reason))


class PoisonEncoder:
    """The real encoder, except that it fails on one particular input, or on everything while
    `broken` is set (a lost device)."""

    def __init__(self, encoder: Encoder, poison: np.ndarray | None = None) -> None:
        self._encoder, self.poison = encoder, poison
        self.broken = threading.Event()

    def embed(self, modality, items):
        if self.broken.is_set():
            raise RuntimeError("CUDA error: device lost")
        if self.poison is not None and any(
                x.shape == self.poison.shape and np.array_equal(x, self.poison) for x in items):
            raise RuntimeError("ORT: invalid input")
        return self._encoder.embed(modality, items)

    def __getattr__(self, name):
        return getattr(self._encoder, name)


class RejectingStore:
    """A real engine, except that upserts containing one media id fail with `error`."""

    def __init__(self, store, rejected: str, error: Exception) -> None:
        self._store, self.rejected, self.error = store, rejected, error

    def upsert(self, collection, points):
        if any(p.media_id == self.rejected for p in points):
            raise self.error
        return self._store.upsert(collection, points)

    def __getattr__(self, name):
        return getattr(self._store, name)


class RejectingClient:
    """The real local-mode client, except that upserts containing one point id get a 400."""

    def __init__(self, client, rejected_id: str) -> None:
        self._client, self.rejected_id = client, rejected_id

    def upsert(self, collection_name, points, wait=True):
        if any(str(p.id) == self.rejected_id for p in points):
            raise UnexpectedResponse(400, "Bad Request", b"bad payload", httpx.Headers())
        return self._client.upsert(collection_name, points=points, wait=wait)

    def __getattr__(self, name):
        return getattr(self._client, name)


@pytest.fixture
def setup(model_dir, tmp_path):
    model = load_model_dir(model_dir)
    encoder = Encoder(model, device="cpu", max_batch=8)
    encoder.warm_up()

    def build(clips, encoder_wrapper=None, store=None, fetcher=None, **options):
        store = store or EdgeStore(tmp_path / f"edge-{time.monotonic_ns()}")
        sink = QdrantSink(store, model_version=model.model_version, embedding_dim=8,
                          distance="Cosine", modalities=list(model.graphs))
        sink.connect()
        acks: list = []
        dead = DeadLetters()
        health = Health()
        pipeline = Pipeline(
            model=model, encoder=encoder_wrapper or encoder, sink=sink, dead_letters=dead,
            fetcher=fetcher or Fetcher([], [], 1, 10**6), limits=DecodeLimits(),
            metrics=Metrics(),
            health=health, on_done=acks.append, intake_size=64, embed_queue=16,
            decode_workers=2, max_batch=8, backoff=Backoff(0.05, 0.2), **options)
        tracker = OffsetTracker()
        jobs = [Job(record=Record("t", 0, i, f"m{i}".encode(), path.read_bytes(),
                                  (("content-type", b"video/mp4"),)),
                    token=tracker.track("t/0", i)) for i, path in enumerate(clips)]
        return pipeline, jobs, acks, dead, store, sink, health

    return model, encoder, build


class GatedEncoder:
    """The real encoder, recording the size of every call; the first call waits for `gate` (so
    decoded items pile up behind it whatever the scheduling)."""

    def __init__(self, encoder: Encoder) -> None:
        self._encoder = encoder
        self.gate = threading.Event()
        self.calls: list[tuple[str, int]] = []

    def embed(self, modality, items):
        assert self.gate.wait(30), "gate never opened"
        self.calls.append((modality, len(items)))
        return self._encoder.embed(modality, items)

    def __getattr__(self, name):
        return getattr(self._encoder, name)


def test_batches_span_messages_and_every_message_is_acknowledged_once(setup, clips):
    """While the encoder is busy, decoded items of other messages pile up; the next inference
    call takes them together (up to max_batch), and each message is acknowledged exactly once.
    The encoder is held at its first call until a full batch waits, so this does not depend on
    decoding outrunning inference."""
    _, encoder, build = setup
    gated = GatedEncoder(encoder)
    pipeline, jobs, acks, dead, store, sink, _ = build(clips[:40], gated)
    for job in jobs:
        pipeline.submit(job)
    pipeline.start()
    try:
        wait_for(lambda: pipeline.depths()["embed"] >= pipeline.max_batch, 30,
                 what="a full batch of decoded items waiting")
        gated.gate.set()
        wait_for(lambda: len(acks) == 40, 30, what="40 acknowledgements")
        time.sleep(0.3)  # nothing more may arrive
    finally:
        gated.gate.set()
        pipeline.abort()
        pipeline.join(5)
    assert len(acks) == 40 and len(set(acks)) == 40 and dead.sent == []
    assert pipeline.pending == 0
    assert store.count(sink.collection) == 40
    sizes = {m: [n for mod, n in gated.calls if mod == m] for m in ("visual", "audio")}
    # every 10th clip has no audio and every 10th no video: 36 items of each modality
    assert sum(sizes["audio"]) == 36 and sum(sizes["visual"]) == 36
    assert max(sizes["audio"]) > 1 and max(sizes["visual"]) > 1  # calls span messages
    assert max(max(sizes["audio"]), max(sizes["visual"])) <= pipeline.max_batch
    batches = pipeline.metrics.registry.get_sample_value(
        "avindex_inference_batch_size_count", {"modality": "audio"})
    assert batches == len(sizes["audio"]) < 36  # several items per inference call


def test_item_that_breaks_inference_is_dead_lettered_and_the_rest_indexed(setup, clips):
    model, encoder, build = setup
    poison = decode_media(clips[3], model.visual_spec(), model.audio_spec()).frames
    pipeline, jobs, acks, dead, store, sink, _ = build(clips[:12], PoisonEncoder(encoder, poison))
    pipeline.start()
    try:
        for job in jobs:
            pipeline.submit(job)
        wait_for(lambda: len(acks) == 12, 30, what="12 acknowledgements")
    finally:
        pipeline.abort()
        pipeline.join(5)
    assert dead.sent == [("m3", "inference", "inference_error")]
    assert store.count(sink.collection) == 11
    assert store.retrieve(sink.collection, [point_id("m3")]) == []


def test_broken_encoder_is_retried_not_blamed_on_items(setup, clips):
    _, encoder, build = setup
    flaky = PoisonEncoder(encoder)
    flaky.broken.set()
    pipeline, jobs, acks, dead, store, sink, health = build(clips[:5], flaky)
    pipeline.start()
    try:
        for job in jobs:
            pipeline.submit(job)
        wait_for(lambda: pipeline.metrics.registry.get_sample_value(
            "avindex_retries_total", {"stage": "inference"}), 10, what="inference retries")
        time.sleep(0.5)
        assert acks == [] and dead.sent == []
        assert health.liveness()[0] is False
        flaky.broken.clear()  # the device is back
        wait_for(lambda: len(acks) == 5, 30, what="5 acknowledgements")
    finally:
        pipeline.abort()
        pipeline.join(5)
    assert dead.sent == [] and store.count(sink.collection) == 5
    assert health.liveness()[0] is True


@pytest.mark.parametrize("engine", ["server", "edge"])
def test_point_rejected_by_the_store_is_dead_lettered_alone(setup, clips, engine, tmp_path):
    """A 400 from a server, or Edge's own validation error, blames one point: only it is
    dead-lettered, the other nine of its batches are indexed."""
    _, _, build = setup
    if engine == "server":
        rejecting = ServerStore(RejectingClient(QdrantClient(location=":memory:"),
                                                point_id("m2")))
    else:
        rejecting = RejectingStore(EdgeStore(tmp_path / "edge"), "m2",
                                   Exception("Vector dimension error: expected dim: 8, got 3"))
    pipeline, jobs, acks, dead, store, sink, _ = build(clips[:10], store=rejecting)
    for job in jobs:
        pipeline.submit(job)
    pipeline.start()
    try:
        wait_for(lambda: len(acks) == 10, 30, what="10 acknowledgements")
    finally:
        pipeline.abort()
        pipeline.join(5)
    assert dead.sent == [("m2", "upsert", "rejected")]
    assert store.count(sink.collection) == 9


def test_abort_drops_work_without_acknowledging_it(setup, clips):
    _, encoder, build = setup
    flaky = PoisonEncoder(encoder)
    flaky.broken.set()
    pipeline, jobs, acks, dead, *_ = build(clips[:4], flaky)
    pipeline.start()
    for job in jobs:
        pipeline.submit(job)
    time.sleep(0.5)
    pipeline.abort()
    pipeline.join(5)
    assert acks == [] and dead.sent == [] and pipeline.pending == 4


class SlowFetcher(Fetcher):
    """The real fetcher (files under the clips' folder), holding `slow` URIs for a while: an
    upsert that decodes slowly, so a later message of the same key would overtake it."""

    def __init__(self, root, slow: set[str], delay_s: float = 1.0) -> None:
        super().__init__([str(root)], [], 1, 10**7)
        self.slow, self.delay_s = slow, delay_s

    def fetch(self, uri):
        if uri in self.slow:
            time.sleep(self.delay_s)
        return super().fetch(uri)


def _envelope(tracker, offset: int, media_id: str, path) -> Job:
    value = json.dumps({"id": media_id, "uri": path.as_uri()}).encode()
    return Job(record=Record("t", 0, offset, media_id.encode(), value,
                             (("content-type", b"application/json"),)),
               token=tracker.track("t/0", offset))


def _tombstone(tracker, offset: int, key: bytes | None) -> Job:
    return Job(record=Record("t", 0, offset, key, None), token=tracker.track("t/0", offset))


def test_same_key_messages_apply_in_order_so_a_tombstone_wins(setup, clips):
    """m1's upsert decodes slowly; its tombstone (next offset) and m2's upsert come right
    after. The delete waits for m1's upsert and then removes it; m2 is not held up by m1.
    A tombstone before an upsert of the same key leaves the point there (m3)."""
    _, _, build = setup
    fetcher = SlowFetcher(clips[0].parent, {clips[1].as_uri()})
    pipeline, _, acks, dead, store, sink, _ = build([], fetcher=fetcher)
    tracker = OffsetTracker()
    jobs = [_envelope(tracker, 0, "m1", clips[1]), _tombstone(tracker, 1, b"m1"),
            _envelope(tracker, 2, "m2", clips[2]),
            _tombstone(tracker, 3, b"m3"), _envelope(tracker, 4, "m3", clips[3])]
    pipeline.start()
    try:
        for job in jobs:
            pipeline.submit(job)
        wait_for(lambda: len(acks) == 5, 30, what="5 acknowledgements")
    finally:
        pipeline.abort()
        pipeline.join(5)
    assert dead.sent == [] and pipeline.pending == 0
    assert store.retrieve(sink.collection, [point_id("m1")]) == []
    assert len(store.retrieve(sink.collection, [point_id("m2"), point_id("m3")])) == 2
    assert acks.index(jobs[2].token) < acks.index(jobs[0].token)  # m2 did not wait for m1
    assert acks.index(jobs[0].token) < acks.index(jobs[1].token)
    assert pipeline.metrics.registry.get_sample_value(
        "avindex_messages_deleted_total", {"topic": "t"}) == 2


def test_tombstones_can_be_dead_lettered_instead(setup, clips):
    _, _, build = setup
    pipeline, _, acks, dead, *_ = build([], tombstones="dead_letter")
    tracker = OffsetTracker()
    pipeline.start()
    try:
        pipeline.submit(_tombstone(tracker, 0, b"m1"))
        pipeline.submit(_tombstone(tracker, 1, None))
        wait_for(lambda: len(acks) == 2, 30, what="2 acknowledgements")
    finally:
        pipeline.abort()
        pipeline.join(5)
    assert sorted(dead.sent, key=str) == sorted(
        [("m1", "parse", "tombstone"), (None, "parse", "missing_id")], key=str)
