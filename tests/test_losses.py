"""Each VAE-CCA loss term against values worked out by hand or in plain Python."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import fractional_matrix_power

from avindex.training.losses import (
    CentreLoss,
    correlation_loss,
    dcca_loss,
    label_loss,
    pair_distance,
    vae_loss,
)


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# ---- VAE -----------------------------------------------------------------------------------


def test_vae_loss_hand_computed():
    # MSE = (1 + 4) / 2 = 2.5; KL = 0.5 * [(1 + 1 - 1 - 0) + (2 + 0 - 1 - ln 2)] = 1 - ln2 / 2
    recon, target = t([[1.0, 2.0]]), t([[0.0, 0.0]])
    mu, logvar = t([[1.0, 0.0]]), t([[0.0, math.log(2.0)]])
    assert vae_loss(recon, target, mu, logvar).item() == pytest.approx(2.5 + 1 - math.log(2) / 2)
    assert vae_loss(recon, target, mu, logvar, variational=False).item() == pytest.approx(2.5)


def test_vae_kl_is_summed_over_the_batch_like_the_authors():
    # Two identical rows: the MSE (a mean) stays, the KL (a sum) doubles.
    recon, target = t([[1.0, 2.0]] * 2), t([[0.0, 0.0]] * 2)
    mu, logvar = t([[1.0, 0.0]] * 2), t([[0.0, math.log(2.0)]] * 2)
    assert vae_loss(recon, target, mu, logvar).item() == pytest.approx(2.5 + 2 - math.log(2))


# ---- label ---------------------------------------------------------------------------------


def test_label_loss_is_mean_l2_norm_to_one_hot():
    # row 0: (0.5, 0.5) - (1, 0) -> sqrt(0.5); row 1: (2, 0) - (0, 1) -> sqrt(5)
    logits, labels = t([[0.5, 0.5], [2.0, 0.0]]), torch.tensor([0, 1])
    assert label_loss(logits, labels).item() == pytest.approx((math.sqrt(0.5) + math.sqrt(5)) / 2)


def test_label_loss_gradient_is_finite_at_a_perfect_prediction():
    logits = t([[1.0, 0.0]]).requires_grad_()
    label_loss(logits, torch.tensor([0])).backward()
    assert torch.isfinite(logits.grad).all()


# ---- correlation ---------------------------------------------------------------------------


def test_correlation_loss_two_dimensional_by_hand():
    # Centred across dims every 2-d latent is a multiple of (1, -1), so all cosines are +-1:
    # v = (1,-1), (-.5,.5); a = (-1,1), (1.5,-1.5); labels 0, 1 (S = identity).
    # vv and aa: theta = [[.5,-.5],[-.5,.5]] -> every entry equals softplus(-.5)
    # va: theta = [[-.5,.5],[.5,-.5]] -> every entry equals softplus(.5)
    zv, za = t([[3.0, 1.0], [1.0, 2.0]]), t([[0.0, 2.0], [4.0, 1.0]])
    sp = lambda x: math.log(1 + math.exp(x))  # noqa: E731
    expected = 2 * sp(-0.5) + sp(0.5)
    assert correlation_loss(zv, za, torch.tensor([0, 1])).item() == pytest.approx(expected)


def _plain_correlation(zv: list[list[float]], za: list[list[float]], labels: list[int]) -> float:
    def centre(x):
        m = sum(x) / len(x)
        return [xi - m for xi in x]

    def half_cos(x, y):
        dot = sum(a * b for a, b in zip(x, y, strict=True))
        norm = math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in y))
        return dot / max(norm, 1e-6) / 2

    v, a = [centre(r) for r in zv], [centre(r) for r in za]
    total = 0.0
    for xs, ys in ((v, v), (v, a), (a, a)):
        terms = []
        for i, x in enumerate(xs):
            for j, y in enumerate(ys):
                th = half_cos(x, y)
                terms.append(math.log(1 + math.exp(th)) - (labels[i] == labels[j]) * th)
        total += sum(terms) / len(terms)
    return total


def test_correlation_loss_matches_plain_python():
    rng = np.random.default_rng(3)
    zv, za = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    labels = [0, 1, 0]
    got = correlation_loss(t(zv), t(za), torch.tensor(labels)).item()
    assert got == pytest.approx(_plain_correlation(zv.tolist(), za.tolist(), labels), rel=1e-5)


def test_correlation_loss_is_finite_for_large_latents():
    big = t([[1e4, -1e4, 3.0], [2e4, 5.0, -7e3]])
    assert torch.isfinite(correlation_loss(big, -big, torch.tensor([0, 0])))


# ---- pair distance -------------------------------------------------------------------------


def test_pair_distance_hand_computed():
    # |(0,0) - (3,4)| = 5, |(1,1) - (1,1)| = 0
    zv, za = t([[0.0, 0.0], [1.0, 1.0]]), t([[3.0, 4.0], [1.0, 1.0]])
    assert pair_distance(zv, za).item() == pytest.approx(2.5)


# ---- centre --------------------------------------------------------------------------------


def _centres(values) -> CentreLoss:
    c = CentreLoss(num_classes=2, dim=2, alpha=0.5, lam=0.5)
    c.centres.copy_(t(values))
    c.seen[:] = True
    return c


def test_centre_loss_value_hand_computed():
    # centres (0,0), (1,1); f = (1,0)|0, (1,2)|1, (0,0)|0; counts 2, 1
    # squared distances / counts: 1/2, 1/1, 0/2 -> mean 0.5 -> * lam/2 = 0.125 per modality
    c = _centres([[0.0, 0.0], [1.0, 1.0]])
    z = t([[1.0, 0.0], [1.0, 2.0], [0.0, 0.0]])
    assert c(z, z, torch.tensor([0, 1, 0])).item() == pytest.approx(0.125)


def test_centre_update_follows_wen_et_al():
    # both modalities feed the step (each item twice): class 0 sum(c - f) = 2 * (-1, 0), n = 4
    # -> c0 = 0 - 0.5 * (-2, 0) / 5 = (0.2, 0); class 1: 2 * (0, -1), n = 2 -> c1 = (1, 1 + 1/3)
    c = _centres([[0.0, 0.0], [1.0, 1.0]])
    z = t([[1.0, 0.0], [1.0, 2.0], [0.0, 0.0]])
    c.update(z, z, torch.tensor([0, 1, 0]))
    np.testing.assert_allclose(c.centres.numpy(), [[0.2, 0.0], [1.0, 4 / 3]], rtol=1e-6)


def test_centres_are_not_redrawn_and_converge_to_class_means():
    torch.manual_seed(0)
    c = CentreLoss(num_classes=3, dim=4, alpha=0.5)
    z = torch.randn(30, 4)
    labels = torch.arange(30) % 3
    first = c(z, z, labels).item()
    assert c(z, z, labels).item() == first  # same centres on every call (the public code: noise)
    c.centres += 1.0  # move them away, then let the update rule bring them back
    for _ in range(200):
        c.update(z, z, labels)
    means = torch.stack([z[labels == k].mean(0) for k in range(3)])
    torch.testing.assert_close(c.centres, means, atol=1e-4, rtol=0)


def test_centres_start_at_the_first_batch_class_means():
    c = CentreLoss(num_classes=3, dim=2)
    z = t([[1.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    c(z, z, torch.tensor([0, 0, 2]))
    np.testing.assert_allclose(c.centres.numpy(), [[2.0, 1.0], [0.0, 0.0], [0.0, 5.0]])
    assert c.seen.tolist() == [True, False, True]


def test_centre_loss_gives_no_gradient_to_centres():
    c = _centres([[0.0, 0.0], [1.0, 1.0]])
    z = t([[1.0, 0.0], [1.0, 2.0]]).requires_grad_()
    c(z, z, torch.tensor([0, 1])).backward()
    assert z.grad is not None and not c.centres.requires_grad


# ---- deep CCA ------------------------------------------------------------------------------


def _numpy_canonical_correlations(h1: np.ndarray, h2: np.ndarray, r1: float, r2: float):
    m = len(h1)
    a, b = h1 - h1.mean(0), h2 - h2.mean(0)
    s11 = a.T @ a / (m - 1) + r1 * np.eye(a.shape[1])
    s22 = b.T @ b / (m - 1) + r2 * np.eye(b.shape[1])
    s12 = a.T @ b / (m - 1)
    tmat = fractional_matrix_power(s11, -0.5) @ s12 @ fractional_matrix_power(s22, -0.5)
    return np.linalg.svd(np.real(tmat), compute_uv=False)  # descending


@pytest.mark.parametrize("top_k", [0, 3])
def test_dcca_loss_is_minus_the_sum_of_canonical_correlations(top_k):
    rng = np.random.default_rng(0)
    h1 = rng.normal(size=(200, 6))
    h2 = np.tanh(h1 @ rng.normal(size=(6, 6))) + 0.5 * rng.normal(size=(200, 6))
    corr = _numpy_canonical_correlations(h1, h2, 1e-3, 1e-2)
    expected = -corr[: top_k or None].sum()
    got = dcca_loss(t(h1), t(h2), r1=1e-3, r2=1e-2, top_k=top_k).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_dcca_loss_reaches_minus_k_for_perfectly_correlated_views():
    torch.manual_seed(0)
    h1 = torch.randn(512, 8, requires_grad=True)
    h2 = h1 @ torch.randn(8, 8) + 1.0  # an invertible linear map of the same view
    loss = dcca_loss(h1, h2, r1=1e-6, r2=1e-6)
    assert loss.item() == pytest.approx(-8.0, abs=1e-3)
    loss.backward()  # repeated eigenvalues of T'T: the gradient must stay finite
    assert torch.isfinite(h1.grad).all()


def test_dcca_loss_near_zero_for_independent_views():
    rng = np.random.default_rng(1)
    h1, h2 = rng.normal(size=(5000, 4)), rng.normal(size=(5000, 4))
    assert -dcca_loss(t(h1), t(h2)).item() < 0.15
