"""aiSFX (ISMIR 2022 sound-effects embedding) re-implemented here, with its published weights.

The `aisfx` package pins numpy 1.23 and librosa 0.9.2, so it is never a dependency: we define the
network (a 4-block VGG-style CNN over 96-band mel spectrograms, 512-d output) and read the
checkpoint file from an installed copy or from a wheel fetched with
`pip download --no-deps aisfx`. Weights: CC-BY-4.0 (code MIT), see docs/frontends.md.
Preprocessing follows the package: 44.1 kHz, 2048-sample Hann frames with hop 1024, 96 HTK mel
bands with unit-sum filters, log10(1e4 x + 1) scaled by 1/9.4578, blocks of 100 frames (~2.3 s)
with 50 % overlap; block embeddings are averaged over the item.
"""

from __future__ import annotations

import importlib.util
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from avindex.training.frontends.efficientnet import MissingWeightsError
from avindex.training.frontends.pooling import length_mask, masked_mean
from avindex.training.frontends.spectrogram import PowerMelSpectrogram

SAMPLE_RATE = 44100
N_FFT, HOP = 2048, 1024
N_MELS = 96
BLOCK_FRAMES, BLOCK_HOP = 100, 50
LOG_SCALE_MAX = 9.457798957824707  # the package's 'original' min-max normalisation
FEATURE_DIM = 512
CHECKPOINT_IN_PACKAGE = "aisfx/models/checkpoint.pth"
HOW_TO_INSTALL = (
    "aiSFX weights are missing. Get them with `pip download --no-deps aisfx -d ~/.cache/avindex` "
    "(or `pip install --no-deps aisfx`), or set AVINDEX_AISFX_CHECKPOINT to checkpoint.pth"
)


def _candidate_wheels() -> list[Path]:
    dirs = [Path(os.environ.get("AVINDEX_WEIGHTS_DIR", "~/.cache/avindex")).expanduser()]
    return [w for d in dirs if d.is_dir() for w in sorted(d.glob("aisfx-*.whl"))]


def read_aisfx_checkpoint() -> bytes:
    """The checkpoint bytes: $AVINDEX_AISFX_CHECKPOINT, an installed `aisfx`, or a cached wheel."""
    explicit = os.environ.get("AVINDEX_AISFX_CHECKPOINT")
    if explicit:
        return Path(explicit).expanduser().read_bytes()
    spec = importlib.util.find_spec("aisfx")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "models" / "checkpoint.pth"
        if path.is_file():
            return path.read_bytes()
    for wheel in _candidate_wheels():
        with zipfile.ZipFile(wheel) as zf:
            if CHECKPOINT_IN_PACKAGE in zf.namelist():
                return zf.read(CHECKPOINT_IN_PACKAGE)
    raise MissingWeightsError(HOW_TO_INSTALL)


class _ConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU, then max pooling (names match the checkpoint)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, pool) if pool > 1 else x


class AisfxNet(nn.Module):
    """(blocks [N, 100 frames, 96 mels]) -> [N, 512]: mean over frequency, max over time."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.conv_block1 = _ConvBlock(1, width)
        self.conv_block2 = _ConvBlock(width, width * 2)
        self.conv_block3 = _ConvBlock(width * 2, width * 4)
        self.conv_block4 = _ConvBlock(width * 4, width * 8)

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        x = blocks.unsqueeze(1)  # (N, 1, T, M)
        x = self.conv_block1(x, 2)
        x = self.conv_block2(x, 2)
        x = self.conv_block3(x, 2)
        x = self.conv_block4(x, 1)
        return x.mean(dim=3).amax(dim=2)


def load_aisfx_net() -> AisfxNet:
    # The pickle holds numpy scalars (dataset sizes); allow just those, not arbitrary code.
    allowed = [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype,
               type(np.dtype(np.int64))]
    with torch.serialization.safe_globals(allowed):
        weights, _datasets = torch.load(
            io.BytesIO(read_aisfx_checkpoint()), map_location="cpu", weights_only=True
        )
    prefix = "embedding_net."
    state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    net = AisfxNet()
    net.load_state_dict(state)
    return net.eval()


class AisfxEmbedding(nn.Module):
    """(waveform [B, N] at 44.1 kHz, num_samples [B]) -> [B, 512] mean of block embeddings."""

    output_dim = FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        self.spectrogram = PowerMelSpectrogram(
            SAMPLE_RATE, N_FFT, HOP, N_MELS, 0.0, SAMPLE_RATE / 2, unit_sum=True
        )
        self.net = load_aisfx_net()

    def forward(self, waveform: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        waveform = waveform * length_mask(num_samples, waveform.shape[1])
        peak = waveform.abs().amax(dim=1, keepdim=True).clamp_min(1e-4)
        mel, frames = self.spectrogram(waveform / peak, num_samples)  # (B, M, F)
        spec = torch.log10(mel * 1e4 + 1.0) / LOG_SCALE_MAX
        spec = spec * length_mask(frames, spec.shape[2]).unsqueeze(1)  # frames past the end = 0
        short = max(0, BLOCK_FRAMES - spec.shape[2])
        if short:
            spec = F.pad(spec, (0, short))
        blocks = spec.unfold(2, BLOCK_FRAMES, BLOCK_HOP)  # (B, M, nb, 100)
        b, m, nb, t = blocks.shape
        blocks = blocks.permute(0, 2, 3, 1).reshape(b * nb, t, m)
        emb = self.net(blocks).reshape(b, nb, FEATURE_DIM)
        n_blocks = (frames - BLOCK_FRAMES).clamp_min(0) // BLOCK_HOP + 1  # blocks that start
        return masked_mean(emb, length_mask(n_blocks, nb))
