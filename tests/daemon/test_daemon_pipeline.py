"""The pipeline's own logic: batching across messages, one outcome per message, and telling a
poison item from a broken encoder or a rejected point from an unavailable Qdrant.

The model, the decoder and Qdrant (local mode) are real. The dead-letter writer is a list (the
Kafka side is covered end to end elsewhere), and faults are injected by small wrappers.
"""

from __future__ import annotations

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


class DeadLetters:
    """Records dead letters instead of producing them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def send(self, record, *, reason, stage, message, exception) -> None:
        self.sent.append((record.key.decode(), stage, reason))


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
def setup(model_dir):
    model = load_model_dir(model_dir)
    encoder = Encoder(model, device="cpu", max_batch=8)
    encoder.warm_up()

    def build(clips, encoder_wrapper=None, client=None):
        client = client or QdrantClient(location=":memory:")
        sink = QdrantSink(client, model_version=model.model_version, embedding_dim=8,
                          distance="Cosine", modalities=list(model.graphs))
        sink.connect()
        acks: list = []
        dead = DeadLetters()
        health = Health()
        pipeline = Pipeline(
            model=model, encoder=encoder_wrapper or encoder, sink=sink, dead_letters=dead,
            fetcher=Fetcher([], [], 1, 10**6), limits=DecodeLimits(), metrics=Metrics(),
            health=health, on_done=acks.append, intake_size=64, embed_queue=16,
            decode_workers=2, max_batch=8, backoff=Backoff(0.05, 0.2))
        tracker = OffsetTracker()
        jobs = [Job(record=Record("t", 0, i, f"m{i}".encode(), path.read_bytes(),
                                  (("content-type", b"video/mp4"),)),
                    token=tracker.track("t/0", i)) for i, path in enumerate(clips)]
        return pipeline, jobs, acks, dead, client, sink, health

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
    pipeline, jobs, acks, dead, client, sink, _ = build(clips[:40], gated)
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
    assert client.count(sink.collection).count == 40
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
    pipeline, jobs, acks, dead, client, sink, _ = build(clips[:12], PoisonEncoder(encoder, poison))
    pipeline.start()
    try:
        for job in jobs:
            pipeline.submit(job)
        wait_for(lambda: len(acks) == 12, 30, what="12 acknowledgements")
    finally:
        pipeline.abort()
        pipeline.join(5)
    assert dead.sent == [("m3", "inference", "inference_error")]
    assert client.count(sink.collection).count == 11
    assert client.retrieve(sink.collection, [point_id("m3")]) == []


def test_broken_encoder_is_retried_not_blamed_on_items(setup, clips):
    _, encoder, build = setup
    flaky = PoisonEncoder(encoder)
    flaky.broken.set()
    pipeline, jobs, acks, dead, client, sink, health = build(clips[:5], flaky)
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
    assert dead.sent == [] and client.count(sink.collection).count == 5
    assert health.liveness()[0] is True


def test_point_rejected_by_qdrant_is_dead_lettered_alone(setup, clips):
    _, _, build = setup
    client = RejectingClient(QdrantClient(location=":memory:"), point_id("m2"))
    pipeline, jobs, acks, dead, _, sink, _ = build(clips[:10], client=client)
    for job in jobs:
        pipeline.submit(job)
    pipeline.start()
    try:
        wait_for(lambda: len(acks) == 10, 30, what="10 acknowledgements")
    finally:
        pipeline.abort()
        pipeline.join(5)
    assert dead.sent == [("m2", "upsert", "rejected")]
    assert client.count(sink.collection).count == 9


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
