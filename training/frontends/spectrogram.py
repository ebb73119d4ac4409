"""Mel spectrograms as plain tensor ops (a strided convolution with a windowed DFT basis).

A convolution instead of torch.stft keeps the exported ONNX graph to standard operators that
every execution provider (CPU, CUDA, TensorRT) runs fast.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from avindex.training.frontends.pooling import length_mask


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)  # HTK formula


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, unit_sum: bool = False,
    mel_domain: bool = False,
) -> np.ndarray:
    """Triangular HTK-mel filters, (n_mels, n_fft // 2 + 1).

    unit_sum=True scales each filter to sum to 1 (Essentia's 'unit_sum', used by aiSFX);
    otherwise filters peak at 1. mel_domain=True makes the triangles linear in mel rather than
    in Hz (TensorFlow's and VGGish's mel matrix).
    """
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    if mel_domain:
        freqs = hz_to_mel(freqs)
    else:
        edges = mel_to_hz(edges)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - freqs[None, :]) / np.maximum(upper - centre, 1e-9)
    bank = np.clip(np.minimum(rising, falling), 0.0, None)
    if unit_sum:
        bank = bank / np.maximum(bank.sum(axis=1, keepdims=True), 1e-12)
    return bank.astype(np.float32)


class PowerMelSpectrogram(nn.Module):
    """(waveform [B, N], num_samples [B]) -> (mel power [B, n_mels, F], valid frames [B])."""

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_mels: int,
        fmin: float,
        fmax: float,
        unit_sum: bool = False,
        win_length: int | None = None,
        magnitude: bool = False,
        bank: np.ndarray | None = None,
    ) -> None:
        """win_length < n_fft: frames of win_length samples, zero-padded to n_fft for the DFT
        (VGGish); magnitude: filter |X| instead of |X|^2; bank: a ready (n_mels, K) filterbank."""
        super().__init__()
        self.n_fft, self.hop_length, self.magnitude = n_fft, hop_length, magnitude
        self.win_length = win_length or n_fft  # samples per frame
        n = np.arange(self.win_length)
        window = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / self.win_length)  # periodic Hann
        k = np.arange(n_fft // 2 + 1)[:, None]
        phase = 2.0 * math.pi * k * n[None, :] / n_fft
        basis = np.concatenate([np.cos(phase) * window, -np.sin(phase) * window])  # (2K, win)
        self.register_buffer("dft", torch.from_numpy(basis.astype(np.float32)).unsqueeze(1))
        if bank is None:
            bank = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, unit_sum)
        self.register_buffer("mel", torch.from_numpy(bank))  # (M, K)

    def forward(
        self, waveform: torch.Tensor, num_samples: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        waveform = waveform * length_mask(num_samples, waveform.shape[1])  # zero any padding
        short = max(0, self.win_length - waveform.shape[1])
        if short:
            waveform = F.pad(waveform, (0, short))
        spec = F.conv1d(waveform.unsqueeze(1), self.dft, stride=self.hop_length)  # (B, 2K, F)
        real, imag = spec.chunk(2, dim=1)
        power = real * real + imag * imag  # (B, K, F)
        if self.magnitude:
            power = torch.sqrt(power)
        mel = torch.matmul(self.mel, power)  # (B, M, F)
        frames = (num_samples - self.win_length).clamp_min(0) // self.hop_length + 1
        return mel, frames
