"""fp16 variants of exported graphs, for GPU execution providers."""

from __future__ import annotations

from pathlib import Path

import onnx

__all__ = ["convert_fp16"]


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and activations inside, fp32/uint8/int64 at the inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # Reductions and exp/log on long spectrogram axes lose too much in fp16: keep them fp32.
    keep = ["ReduceSum", "ReduceMean", "ReduceMax", "Exp", "Log", "Softplus", "CumSum", "Sqrt",
            "Div", "Pow", "Sigmoid", "Range", "Less", "Cast", "Einsum"]
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=keep,
                                         disable_shape_infer=True)
    onnx.save(converted, str(dst))
    return dst
