"""VGG19 (ImageNet; one of the paper's visual extractors) from a weights file the user supplies.

The network is defined here in plain torch with torchvision's module names, so a state dict
saved from `torchvision.models.vgg19(...)` loads as it is; torchvision is not a dependency.
Frames are normalised with the ImageNet mean/std inside the module. Per frame the output is
either `fc7` (default: the 4096 numbers after the second fully connected layer and its ReLU,
the classic "VGG19 feature") or `pool5` (the last convolution block, average-pooled: 512
numbers, and the classifier's weights are not needed). Frames are averaged over the clip's
valid frames.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from avindex.training.frontends.efficientnet import IMAGENET_MEAN, IMAGENET_STD
from avindex.training.frontends.pooling import length_mask, masked_mean
from avindex.training.frontends.user_weights import load_weights

# torchvision's configuration "E": channels per 3x3 convolution, "M" = 2x2 max pooling
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
LAYERS = {"fc7": 4096, "pool5": 512}  # output per frame
LAYOUT = (
    "a torch state dict with torchvision's vgg19 names (features.0.weight … features.34.bias, "
    "classifier.0/3/6.weight and .bias), e.g. torch.save(torchvision.models.vgg19("
    "weights='IMAGENET1K_V1').state_dict(), 'vgg19.pth')"
)


def vgg19_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for v in VGG19_CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            channels = int(v)
    return nn.Sequential(*layers)


def vgg19_classifier() -> nn.Sequential:
    """torchvision's classifier (fc6, fc7, fc8); dropout is inactive in eval mode."""
    return nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(4096, 1000),
    )


class VGG19Net(nn.Module):
    """torchvision's VGG19 module tree (`features`, `classifier`): the names a weights file has."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg19_features()
        self.classifier = vgg19_classifier()


def expected_shapes(layer: str) -> tuple[dict, dict]:
    """(required, optional) tensor shapes of a weights file for `layer`."""
    with torch.device("meta"):  # shapes only: no memory, no random initialisation
        shapes = {k: tuple(v.shape) for k, v in VGG19Net().state_dict().items()}
    needs_classifier = ("classifier.0.", "classifier.3.") if layer == "fc7" else ()
    required = {k: s for k, s in shapes.items()
                if k.startswith("features.") or k.startswith(needs_classifier)}
    return required, {k: s for k, s in shapes.items() if k not in required}


def load_vgg19(weights: str | Path, layer: str = "fc7",
               weights_sha256: str | None = None) -> tuple[nn.Sequential, nn.Sequential, str]:
    """(features, fc6+fc7 with their ReLUs or an empty Sequential for pool5, the file's sha256).

    Only the layers `layer` needs are kept, so nothing unused enters the ONNX graph.
    """
    if layer not in LAYERS:
        raise ValueError(f"unknown VGG19 layer {layer!r}; choose from {sorted(LAYERS)}")
    required, optional = expected_shapes(layer)
    tensors, digest = load_weights(weights, required, optional, "VGG19", LAYOUT, weights_sha256)
    with torch.device("meta"):
        net = VGG19Net()
    net.load_state_dict({k: tensors[k] for k in required}, strict=False, assign=True)
    head = net.classifier[:5] if layer == "fc7" else nn.Sequential()  # fc6, ReLU, -, fc7, ReLU
    return net.features.eval(), head.eval(), digest


class VGG19Frames(nn.Module):
    """(frames uint8 [B, T, S, S, 3], num_frames [B]) -> [B, 4096 or 512] mean over frames."""

    def __init__(self, weights: str, weights_sha256: str | None = None, layer: str = "fc7",
                 size: int = 224) -> None:
        super().__init__()
        self.size, self.layer = size, layer
        self.features, self.head, self.weights_sha256 = load_vgg19(weights, layer, weights_sha256)
        self.output_dim = LAYERS[layer]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, frames: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = frames.shape
        x = frames.reshape(b * t, h, w, c).permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.mean) / self.std
        x = self.features(x)
        if self.layer == "fc7":
            per_frame = self.head(F.adaptive_avg_pool2d(x, 7).flatten(1))
        else:
            per_frame = x.mean(dim=(2, 3))
        return masked_mean(per_frame.reshape(b, t, self.output_dim), length_mask(num_frames, t))
