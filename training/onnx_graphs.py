"""torch -> ONNX for per-modality chains (front-end alone, or front-end + encoder head), with a
parity check against PyTorch.

Training runs its front-ends through these graphs (`features.py`, engine `onnx`) and the
exporter writes the model directory's graphs with them, so both see the same graph.

The dynamo exporter (torch.export) is used because it keeps shape arithmetic symbolic: the
front-ends pad short inputs by an amount computed from the input length, which the legacy
tracer would freeze to the example's value.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 18
OUTPUT_NAMES = ["embedding", "variance"]
INPUT_NAMES = {"visual": ["frames", "num_frames"], "audio": ["waveform", "num_samples"]}


def example_inputs(modality: str, decode: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Small example batch with different lengths per item (so nothing specialises on it)."""
    gen = torch.Generator().manual_seed(0)
    if modality == "visual":
        s = int(decode["size"])
        frames = torch.randint(0, 256, (2, 3, s, s, 3), generator=gen, dtype=torch.uint8)
        return frames, torch.tensor([3, 2], dtype=torch.int64)
    n = int(decode["sample_rate"] * 3)
    wave = (torch.rand((2, n), generator=gen) - 0.5) * 0.2
    return wave, torch.tensor([n, n // 2], dtype=torch.int64)


def export_chain(chain: nn.Module, modality: str, decode: dict, path: Path,
                 output_names: list[str] | None = None) -> Path:
    """Export one chain with dynamic batch and length axes; returns the written path.

    `output_names` defaults to the model directory's (embedding, variance); a bare front-end
    (feature extraction) has one output.
    """
    chain = chain.eval()
    inputs = example_inputs(modality, decode)
    batch = torch.export.Dim("batch", min=1, max=4096)
    if modality == "visual":
        time_dim = torch.export.Dim("time", min=1, max=4096)
        shapes = ({0: batch, 1: time_dim}, {0: batch})
    else:
        samples = torch.export.Dim("samples", min=2, max=2**31 - 2)
        shapes = ({0: batch, 1: samples}, {0: batch})
    path.parent.mkdir(parents=True, exist_ok=True)
    for noisy in ("onnx_ir", "onnxscript"):  # INFO lines per graph pass drown the build log
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            chain,
            inputs,
            dynamo=True,
            input_names=INPUT_NAMES[modality],
            output_names=output_names or OUTPUT_NAMES,
            dynamic_shapes=shapes,
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))
    return path


def onnx_session(path: Path, providers: list[str] | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def parity(chain: nn.Module, path: Path, inputs: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Largest |ONNX Runtime - PyTorch| of the embedding and of log(variance).

    The variance is compared in log space: it is exp(logvar) and spans orders of magnitude, so
    an absolute difference on it says nothing about the graph's correctness.
    """
    session = onnx_session(path)
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
    with torch.inference_mode():
        mu, var = (t.numpy() for t in chain(*inputs))
    return {
        "embedding": float(np.abs(got[0] - mu).max()),
        "log_variance": float(np.abs(np.log(got[1]) - np.log(var)).max()),
    }
