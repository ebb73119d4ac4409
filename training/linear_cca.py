"""Linear CCA baseline (Hotelling 1936), regularised, in numpy.

The classic reference point of this line of work (VEGAS: CCA ~0.32 MAP): fit on the training
split, project both modalities onto the top-k canonical directions and evaluate the projections
with the same metrics as the networks. Unsupervised: labels are not used.

Features are standardised first, so the ridge `reg` is relative to unit variance per feature.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .features_h5 import FeatureSet
from .metrics import DEFAULT_KS, retrieval_metrics


def _inv_sqrt(cov: np.ndarray) -> np.ndarray:
    """S^-1/2 of a symmetric positive definite (D, D) matrix via its eigen-decomposition."""
    w, v = np.linalg.eigh(cov)
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


@dataclass
class LinearCCA:
    k: int = 64  # canonical components kept
    reg: float = 1e-3  # ridge added to both (standardised) covariance matrices

    def fit(self, x: np.ndarray, y: np.ndarray) -> LinearCCA:
        """x: (N, Dx), y: (N, Dy) paired views. Sets projections wx (Dx, k), wy (Dy, k)."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        self.mx, self.sx = x.mean(0), np.where(x.std(0) > 1e-8, x.std(0), 1.0)
        self.my, self.sy = y.mean(0), np.where(y.std(0) > 1e-8, y.std(0), 1.0)
        xc, yc = (x - self.mx) / self.sx, (y - self.my) / self.sy  # (N, Dx), (N, Dy)
        n = len(x) - 1
        cxx = xc.T @ xc / n + self.reg * np.eye(xc.shape[1])
        cyy = yc.T @ yc / n + self.reg * np.eye(yc.shape[1])
        cxy = xc.T @ yc / n
        ix, iy = _inv_sqrt(cxx), _inv_sqrt(cyy)
        u, s, vt = np.linalg.svd(ix @ cxy @ iy)  # T = Cxx^-1/2 Cxy Cyy^-1/2
        k = min(self.k, len(s))
        self.correlations = s[:k]  # (k,) canonical correlations, descending
        self.wx = ix @ u[:, :k]  # (Dx, k)
        self.wy = iy @ vt[:k].T  # (Dy, k)
        return self

    def transform_x(self, x: np.ndarray) -> np.ndarray:
        return (((np.asarray(x, np.float64) - self.mx) / self.sx) @ self.wx).astype(np.float32)

    def transform_y(self, y: np.ndarray) -> np.ndarray:
        return (((np.asarray(y, np.float64) - self.my) / self.sy) @ self.wy).astype(np.float32)


def evaluate_linear_cca(
    features: FeatureSet, k: int = 64, reg: float = 1e-3, ks: tuple[int, ...] = DEFAULT_KS
) -> dict:
    """Fit on train (visual = x, audio = y), evaluate on test; metrics + fit time + correlations."""
    start = time.perf_counter()
    cca = LinearCCA(k=k, reg=reg).fit(features.train.visual, features.train.audio)
    seconds = time.perf_counter() - start
    test = features.test
    out = retrieval_metrics(cca.transform_x(test.visual), cca.transform_y(test.audio),
                            test.labels, ks)
    out.update(train_seconds=seconds, epochs=0, top_correlations=cca.correlations[:5].tolist())
    return out
