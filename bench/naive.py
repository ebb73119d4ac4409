"""The indexer a user would write first: one message at a time, PyTorch eager, one point, commit.

Same data and the same real components as the daemon (Tansu via kafka-python, PyAV through the
daemon's decoder, qdrant-client local mode), but nothing overlaps: poll one record, decode it,
run the checkpoint's torch model with the torch front-ends (batch 1, eager), upsert one point
with wait=true, commit synchronously, repeat. Used by end_to_end.py as the baseline.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import torch
from qdrant_client import models

from avindex.daemon.media import decode_media
from avindex.daemon.sink import point_id
from avindex.exporters.chains import AudioChain, VisualChain
from avindex.exporters.writer import frontend_specs
from avindex.training.features import pad_audio, pad_frames
from avindex.training.frontends import build_audio_frontend, build_visual_frontend
from avindex.training.train import load_checkpoint


class NaiveIndexer:
    """Loads the torch chains once; `run()` indexes `expected` messages of a topic."""

    def __init__(self, checkpoint) -> None:
        model, ckpt = load_checkpoint(checkpoint)
        model.eval()
        self.vspec, self.aspec = frontend_specs(ckpt)
        self.visual = VisualChain(build_visual_frontend(self.vspec), model).eval()
        self.audio = AudioChain(build_audio_frontend(self.aspec), model).eval()

    def best_threads(self, sample: list[bytes], choices=(1, 2)) -> dict[str, Any]:
        """Give the baseline its best torch thread count on this machine, now: on a shared,
        oversubscribed CPU one thread can beat two (OpenMP threads wait for each other)."""
        timings: dict[int, list[float]] = {n: [] for n in choices}
        for r in range(2):
            for n in choices if r % 2 == 0 else choices[::-1]:
                torch.set_num_threads(n)
                start = time.perf_counter()
                for value in sample:
                    self._vectors(value)
                timings[n].append(len(sample) / (time.perf_counter() - start))
        best = max(choices, key=lambda n: max(timings[n]))
        torch.set_num_threads(best)
        return {"chosen": best, "clips_per_s": {str(n): t for n, t in timings.items()}}

    def _vectors(self, value: bytes) -> dict[str, list[float]]:
        d = decode_media(value, self.vspec.visual_spec(), self.aspec.audio_spec())
        out = {}
        with torch.inference_mode():
            if d.frames is not None:
                out["visual"] = self.visual(*pad_frames([d.frames]))[0][0].tolist()
            if d.audio is not None:
                out["audio"] = self.audio(*pad_audio([d.audio]))[0][0].tolist()
        return out

    def run(self, bootstrap: str, topic: str, client: Any, dim: int, expected: int,
            timeout_s: float) -> None:
        from kafka import KafkaConsumer

        collection = f"naive-{uuid.uuid4().hex[:8]}"
        client.create_collection(collection, vectors_config={
            m: models.VectorParams(size=dim, distance=models.Distance.COSINE)
            for m in ("visual", "audio")})
        consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap,
                                 group_id=f"naive-{uuid.uuid4().hex[:8]}",
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 max_poll_records=1, session_timeout_ms=6000,
                                 heartbeat_interval_ms=1000, max_partition_fetch_bytes=2**21)
        done = 0
        deadline = time.monotonic() + timeout_s
        try:
            while done < expected and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500, max_records=1).values():
                    for r in records:
                        key = r.key.decode()
                        client.upsert(collection, points=[models.PointStruct(
                            id=point_id(key), vector=self._vectors(r.value),
                            payload={"media_id": key, "topic": r.topic, "partition": r.partition,
                                     "offset": r.offset})], wait=True)
                        consumer.commit()
                        done += 1
        finally:
            consumer.close(autocommit=False)
        if done < expected:
            raise RuntimeError(f"naive indexer did {done} of {expected} in {timeout_s:.0f}s")
