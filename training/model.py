"""The VAE-CCA network (Zhang et al., ACM TOMM 2023), one config dataclass and one module.

Structure as in the authors' public code (see docs/training.md for every deviation):

    visual x_v (Dv) -> standardise -> Linear(Dv->512)+ReLU --\
                                                              +-> shared Linear(512->64) -> f
    audio  x_a (Da) -> standardise -> Linear(Da->512)+ReLU --/     (no activation)
    f -> mu = Linear(64->64), logvar = Linear(64->64)               (heads shared by modalities)
    z = mu + eps * exp(logvar / 2) in training, z = mu at inference
    z -> classifier Linear(64->C)                                   (shared)
    z -> decoder Linear(64->512) (shared, no activation) -> Linear(512->Dv) or Linear(512->Da)
         (each modality reconstructs only itself)

The retrieval embedding is `mu`. Deviation: per-modality input standardisation lives in the
model as buffers (mean/std of the training split), so exported ONNX graphs take raw features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# objective -> which loss terms train the network (see losses.py / train.py)
OBJECTIVES = ("paper", "paper+dcca", "dcca")

# CLI / compare method name -> (variational, objective)
METHODS: dict[str, tuple[bool, str]] = {
    "vae-cca": (True, "paper"),  # the published model
    "ae": (False, "paper"),  # the same network without its variational part
    "vae-cca-dcca": (True, "paper+dcca"),  # published losses + a true deep-CCA term
    "dcca": (False, "dcca"),  # deep CCA alone (Andrew et al. 2013), label-free
}


@dataclass
class VAECCAConfig:
    visual_dim: int = 1024  # Dv: Inception-v3 pooled features in the paper
    audio_dim: int = 128  # Da: VGGish
    num_classes: int = 10  # C: 10 VEGAS, 15 AVE
    hidden_dim: int = 512  # per-modality encoder width, also the shared decoder width
    latent_dim: int = 64  # embedding size (mu)
    variational: bool = True  # False: deterministic latent z = mu, no KL term ("ae")
    objective: str = "paper"  # one of OBJECTIVES
    dcca_top_k: int = 0  # canonical correlations summed by the DCCA term; 0 = all latent_dim
    dcca_r1: float = 1e-3  # ridge on the visual latent covariance (DCCA)
    dcca_r2: float = 1e-3  # ridge on the audio latent covariance (DCCA)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0 <= self.dcca_top_k <= self.latent_dim:
            raise ValueError(f"dcca_top_k must be in [0, {self.latent_dim}]")

    @classmethod
    def for_method(cls, method: str, **kwargs: object) -> VAECCAConfig:
        """Config for a named method of METHODS (e.g. "vae-cca", "ae"); kwargs override sizes."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
        variational, objective = METHODS[method]
        return cls(variational=variational, objective=objective, **kwargs)  # type: ignore[arg-type]


@dataclass
class ModalityOutput:
    """What the network computes for one modality of a batch of B items."""

    mu: torch.Tensor  # (B, K) the retrieval embedding
    logvar: torch.Tensor  # (B, K) zeros when not variational
    z: torch.Tensor  # (B, K) sampled latent in training (mu otherwise)
    logits: torch.Tensor  # (B, C) classifier output on z
    recon: torch.Tensor  # (B, D) reconstruction of the *standardised* input
    target: torch.Tensor  # (B, D) the standardised input (the reconstruction target)


class VAECCA(nn.Module):
    def __init__(self, config: VAECCAConfig) -> None:
        super().__init__()
        self.config = c = config
        # Input standardisation (deviation): identity until set_standardisation() is called.
        self.register_buffer("visual_mean", torch.zeros(c.visual_dim))
        self.register_buffer("visual_std", torch.ones(c.visual_dim))
        self.register_buffer("audio_mean", torch.zeros(c.audio_dim))
        self.register_buffer("audio_std", torch.ones(c.audio_dim))
        # encoder
        self.visual_in = nn.Linear(c.visual_dim, c.hidden_dim)
        self.audio_in = nn.Linear(c.audio_dim, c.hidden_dim)
        self.shared = nn.Linear(c.hidden_dim, c.latent_dim)  # no activation, as the authors
        self.mu = nn.Linear(c.latent_dim, c.latent_dim)
        self.logvar = nn.Linear(c.latent_dim, c.latent_dim) if c.variational else None
        # classifier on the (sampled) latent
        self.classifier = nn.Linear(c.latent_dim, c.num_classes)
        # decoder: shared then per modality, no activation in between (as the authors)
        self.decoder = nn.Linear(c.latent_dim, c.hidden_dim)
        self.visual_out = nn.Linear(c.hidden_dim, c.visual_dim)
        self.audio_out = nn.Linear(c.hidden_dim, c.audio_dim)

    # ---- standardisation -------------------------------------------------------------------

    @torch.no_grad()
    def set_standardisation(self, visual: np.ndarray, audio: np.ndarray) -> None:
        """Store per-feature mean/std of the training split (std floored, see below)."""
        for name, x in (("visual", visual), ("audio", audio)):
            x = np.asarray(x, dtype=np.float64)  # (N, D); float64 so large N sums stay exact
            mean, std = x.mean(axis=0), x.std(axis=0)
            # Floor each std at 1% of the median std: a feature that barely varies in training
            # (dead ReLU channels of a pretrained net) would otherwise be scaled up 1e4-fold and
            # turn float rounding, or any shift on new data, into huge embedding changes.
            floor = max(0.01 * float(np.median(std)), 1e-6)
            std = np.maximum(std, floor)
            getattr(self, f"{name}_mean").copy_(torch.from_numpy(mean))
            getattr(self, f"{name}_std").copy_(torch.from_numpy(std))

    def standardise_visual(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.visual_mean) / self.visual_std  # (B, Dv)

    def standardise_audio(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.audio_mean) / self.audio_std  # (B, Da)

    # ---- encoder (what the exporter traces) ---------------------------------------------------

    def _heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.shared(h)  # (B, K)
        mu = self.mu(f)  # (B, K)
        logvar = self.logvar(f) if self.logvar is not None else torch.zeros_like(mu)
        return mu, logvar

    def encode_visual(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw visual features (B, Dv) -> (mu, logvar), each (B, K). Pure tensor ops (ONNX)."""
        return self._heads(F.relu(self.visual_in(self.standardise_visual(x))))

    def encode_audio(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw audio features (B, Da) -> (mu, logvar), each (B, K). Pure tensor ops (ONNX)."""
        return self._heads(F.relu(self.audio_in(self.standardise_audio(x))))

    # ---- training forward ---------------------------------------------------------------------

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Reparameterisation in training when variational; the mean otherwise."""
        if self.training and self.config.variational:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return mu

    def _branch(
        self, x_std: torch.Tensor, encoder: nn.Linear, out: nn.Linear
    ) -> ModalityOutput:
        mu, logvar = self._heads(F.relu(encoder(x_std)))
        z = self.sample(mu, logvar)  # (B, K)
        recon = out(self.decoder(z))  # (B, D)
        return ModalityOutput(mu, logvar, z, self.classifier(z), recon, x_std)

    def forward(
        self, visual: torch.Tensor, audio: torch.Tensor
    ) -> tuple[ModalityOutput, ModalityOutput]:
        """Paired raw features (B, Dv), (B, Da) -> per-modality outputs for the losses."""
        v = self._branch(self.standardise_visual(visual), self.visual_in, self.visual_out)
        a = self._branch(self.standardise_audio(audio), self.audio_in, self.audio_out)
        return v, a

    @torch.no_grad()
    def embed(
        self, visual: np.ndarray, audio: np.ndarray, batch_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Retrieval embeddings (mu) of raw feature arrays, in eval mode; returns float32 numpy."""
        was_training = self.training
        self.eval()
        try:
            ev = self._embed_array(self.encode_visual, visual, batch_size)  # (Nv, K)
            ea = self._embed_array(self.encode_audio, audio, batch_size)  # (Na, K)
        finally:
            self.train(was_training)
        return ev, ea

    def _embed_array(self, encode, x: np.ndarray, batch_size: int) -> np.ndarray:
        device = self.visual_mean.device
        chunks = [
            encode(torch.as_tensor(x[i : i + batch_size], dtype=torch.float32, device=device))[0]
            for i in range(0, len(x), batch_size)
        ]
        if not chunks:
            return np.zeros((0, self.config.latent_dim), dtype=np.float32)
        return torch.cat(chunks).float().cpu().numpy()
