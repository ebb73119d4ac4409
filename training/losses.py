"""The VAE-CCA loss terms, one function each, as in the authors' public code (plus deep CCA).

    loss = 1e-4 * VAE + 1 * label + 1e-3 * correlation + 0.1 * pair + 0.01 * centre  [+ w * DCCA]

Shapes: B items per batch, K latent dims, C classes, D input dims. `labels` are class indices (B,).
Two deliberate departures from the public code, both documented in docs/training.md:
- the centre loss uses learned class centres (Wen et al. 2016) shared by both modalities, updated
  by their own rule with rate alpha; the public code re-draws them at random on every call;
- norms use torch.linalg.vector_norm (same value as sqrt(sum(x^2)), but a zero gradient instead of
  NaN when a difference is exactly zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossWeights:
    vae: float = 1e-4
    label: float = 1.0
    corr: float = 1e-3
    pair: float = 0.1
    centre: float = 0.01
    dcca: float = 0.01  # only when the objective includes "dcca"; ~0.4 at K = 64 vs label ~1


def vae_loss(
    recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
    variational: bool = True,
) -> torch.Tensor:
    """MSE(recon, x) + 0.5 * sum(exp(logvar) + mu^2 - 1 - logvar) for one modality.

    As in the authors' code the MSE is a mean over all elements while the KL is a *sum* over the
    batch and the latent dimensions (so it grows with the batch size; the 1e-4 weight was tuned
    with B = 128). Without the variational part only the reconstruction error remains.
    """
    mse = F.mse_loss(recon, target)  # mean over (B, D)
    if not variational:
        return mse
    kl = 0.5 * torch.sum(torch.exp(logvar) + mu.pow(2) - 1.0 - logvar)  # sum over (B, K)
    return mse + kl


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean L2 norm of (prediction - one-hot) for one modality: logits (B, C), labels (B,)."""
    onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)  # (B, C)
    return torch.linalg.vector_norm(logits - onehot, dim=1).mean()


def _half_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """theta = cos(x_i, y_j) / 2 for all pairs: (B, K), (B', K) -> (B, B')."""
    norms = x.norm(dim=1, keepdim=True) @ y.norm(dim=1, keepdim=True).T  # (B, B')
    return (x @ y.T) / norms.clamp(min=1e-6) / 2.0


def _pair_log_likelihood(theta: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """mean(log(1 + e^theta) - S * theta); softplus is the same value without overflow."""
    return (F.softplus(theta) - same * theta).mean()


def correlation_loss(zv: torch.Tensor, za: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Category correlation over visual-visual, visual-audio and audio-audio pairs of a batch.

    Each latent (B, K) is first centred across its own K dimensions (not across the batch), as in
    the authors' code; S_ij = 1 where labels agree.
    """
    v = zv - zv.mean(dim=1, keepdim=True)  # (B, K)
    a = za - za.mean(dim=1, keepdim=True)  # (B, K)
    same = (labels[:, None] == labels[None, :]).to(zv.dtype)  # (B, B)
    return (
        _pair_log_likelihood(_half_cosine(v, v), same)
        + _pair_log_likelihood(_half_cosine(v, a), same)
        + _pair_log_likelihood(_half_cosine(a, a), same)
    )


def pair_distance(zv: torch.Tensor, za: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance between the paired latents (B, K) of one clip's two modalities."""
    return torch.linalg.vector_norm(zv - za, dim=1).mean()


class CentreLoss(nn.Module):
    """Centre loss with learned class centres (Wen et al., ECCV 2016), shared by both modalities.

    Value per modality as in the authors' code: lam/2 * mean_i(||f_i - c_{y_i}||^2 / n_{y_i}),
    n_y = occurrences of class y in the batch; the two modalities are averaged (0.5 each).
    The centres are buffers, not parameters: the network gets gradients through the features only,
    and `update()` moves the centres with Wen et al.'s rule
        c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - f_i) / (1 + n_j).
    A class's centre starts at the mean of its first batch (no random draw at all).
    """

    def __init__(self, num_classes: int, dim: int, alpha: float = 0.5, lam: float = 0.5) -> None:
        super().__init__()
        self.alpha, self.lam = alpha, lam
        self.register_buffer("centres", torch.zeros(num_classes, dim))  # (C, K)
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))  # (C,)

    def term(self, feature: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One modality: features (B, K), labels (B,) -> scalar."""
        counts = torch.bincount(labels, minlength=self.centres.shape[0]).to(feature.dtype)  # (C,)
        sq = (feature - self.centres[labels]).pow(2).sum(dim=1)  # (B,)
        return self.lam / 2 * torch.mean(sq / counts[labels])

    def forward(self, zv: torch.Tensor, za: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._initialise_new(torch.cat([zv, za]).detach(), torch.cat([labels, labels]))
        return 0.5 * self.term(zv, labels) + 0.5 * self.term(za, labels)

    @torch.no_grad()
    def _initialise_new(self, feature: torch.Tensor, labels: torch.Tensor) -> None:
        for c in labels.unique():
            if not self.seen[c]:
                self.centres[c] = feature[labels == c].mean(dim=0)
                self.seen[c] = True

    @torch.no_grad()
    def update(self, zv: torch.Tensor, za: torch.Tensor, labels: torch.Tensor) -> None:
        """Wen et al.'s centre step, using both modalities' (detached) features of the batch."""
        feature = torch.cat([zv, za]).detach()  # (2B, K)
        labels = torch.cat([labels, labels])  # (2B,)
        num = torch.zeros_like(self.centres).index_add_(0, labels, self.centres[labels] - feature)
        counts = torch.bincount(labels, minlength=self.centres.shape[0]).to(feature.dtype)
        self.centres -= self.alpha * num / (1.0 + counts[:, None])  # (C, K)


def dcca_loss(
    h1: torch.Tensor, h2: torch.Tensor, r1: float = 1e-3, r2: float = 1e-3, top_k: int = 0,
    eps: float = 1e-9,
) -> torch.Tensor:
    """Negative sum of the top-k canonical correlations of two views (Andrew et al., ICML 2013).

    h1, h2: (B, K) batch of paired latents. With centred H, S11 = H1'H1/(B-1) + r1 I,
    S22 = H2'H2/(B-1) + r2 I, S12 = H1'H2/(B-1), the canonical correlations are the singular
    values of T = S11^-1/2 S12 S22^-1/2, i.e. sqrt of the eigenvalues of T'T. For stability:
    - everything runs in float64;
    - S^-1/2 is replaced by the inverse Cholesky factor L^-1 (S = LL'): L^-1 = Q S^-1/2 with Q
      orthogonal, so L1^-1 S12 L2^-T has the same singular values as T, and triangular solves
      have none of the 1/(lambda_i - lambda_j) terms of an eigenvector backward pass;
    - only eigenvalues of T'T are needed (eigvalsh), whose gradient is well defined even when
      they are repeated (e.g. perfectly correlated views), clamped at eps before the sqrt.
    top_k = 0 sums all K correlations (the trace norm of T).
    """
    m, dtype = h1.shape[0], h1.dtype
    if m < 2:
        raise ValueError("DCCA needs at least two items per batch")
    h1 = h1.double() - h1.double().mean(dim=0, keepdim=True)  # (B, K) centred across the batch
    h2 = h2.double() - h2.double().mean(dim=0, keepdim=True)
    eye1 = torch.eye(h1.shape[1], dtype=h1.dtype, device=h1.device)
    eye2 = torch.eye(h2.shape[1], dtype=h2.dtype, device=h2.device)
    s11 = h1.T @ h1 / (m - 1) + r1 * eye1  # (K, K)
    s22 = h2.T @ h2 / (m - 1) + r2 * eye2  # (K, K)
    s12 = h1.T @ h2 / (m - 1)  # (K, K)
    l1 = torch.linalg.cholesky(s11)
    l2 = torch.linalg.cholesky(s22)
    t = torch.linalg.solve_triangular(l1, s12, upper=False)  # L1^-1 S12
    t = torch.linalg.solve_triangular(l2, t.T, upper=False).T  # (L1^-1 S12) L2^-T, (K, K)
    eig = torch.linalg.eigvalsh(t.T @ t).clamp(min=eps)  # ascending, (K,)
    corr = eig.sqrt()
    if top_k:
        corr = corr[-top_k:]
    return -corr.sum().to(dtype)
