"""Inception-v3 (ImageNet; the paper's visual extractor) from a weights file the user supplies.

The network is written here, table-driven, with torchvision's module names (`Conv2d_1a_3x3`,
`Mixed_5b.branch1x1`, …), so a state dict saved from `torchvision.models.inception_v3(...)`
loads as it is; torchvision is not a dependency. Input as torchvision's ImageNet weights expect
it with `transform_input=True` (their default): RGB scaled to [-1, 1], default 299 px. Per frame
the output is the 2048 numbers of the global average pool after `Mixed_7c` ("pool3", what
YouTube-8M's frame features start from, before their PCA to 1024); frames are averaged over
the clip's valid frames. `AuxLogits.*` and `fc.*` are accepted in the file and not used.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from avindex.training.frontends.pooling import length_mask, masked_mean
from avindex.training.frontends.user_weights import load_weights

FEATURE_DIM = 2048
MIN_SIZE = 75  # smaller frames shrink to nothing before Mixed_7c
LAYOUT = (
    "a torch state dict with torchvision's inception_v3 names (Conv2d_1a_3x3.conv.weight, "
    "….bn.running_var, Mixed_5b … Mixed_7c, optionally AuxLogits.* and fc.*), e.g. "
    "torch.save(torchvision.models.inception_v3(weights='IMAGENET1K_V1').state_dict(), "
    "'inception_v3.pth')"
)
Conv = tuple  # (name, out channels, kernel, stride, padding)


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: torchvision's BasicConv2d."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Mixed(nn.Module):
    """Parallel branches concatenated on channels.

    A branch is (pool, chain, fork): an optional 3x3 pooling ("avg": stride 1, "max": stride 2)
    first, then the convolutions of `chain` in order, then optionally two convolutions applied
    side by side to the chain's output (`fork`) and concatenated.
    """

    def __init__(self, cin: int, branches: list[tuple[str | None, list[Conv], list[Conv]]]) -> None:
        super().__init__()
        self.branches = branches
        for _pool, chain, fork in branches:
            channels = cin
            for name, cout, kernel, stride, padding in chain:
                self.add_module(name, ConvBN(channels, cout, kernel, stride, padding))
                channels = cout
            for name, cout, kernel, stride, padding in fork:
                self.add_module(name, ConvBN(channels, cout, kernel, stride, padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for pool, chain, fork in self.branches:
            y = x
            if pool == "avg":
                y = F.avg_pool2d(y, 3, stride=1, padding=1)
            elif pool == "max":
                y = F.max_pool2d(y, 3, stride=2)
            for conv in chain:
                y = getattr(self, conv[0])(y)
            if fork:
                y = torch.cat([getattr(self, conv[0])(y) for conv in fork], 1)
            outputs.append(y)
        return torch.cat(outputs, 1)


def _a(pool_features: int) -> list:
    return [(None, [("branch1x1", 64, 1, 1, 0)], []),
            (None, [("branch5x5_1", 48, 1, 1, 0), ("branch5x5_2", 64, 5, 1, 2)], []),
            (None, [("branch3x3dbl_1", 64, 1, 1, 0), ("branch3x3dbl_2", 96, 3, 1, 1),
                    ("branch3x3dbl_3", 96, 3, 1, 1)], []),
            ("avg", [("branch_pool", pool_features, 1, 1, 0)], [])]


def _b() -> list:
    return [(None, [("branch3x3", 384, 3, 2, 0)], []),
            (None, [("branch3x3dbl_1", 64, 1, 1, 0), ("branch3x3dbl_2", 96, 3, 1, 1),
                    ("branch3x3dbl_3", 96, 3, 2, 0)], []),
            ("max", [], [])]


def _c(c7: int) -> list:
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))  # (kernel, stride, padding)
    return [(None, [("branch1x1", 192, 1, 1, 0)], []),
            (None, [("branch7x7_1", c7, 1, 1, 0), ("branch7x7_2", c7, *row),
                    ("branch7x7_3", 192, *col)], []),
            (None, [("branch7x7dbl_1", c7, 1, 1, 0), ("branch7x7dbl_2", c7, *col),
                    ("branch7x7dbl_3", c7, *row), ("branch7x7dbl_4", c7, *col),
                    ("branch7x7dbl_5", 192, *row)], []),
            ("avg", [("branch_pool", 192, 1, 1, 0)], [])]


def _d() -> list:
    return [(None, [("branch3x3_1", 192, 1, 1, 0), ("branch3x3_2", 320, 3, 2, 0)], []),
            (None, [("branch7x7x3_1", 192, 1, 1, 0), ("branch7x7x3_2", 192, (1, 7), 1, (0, 3)),
                    ("branch7x7x3_3", 192, (7, 1), 1, (3, 0)),
                    ("branch7x7x3_4", 192, 3, 2, 0)], []),
            ("max", [], [])]


def _e() -> list:
    def pair(prefix: str) -> list:
        return [(f"{prefix}a", 384, (1, 3), 1, (0, 1)), (f"{prefix}b", 384, (3, 1), 1, (1, 0))]

    return [(None, [("branch1x1", 320, 1, 1, 0)], []),
            (None, [("branch3x3_1", 384, 1, 1, 0)], pair("branch3x3_2")),
            (None, [("branch3x3dbl_1", 448, 1, 1, 0), ("branch3x3dbl_2", 384, 3, 1, 1)],
             pair("branch3x3dbl_3")),
            ("avg", [("branch_pool", 192, 1, 1, 0)], [])]


# (name, input channels, branches) after the stem, in order
MIXED = [("Mixed_5b", 192, _a(32)), ("Mixed_5c", 256, _a(64)), ("Mixed_5d", 288, _a(64)),
         ("Mixed_6a", 288, _b()), ("Mixed_6b", 768, _c(128)), ("Mixed_6c", 768, _c(160)),
         ("Mixed_6d", 768, _c(160)), ("Mixed_6e", 768, _c(192)), ("Mixed_7a", 768, _d()),
         ("Mixed_7b", 1280, _e()), ("Mixed_7c", 2048, _e())]


class InceptionV3Net(nn.Module):
    """(images [N, 3, S, S] in [-1, 1]) -> [N, 2048] pool3 features; torchvision's names."""

    def __init__(self, with_heads: bool = False) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, 2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, 1, 1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        for name, cin, branches in MIXED:
            self.add_module(name, Mixed(cin, branches))
        if with_heads:  # only to describe a complete file: never run
            self.AuxLogits = nn.Module()
            self.AuxLogits.conv0 = ConvBN(768, 128, 1)
            self.AuxLogits.conv1 = ConvBN(128, 768, 5)
            self.AuxLogits.fc = nn.Linear(768, 1000)
            self.fc = nn.Linear(FEATURE_DIM, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name, _cin, _branches in MIXED:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


def expected_shapes() -> tuple[dict, dict]:
    """(required, optional) tensor shapes of a weights file."""
    with torch.device("meta"):
        complete = InceptionV3Net(with_heads=True).state_dict()
    shapes = {k: tuple(v.shape) for k, v in complete.items()}
    optional = {k: s for k, s in shapes.items()
                if k.startswith(("AuxLogits.", "fc.")) or k.endswith(".num_batches_tracked")}
    return {k: s for k, s in shapes.items() if k not in optional}, optional


def load_inception_v3(weights: str | Path, weights_sha256: str | None = None,
                      ) -> tuple[InceptionV3Net, str]:
    required, optional = expected_shapes()
    tensors, digest = load_weights(weights, required, optional, "Inception-v3", LAYOUT,
                                   weights_sha256)
    net = InceptionV3Net()  # batch-norm counters stay at their defaults when the file lacks them
    net.load_state_dict({k: v for k, v in tensors.items() if k in required}, strict=False)
    return net.eval(), digest


class InceptionV3Frames(nn.Module):
    """(frames uint8 [B, T, S, S, 3], num_frames [B]) -> [B, 2048] mean of per-frame pool3."""

    output_dim = FEATURE_DIM

    def __init__(self, weights: str, weights_sha256: str | None = None, size: int = 299) -> None:
        super().__init__()
        if size < MIN_SIZE:
            raise ValueError(f"Inception-v3 needs frames of at least {MIN_SIZE} px, got {size}")
        self.size = size
        self.net, self.weights_sha256 = load_inception_v3(weights, weights_sha256)

    def forward(self, frames: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = frames.shape
        x = frames.reshape(b * t, h, w, c).permute(0, 3, 1, 2).to(torch.float32)
        per_frame = self.net(x / 127.5 - 1.0).reshape(b, t, FEATURE_DIM)
        return masked_mean(per_frame, length_mask(num_frames, t))
