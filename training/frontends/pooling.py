"""Masked pooling over a padded time axis."""

from __future__ import annotations

import torch


def length_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(B,) valid lengths -> (B, steps) float mask, 1 for valid steps."""
    positions = torch.arange(steps, device=lengths.device).unsqueeze(0)  # (1, T)
    return (positions < lengths.unsqueeze(1)).to(torch.float32)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, T, D), mask (B, T) -> (B, D) mean over the valid steps (at least one assumed)."""
    weights = mask.unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
