"""Builders for the daemon tests: a tiny but valid model directory (media files come from
`avindex.tools.synthetic.write_clip`, ports from `avindex.tools.kafka_admin.free_port`).

The model is built with `onnx.helper` so the daemon tests never depend on the exporter (written
in parallel): each graph takes a masked mean of simple per-frame / per-sample statistics and
projects it to `dim` dimensions with a fixed random matrix. It is deterministic, honours the
padding contract (padded items equal items alone) and has a numpy twin for checking the encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from avindex.daemon.model_dir import compute_model_version, sha256_file

OPSET = 17


def _weights(seed: int, modality: str, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 0 if modality == "visual" else 1])
    w = rng.standard_normal((3, dim)).astype(np.float32)
    b = rng.standard_normal(dim).astype(np.float32)
    wv = (0.1 * rng.standard_normal((3, dim))).astype(np.float32)
    return w, b, wv


def _masked_mean_nodes(values: str, lengths: str, axis_len_source: str, prefix: str) -> list:
    """Nodes computing `{prefix}mask` [B, L] (1 for valid positions) and `{prefix}count` [B, 1]."""
    return [
        helper.make_node("Shape", [axis_len_source], [f"{prefix}shape"]),
        helper.make_node("Gather", [f"{prefix}shape", "one_i"], [f"{prefix}len"], axis=0),
        helper.make_node("Range", ["zero_i", f"{prefix}len", "one_i"], [f"{prefix}pos"]),
        helper.make_node("Unsqueeze", [lengths, "axis1"], [f"{prefix}len_col"]),
        helper.make_node("Less", [f"{prefix}pos", f"{prefix}len_col"], [f"{prefix}maskb"]),
        helper.make_node("Cast", [f"{prefix}maskb"], [f"{prefix}mask"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [f"{prefix}len_col"], [f"{prefix}count"], to=TensorProto.FLOAT),
    ]


def _head_nodes(feat: str) -> list:
    return [
        helper.make_node("MatMul", [feat, "W"], ["proj"]),
        helper.make_node("Add", ["proj", "B"], ["embedding"]),
        helper.make_node("MatMul", [feat, "WV"], ["vlog"]),
        helper.make_node("Exp", ["vlog"], ["variance"]),
    ]


def _common_inits(w, b, wv) -> list:
    return [
        numpy_helper.from_array(np.array(0, np.int64), "zero_i"),
        numpy_helper.from_array(np.array(1, np.int64), "one_i"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(wv, "WV"),
    ]


def visual_graph(dim: int, seed: int) -> onnx.ModelProto:
    """frames uint8 [B,T,S,S,3] -> masked mean over T of the per-frame mean RGB -> [B,dim]."""
    w, b, wv = _weights(seed, "visual", dim)
    nodes = [
        helper.make_node("Cast", ["frames"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["xf", "c255"], ["x"]),
        helper.make_node("ReduceMean", ["x"], ["per_frame"], axes=[2, 3], keepdims=0),  # [B,T,3]
        *_masked_mean_nodes("per_frame", "num_frames", "frames", "m_"),
        helper.make_node("Unsqueeze", ["m_mask", "axis2"], ["mask3"]),  # [B,T,1]
        helper.make_node("Mul", ["per_frame", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),  # [B,3]
        helper.make_node("Div", ["summed", "m_count"], ["feat"]),
        *_head_nodes("feat"),
    ]
    inits = [*_common_inits(w, b, wv), numpy_helper.from_array(np.array(255, np.float32), "c255"),
             numpy_helper.from_array(np.array([2], np.int64), "axis2")]
    graph = helper.make_graph(
        nodes, "tiny_visual",
        [helper.make_tensor_value_info("frames", TensorProto.UINT8,
                                       ["batch", "time", "height", "width", 3]),
         helper.make_tensor_value_info("num_frames", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim]),
         helper.make_tensor_value_info("variance", TensorProto.FLOAT, ["batch", dim])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def audio_graph(dim: int, seed: int) -> onnx.ModelProto:
    """waveform [B,N] -> masked means of x, |x| and x^2 -> [B,dim]."""
    w, b, wv = _weights(seed, "audio", dim)
    nodes = [
        *_masked_mean_nodes("waveform", "num_samples", "waveform", "m_"),
        helper.make_node("Mul", ["waveform", "m_mask"], ["x"]),
        helper.make_node("Abs", ["x"], ["ax"]),
        helper.make_node("Mul", ["x", "x"], ["x2"]),
        helper.make_node("ReduceSum", ["x", "axis1"], ["s1"], keepdims=1),
        helper.make_node("ReduceSum", ["ax", "axis1"], ["s2"], keepdims=1),
        helper.make_node("ReduceSum", ["x2", "axis1"], ["s3"], keepdims=1),
        helper.make_node("Concat", ["s1", "s2", "s3"], ["sums"], axis=1),  # [B,3]
        helper.make_node("Div", ["sums", "m_count"], ["feat"]),
        *_head_nodes("feat"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_audio",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"]),
         helper.make_tensor_value_info("num_samples", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim]),
         helper.make_tensor_value_info("variance", TensorProto.FLOAT, ["batch", dim])],
        _common_inits(w, b, wv))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def reference_embedding(modality: str, item: np.ndarray, dim: int = 8, seed: int = 0):
    """The numpy twin of the graphs above: (embedding, variance) for one unpadded item."""
    w, b, wv = _weights(seed, modality, dim)
    if modality == "visual":
        feat = (item.astype(np.float32) / 255.0).mean(axis=(1, 2)).mean(axis=0)
    else:
        x = item.astype(np.float32)
        feat = np.array([x.mean(), np.abs(x).mean(), (x * x).mean()], np.float32)
    return feat @ w + b, np.exp(feat @ wv)


def build_model_dir(out: Path, *, modalities=("visual", "audio"), dim: int = 8, seed: int = 0,
                    fps: float = 2.0, size: int = 32, max_frames: int = 8,
                    sample_rate: int = 8000, max_seconds: float = 4.0) -> Path:
    """Write a complete, valid model directory (manifest with real hashes) and return it."""
    out.mkdir(parents=True, exist_ok=True)
    entries, hashes = {}, {}
    if "visual" in modalities:
        onnx.save(visual_graph(dim, seed), out / "visual.onnx")
        hashes["visual.onnx"] = sha256_file(out / "visual.onnx")
        entries["visual"] = {
            "file": "visual.onnx", "sha256": hashes["visual.onnx"], "fp16_file": None,
            "fp16_sha256": None, "inputs": ["frames", "num_frames"],
            "outputs": ["embedding", "variance"],
            "preprocessing": {"fps": fps, "size": size, "max_frames": max_frames,
                              "frontend": "mean-rgb"}}
    if "audio" in modalities:
        onnx.save(audio_graph(dim, seed), out / "audio.onnx")
        hashes["audio.onnx"] = sha256_file(out / "audio.onnx")
        entries["audio"] = {
            "file": "audio.onnx", "sha256": hashes["audio.onnx"], "fp16_file": None,
            "fp16_sha256": None, "inputs": ["waveform", "num_samples"],
            "outputs": ["embedding", "variance"],
            "preprocessing": {"sample_rate": sample_rate, "max_seconds": max_seconds,
                              "frontend": "moments"}}
    manifest = {
        "schema_version": 1, "model_id": "tiny-test", "model_version": "0" * 16,
        "embedding_dim": dim, "distance": "Cosine", "created_at": "2026-01-01T00:00:00Z",
        "modalities": entries, "pretrained": [],
        "training_data": {"corpus": "none"}, "metrics": {},
    }
    manifest["model_version"] = compute_model_version(manifest, hashes)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
