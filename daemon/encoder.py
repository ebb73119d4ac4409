"""ONNX Runtime sessions for the model directory's graphs: batch embedding with zero padding.

One session per modality. The execution provider is chosen once (TensorRT when configured, then
CUDA, then CPU) and what ONNX Runtime actually registered is reported, because a CUDA provider
that fails to initialise silently leaves only the CPU. Whether inference works is the pipeline's
to judge (it reports it to the health probes), not the encoder's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import numpy as np
import onnxruntime as ort

from avindex.daemon.media import DecodedMedia, pad_batch
from avindex.daemon.model_dir import ModelDir
from avindex.daemon.ports import Embedder, Embeddings

__all__ = ["EncodeError", "Encoder", "choose_providers", "embed_decoded"]

log = logging.getLogger(__name__)

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# Inputs each graph must have (docs/model-directory.md) and the dtypes the daemon feeds.
EXPECTED_INPUTS = {
    "visual": {"frames": "tensor(uint8)", "num_frames": "tensor(int64)"},
    "audio": {"waveform": ("tensor(float)", "tensor(float16)"), "num_samples": "tensor(int64)"},
}
OUTPUTS = ("embedding", "variance")


class EncodeError(RuntimeError):
    """The model cannot be run as the manifest describes (a deployment problem, not an item's)."""


def choose_providers(
    available: Sequence[str], device: str, tensorrt: bool, device_id: int = 0, fp16: bool = False
) -> tuple[list, list[str]]:
    """Providers to request, best first, and notes explaining any fallback.

    Pure so it can be tested without a GPU: `available` is `ort.get_available_providers()`.
    """
    wanted: list = []
    notes: list[str] = []
    if device in ("auto", "cuda"):
        if tensorrt:
            if TRT in available:
                wanted.append((TRT, {"device_id": device_id, "trt_fp16_enable": fp16}))
            else:
                notes.append("TensorRT was requested but this onnxruntime build has no "
                             "TensorrtExecutionProvider")
        if CUDA in available:
            wanted.append((CUDA, {"device_id": device_id}))
        elif device == "cuda" or tensorrt:
            notes.append("CUDA was requested but this onnxruntime build has no "
                         "CUDAExecutionProvider (install the `gpu` extra, not `cpu`); using CPU")
    wanted.append(CPU)
    return wanted, notes


def _provider_name(entry) -> str:
    return entry[0] if isinstance(entry, tuple) else entry


class Encoder:
    """Embeds batches of decoded frames or waveforms with the model directory's graphs."""

    def __init__(
        self,
        model: ModelDir,
        *,
        device: str = "auto",
        tensorrt: bool = False,
        fp16: bool = False,
        cuda_device_id: int = 0,
        intra_op_threads: int = 0,
        max_batch: int = 32,
    ) -> None:
        self.model = model
        self.max_batch = max_batch
        self.providers: dict[str, str] = {}
        self._sessions: dict[str, ort.InferenceSession] = {}

        wanted, notes = choose_providers(ort.get_available_providers(), device, tensorrt,
                                         cuda_device_id, fp16)
        for note in notes:
            log.warning(note)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        on_gpu = _provider_name(wanted[0]) != CPU
        for name, graph in model.graphs.items():
            path = graph.fp16_path if (fp16 and on_gpu and graph.fp16_path) else graph.path
            try:
                session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise EncodeError(f"{name}: ONNX Runtime cannot load {path.name}: {exc}") from exc
            self._check_signature(name, session)
            used = session.get_providers()[0]
            if used != _provider_name(wanted[0]):
                log.warning("%s: %s was requested but ONNX Runtime fell back to %s", name,
                            _provider_name(wanted[0]), used)
            self.providers[name] = used
            self._sessions[name] = session
            log.info("%s graph %s loaded on %s", name, path.name, used,
                     extra={"fields": {"modality": name, "provider": used, "file": path.name}})

    @property
    def modalities(self) -> list[str]:
        return list(self._sessions)

    def _check_signature(self, name: str, session: ort.InferenceSession) -> None:
        inputs = {i.name: i.type for i in session.get_inputs()}
        for input_name, dtypes in EXPECTED_INPUTS[name].items():
            allowed = (dtypes,) if isinstance(dtypes, str) else dtypes
            if inputs.get(input_name) not in allowed:
                raise EncodeError(f"{name}: graph input {input_name!r} should be {allowed[0]}, "
                                  f"graph has {inputs}")
        outputs = {o.name: o.shape for o in session.get_outputs()}
        for out in OUTPUTS:
            if out not in outputs:
                raise EncodeError(f"{name}: graph has no output {out!r} (has {list(outputs)})")
            dim = outputs[out][-1] if outputs[out] else None
            if isinstance(dim, int) and dim != self.model.embedding_dim:
                raise EncodeError(f"{name}: output {out!r} has {dim} dimensions, manifest says "
                                  f"{self.model.embedding_dim}")

    # ----------------------------------------------------------------------------------- embed
    def embed(self, modality: str, items: Sequence[np.ndarray]) -> Embeddings:
        """Embed items of one modality, max_batch at a time; shapes [n, dim]."""
        if not items:
            dim = self.model.embedding_dim
            return Embeddings(np.zeros((0, dim), np.float32), np.zeros((0, dim), np.float32))
        parts = [self._run(modality, items[i : i + self.max_batch])
                 for i in range(0, len(items), self.max_batch)]
        return Embeddings(np.concatenate([p.embedding for p in parts]),
                          np.concatenate([p.variance for p in parts]))

    def _feeds(self, modality: str, items: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        if min(len(x) for x in items) < 1:
            raise ValueError(f"{modality}: every item needs at least one frame/sample")
        if modality == "visual":
            batch, lengths = pad_batch(items, np.uint8)
            return {"frames": batch, "num_frames": lengths}
        types = {i.name: i.type for i in self._sessions[modality].get_inputs()}
        dtype = np.float16 if types["waveform"] == "tensor(float16)" else np.float32
        batch, lengths = pad_batch(items, dtype)
        return {"waveform": batch, "num_samples": lengths}

    def _run(self, modality: str, items: Sequence[np.ndarray]) -> Embeddings:
        session = self._sessions[modality]
        feeds = self._feeds(modality, items)
        embedding, variance = session.run(list(OUTPUTS), feeds)
        embedding = np.asarray(embedding, dtype=np.float32)
        variance = np.asarray(variance, dtype=np.float32)
        expected = (len(items), self.model.embedding_dim)
        if embedding.shape != expected or variance.shape != expected:
            raise EncodeError(f"{modality}: graph returned {embedding.shape}/{variance.shape}, "
                              f"expected {expected}")
        return Embeddings(embedding, variance)

    # --------------------------------------------------------------------------------- warm-up
    def warm_up(self) -> dict[str, float]:
        """Run every graph once at the largest batch and longest input; returns seconds each.

        The first run allocates memory and (on GPUs) builds kernels or TensorRT engines, so it
        happens before the first message rather than inside someone's latency budget.
        """
        timings = {}
        for modality in self._sessions:
            items = [self.max_input(modality)] * self.max_batch
            start = time.perf_counter()
            self.embed(modality, items)
            timings[modality] = time.perf_counter() - start
        return timings

    def max_input(self, modality: str) -> np.ndarray:
        """The longest input the decoder can produce for a modality (zeros)."""
        if modality == "visual":
            spec = self.model.visual_spec()
            assert spec is not None
            return np.zeros((spec.max_frames, spec.size, spec.size, 3), np.uint8)
        spec_a = self.model.audio_spec()
        assert spec_a is not None
        return np.zeros(int(spec_a.max_seconds * spec_a.sample_rate), np.float32)


def embed_decoded(encoder: Embedder, decoded: DecodedMedia,
                  modalities: Iterable[str] | None = None) -> dict[str, tuple[np.ndarray, float]]:
    """One item's (embedding, mean variance) per modality it has (or of `modalities`).

    `avindex embed` and search embed single items through here, with the daemon's encoder.
    """
    out = {}
    for modality in decoded.modalities if modalities is None else modalities:
        item = decoded.frames if modality == "visual" else decoded.audio
        result = encoder.embed(modality, [item])
        out[modality] = (result.embedding[0], float(result.variance[0].mean()))
    return out
