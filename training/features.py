"""Feature extraction from a labelled media corpus into the paper's HDF5 layout.

Decoding is `avindex.daemon.media.decode_media` (the daemon's own code) and the front-ends are
the modules the exporter puts into the ONNX graphs, so training sees exactly what the daemon
will compute. Clips that cannot be decoded, or lack one modality, are reported and skipped.

Two engines run the front-ends. `onnx` (the default) exports each front-end with the code the
exporter uses too (`onnx_graphs.py`) and runs it with ONNX Runtime inside the decoding workers:
it is what the daemon runs, and it measured 2.2x faster per clip than PyTorch eager on one core
(docs/training.md).
`torch` runs the PyTorch modules in batches in the main process.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from avindex.daemon.media import (
    AudioSpec,
    DecodedMedia,
    MediaError,
    VisualSpec,
    decode_media,
    pad_batch,
)
from avindex.training.features_h5 import FeatureSet, Split, save_features
from avindex.training.frontends import (
    FrontendSpec,
    build_audio_frontend,
    build_visual_frontend,
)
from avindex.training.frontends.registry import pretrained_entry
from avindex.training.media_manifest import MediaItem, assign_splits, read_media_manifest

log = logging.getLogger(__name__)

ENGINES = ("onnx", "torch")
_FEATURE_OUTPUT = "features"
_PARITY_TOLERANCE = 1e-3  # relative to the largest |feature|: float32 reordering, not a bug
_worker_sessions: dict[str, object] = {}  # per decoding worker: modality -> ONNX session


def decode_pair(
    job: tuple[MediaItem, VisualSpec, AudioSpec],
) -> tuple[MediaItem, DecodedMedia | None, str | None]:
    """Decode one labelled clip; (item, media, None) or (item, None, reason) when unusable.

    Runs in worker processes (picklable arguments). A clip without sound or pictures cannot
    be paired, so it is reported like one that cannot be decoded.
    """
    item, visual, audio = job
    try:
        media = decode_media(item.path, visual, audio)
    except MediaError as exc:
        return item, None, f"{exc.reason}: {exc}"
    if media.frames is None or media.audio is None:
        return item, None, f"missing modality (has {media.modalities})"
    return item, media, None


def export_frontends(visual: FrontendSpec, audio: FrontendSpec, folder: Path) -> dict[str, Path]:
    """Both front-ends as ONNX graphs in `folder`, each checked against PyTorch on an example.

    Raises RuntimeError when ONNX Runtime disagrees with PyTorch (use engine="torch" then).
    """
    from avindex.training.onnx_graphs import example_inputs, export_chain, onnx_session

    paths = {}
    for name, spec, build in (("visual", visual, build_visual_frontend),
                              ("audio", audio, build_audio_frontend)):
        module = build(spec).eval()  # (media, lengths) -> pooled features, one output
        path = export_chain(module, name, spec.decode, folder / f"{name}.onnx",
                            output_names=[_FEATURE_OUTPUT])
        inputs = example_inputs(name, spec.decode)
        session = onnx_session(path)
        names = [i.name for i in session.get_inputs()]
        got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})[0]
        with torch.inference_mode():
            want = module(*inputs).numpy()
        error = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-6)
        if error > _PARITY_TOLERANCE:
            raise RuntimeError(f"the {name} front-end's ONNX graph differs from PyTorch by "
                               f"{error:.2e} (relative); extract with engine='torch'")
        paths[name] = path
    return paths


def _init_onnx_worker(paths: dict[str, str]) -> None:
    """Pool initializer: one single-threaded ONNX Runtime session per front-end."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for name, path in paths.items():
        _worker_sessions[name] = ort.InferenceSession(path, options,
                                                      providers=["CPUExecutionProvider"])


def embed_pair(
    job: tuple[MediaItem, VisualSpec, AudioSpec],
) -> tuple[MediaItem, tuple[np.ndarray, np.ndarray] | None, str | None]:
    """Decode one clip and run both ONNX front-ends on it, in a worker (`_init_onnx_worker`)."""
    item, media, err = decode_pair(job)
    if media is None:
        return item, None, err
    one = np.ones(1, np.int64)
    visual = _worker_sessions["visual"].run(
        None, {"frames": media.frames[None], "num_frames": one * len(media.frames)})[0][0]
    audio = _worker_sessions["audio"].run(
        None, {"waveform": media.audio[None], "num_samples": one * len(media.audio)})[0][0]
    return item, (visual, audio), None


def pad_frames(frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (T_i, S, S, 3) uint8 -> zero-padded (B, T_max, S, S, 3) and lengths (B,)."""
    batch, lengths = pad_batch(frames, np.uint8)
    return torch.from_numpy(batch), torch.from_numpy(lengths)


def pad_audio(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (N_i,) float32 -> zero-padded (B, N_max) and lengths (B,)."""
    batch, lengths = pad_batch(waves, np.float32)
    return torch.from_numpy(batch), torch.from_numpy(lengths)


class FeatureExtractor:
    """Both front-ends, ready to turn decoded media into pooled feature vectors."""

    def __init__(self, visual: FrontendSpec, audio: FrontendSpec) -> None:
        self.visual_spec, self.audio_spec = visual, audio
        self.visual = build_visual_frontend(visual)
        self.audio = build_audio_frontend(audio)

    @torch.inference_mode()
    def __call__(self, batch: list[DecodedMedia]) -> tuple[np.ndarray, np.ndarray]:
        frames, n_frames = pad_frames([m.frames for m in batch])
        waves, n_samples = pad_audio([m.audio for m in batch])
        return self.visual(frames, n_frames).numpy(), self.audio(waves, n_samples).numpy()


def _batches(it: Iterator, size: int) -> Iterator[list]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def extract_features(
    manifest_csv: str | Path,
    out_h5: str | Path,
    visual: FrontendSpec,
    audio: FrontendSpec,
    workers: int | None = None,
    batch_size: int = 16,
    split_seed: int = 0,
    engine: str = "onnx",
) -> FeatureSet:
    """Decode every listed clip, run both front-ends, write the HDF5 file and return it.

    `batch_size` applies to the `torch` engine; the `onnx` engine embeds clip by clip in the
    decoding workers.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {ENGINES}")
    media = read_media_manifest(manifest_csv)
    workers = workers or max(1, (os.cpu_count() or 2))
    jobs = [(item, visual.visual_spec(), audio.audio_spec()) for item in media.items]
    if engine == "onnx":
        rows, skipped = _extract_onnx(jobs, visual, audio, workers)
    else:
        rows, skipped = _extract_torch(jobs, visual, audio, workers, batch_size)
    for entry in skipped:
        log.warning("skipping %s: %s", entry["path"], entry["reason"])
    if not rows:
        raise ValueError(f"no clip of {manifest_csv} could be decoded with both modalities")
    features = _to_feature_set(rows, media.class_names, split_seed)
    features.attrs = {
        "frontends": {"visual": visual.to_dict(), "audio": audio.to_dict()},
        "pretrained": [e for s in (visual, audio) if (e := pretrained_entry(s)) is not None],
        "class_names": media.class_names,
        "source_manifest": str(Path(manifest_csv).resolve()),
        "skipped": skipped,
        "engine": engine,
    }
    save_features(out_h5, features)
    return features


Rows = list[tuple[MediaItem, np.ndarray, np.ndarray]]


def _extract_onnx(jobs: list, visual: FrontendSpec, audio: FrontendSpec,
                  workers: int) -> tuple[Rows, list[dict]]:
    rows: Rows = []
    skipped: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="avindex-frontends-") as tmp:
        log.info("exporting both front-ends to ONNX for extraction")
        paths = {k: str(v) for k, v in export_frontends(visual, audio, Path(tmp)).items()}
        with get_context("spawn").Pool(workers, _init_onnx_worker, (paths,)) as pool, tqdm(
            total=len(jobs), desc="features", unit="clip"
        ) as bar:
            for item, vectors, err in pool.imap(embed_pair, jobs, chunksize=4):
                if vectors is None:
                    skipped.append({"path": str(item.path), "reason": err})
                else:
                    rows.append((item, *vectors))
                bar.update()
    return rows, skipped


def _extract_torch(jobs: list, visual: FrontendSpec, audio: FrontendSpec, workers: int,
                   batch_size: int) -> tuple[Rows, list[dict]]:
    extractor = FeatureExtractor(visual, audio)
    rows: Rows = []
    skipped: list[dict] = []
    with get_context("spawn").Pool(workers) as pool, tqdm(
        total=len(jobs), desc="features", unit="clip"
    ) as bar:
        decoded = pool.imap(decode_pair, jobs, chunksize=4)
        for chunk in _batches(decoded, batch_size):
            ok = [(item, m) for item, m, err in chunk if err is None]
            skipped += [{"path": str(item.path), "reason": err}
                        for item, _m, err in chunk if err is not None]
            if ok:
                vis, aud = extractor([m for _, m in ok])
                rows.extend((item, v, a) for (item, _), v, a in zip(ok, vis, aud, strict=True))
            bar.update(len(chunk))
    return rows, skipped


def _to_feature_set(rows, class_names: list[str], seed: int) -> FeatureSet:
    labels = np.array([item.label for item, _, _ in rows])
    splits = [item.split for item, _, _ in rows]
    if any(s is None for s in splits):
        log.info("manifest has no split column; assigning a stratified 70/10/20 split")
        splits = assign_splits(labels, seed)
    by_split: dict[str, Split | None] = {}
    for name in ("train", "val", "test"):
        idx = [i for i, s in enumerate(splits) if s == name]
        if not idx:
            by_split[name] = None
            continue
        by_split[name] = Split(
            np.stack([rows[i][1] for i in idx]),
            np.stack([rows[i][2] for i in idx]),
            labels[idx],
            [rows[i][0].media_id for i in idx],
        )
    if by_split["train"] is None or by_split["test"] is None:
        raise ValueError("the corpus needs clips in both the train and the test split")
    return FeatureSet(train=by_split["train"], test=by_split["test"], val=by_split["val"])
