"""Retrieval quality of an exported model directory on labelled media files.

Runs the daemon's own path — `decode_media` with the manifest's sampling, then the ONNX graphs
through `avindex.daemon.encoder.Encoder` — so the numbers describe what the service will store.
Clips that cannot be decoded, or lack sound or pictures, are reported and left out.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from avindex.daemon.encoder import Encoder
from avindex.daemon.model_dir import load_model_dir
from avindex.training.features import decode_pair
from avindex.training.media_manifest import MediaItem, read_media_manifest
from avindex.training.metrics import retrieval_metrics

log = logging.getLogger(__name__)


@dataclass
class MediaEmbeddings:
    ids: list[str]
    labels: np.ndarray  # (N,)
    visual: np.ndarray  # (N, K)
    audio: np.ndarray  # (N, K)
    failed: list[dict]


def embed_media(model_dir: str | Path, manifest_csv: str | Path, split: str | None = None,
                workers: int | None = None, batch_size: int = 16) -> MediaEmbeddings:
    """Embed both modalities of every (selected) clip with the model directory's graphs."""
    model = load_model_dir(model_dir)
    encoder = Encoder(model, device="auto", max_batch=batch_size)
    items = read_media_manifest(manifest_csv).items
    if split is not None:
        items = [i for i in items if i.split == split]
    if not items:
        where = f" in split {split!r}" if split else ""
        raise ValueError(f"{manifest_csv} lists no clip{where}")
    jobs = [(i, model.visual_spec(), model.audio_spec()) for i in items]
    ok: list[tuple[MediaItem, object]] = []
    failed: list[dict] = []
    with get_context("spawn").Pool(workers or os.cpu_count() or 2) as pool:
        for item, media, err in tqdm(pool.imap(decode_pair, jobs, chunksize=4), total=len(jobs),
                                     desc="decode", unit="clip"):
            if err is None:
                ok.append((item, media))
            else:
                failed.append({"path": str(item.path), "reason": err})
                log.warning("cannot evaluate %s: %s", item.path, err)
    if not ok:
        raise ValueError("no clip could be decoded with both sound and pictures")
    visual = encoder.embed("visual", [m.frames for _, m in ok]).embedding
    audio = encoder.embed("audio", [m.audio for _, m in ok]).embedding
    return MediaEmbeddings([i.media_id for i, _ in ok], np.array([i.label for i, _ in ok]),
                           visual, audio, failed)


def evaluate_model_on_media(model_dir: str | Path, manifest_csv: str | Path,
                            split: str | None = None, ks: tuple[int, ...] = (1, 5, 10),
                            workers: int | None = None) -> dict:
    """MAP a->v, v->a, mean (DSCMR protocol) and precision@k; `n` clips used, `failed` list."""
    emb = embed_media(model_dir, manifest_csv, split, workers)
    metrics = retrieval_metrics(emb.visual, emb.audio, emb.labels, ks)
    return {**metrics, "n": len(emb.ids), "failed": emb.failed}
