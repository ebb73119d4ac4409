"""Full per-modality chains (decoded media -> front-end -> VAE-CCA encoder) as torch modules.

These are what the ONNX graphs contain: one module from the daemon's decoded arrays to the
shared-space embedding and its variance.
"""

from __future__ import annotations

import torch
from torch import nn


class VisualChain(nn.Module):
    """(frames uint8 [B, T, S, S, 3], num_frames [B]) -> (embedding [B, K], variance [B, K])."""

    def __init__(self, frontend: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.frontend, self.model = frontend, model

    def forward(
        self, frames: torch.Tensor, num_frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.model.encode_visual(self.frontend(frames, num_frames))
        return mu, torch.exp(logvar)


class AudioChain(nn.Module):
    """(waveform float32 [B, N], num_samples [B]) -> (embedding [B, K], variance [B, K])."""

    def __init__(self, frontend: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.frontend, self.model = frontend, model

    def forward(
        self, waveform: torch.Tensor, num_samples: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.model.encode_audio(self.frontend(waveform, num_samples))
        return mu, torch.exp(logvar)
