"""A weight-free audio front-end: speech-weighted statistics of a log-mel spectrogram.

Spoken words are short and sit anywhere in a clip, among silence and noise. Frames are weighted
by how close their energy is to the loudest frame (a soft voice-activity detector), the
spectrogram is normalised for loudness, and the weighted frames are summarised as their mean,
their standard deviation and the means of `segments` consecutive parts of the speech mass (so
the order of sounds inside a word survives pooling). Everything is differentiable tensor code
with no learned weights, so it exports to ONNX with the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from avindex.training.frontends.pooling import length_mask
from avindex.training.frontends.spectrogram import PowerMelSpectrogram


class LogMelSpeechStats(nn.Module):
    """(waveform [B, N], num_samples [B]) -> [B, (segments + 2) * n_mels]."""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 64,
        fmin: float = 60.0,
        fmax: float = 7600.0,
        segments: int = 4,
        activity_db: float = 25.0,
    ) -> None:
        super().__init__()
        self.spectrogram = PowerMelSpectrogram(sample_rate, n_fft, hop_length, n_mels, fmin, fmax)
        self.segments = segments
        self.activity_nepers = activity_db / 10.0 * 2.302585  # dB below peak -> natural log
        self.output_dim = (segments + 2) * n_mels

    def forward(self, waveform: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        mel, frames = self.spectrogram(waveform, num_samples)  # (B, M, F), (B,)
        logmel = torch.log(mel + 1e-6)  # (B, M, F)
        valid = length_mask(frames, logmel.shape[2])  # (B, F)
        energy = torch.log(mel.sum(dim=1) + 1e-6)  # (B, F)
        peak = (energy - (1.0 - valid) * 1e4).amax(dim=1, keepdim=True)  # loudest valid frame
        active = torch.sigmoid(2.0 * (energy - peak + self.activity_nepers)) * valid  # (B, F)
        weights = active / active.sum(dim=1, keepdim=True).clamp_min(1e-6)  # sums to 1

        gain = (logmel.mean(dim=1) * weights).sum(dim=1, keepdim=True)  # (B, 1) loudness
        logmel = logmel - gain.unsqueeze(1)
        mean = torch.einsum("bmf,bf->bm", logmel, weights)
        var = torch.einsum("bmf,bf->bm", (logmel - mean.unsqueeze(2)) ** 2, weights)
        parts = [mean, torch.sqrt(var + 1e-6)]

        position = torch.cumsum(weights, dim=1) - 0.5 * weights  # (B, F) in [0, 1]
        for k in range(self.segments):
            lo, hi = k / self.segments, (k + 1) / self.segments
            inside = torch.sigmoid(40.0 * (position - lo)) * torch.sigmoid(40.0 * (hi - position))
            w = weights * inside
            w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-6)
            parts.append(torch.einsum("bmf,bf->bm", logmel, w))
        return torch.cat(parts, dim=1)
