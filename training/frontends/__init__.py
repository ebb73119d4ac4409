"""Pretrained and weight-free feature extractors ("front-ends") as torch modules.

Each front-end maps what the daemon decodes to one pooled vector per item:
visual ones take `(frames uint8 [B, T, H, W, 3], num_frames int64 [B])`, audio ones take
`(waveform float32 [B, N], num_samples int64 [B])`. Padding never changes an item's output.
They are pure tensor code so that the exporter can put them inside the ONNX graphs.
"""

from avindex.training.frontends.registry import (
    FrontendSpec,
    build_audio_frontend,
    build_visual_frontend,
    default_audio_spec,
    default_visual_spec,
)

__all__ = [
    "FrontendSpec",
    "build_audio_frontend",
    "build_visual_frontend",
    "default_audio_spec",
    "default_visual_spec",
]
