"""The vectorised DSCMR metrics against a straightforward loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from avindex.training.metrics import (
    RECALL_LEVELS,
    average_precision,
    mean_average_precision,
    ranking_stats,
    retrieval_metrics,
)

# ---- the reference: one query at a time, plain Python ----------------------------------------


def _cos_dist(x, y) -> float:
    nx = math.sqrt(sum(a * a for a in x))
    ny = math.sqrt(sum(b * b for b in y))
    if nx == 0 or ny == 0:
        return 1.0
    return 1.0 - sum(a * b for a, b in zip(x, y, strict=True)) / (nx * ny)


def _ranking(q, gallery) -> list[int]:
    d = [_cos_dist(q, g) for g in gallery]
    return sorted(range(len(gallery)), key=lambda j: (d[j], j))  # ties: lower index first


def ref_ap(q, gallery, q_label, g_labels) -> float:
    hits, total = 0, 0.0
    for rank, j in enumerate(_ranking(q, gallery), start=1):
        if g_labels[j] == q_label:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def ref_precision_at(q, gallery, q_label, g_labels, k) -> float:
    top = _ranking(q, gallery)[:k]
    return sum(g_labels[j] == q_label for j in top) / len(top)


def ref_interpolated_pr(q, gallery, q_label, g_labels) -> list[float]:
    order = _ranking(q, gallery)
    n_rel = sum(g_labels[j] == q_label for j in order)
    if n_rel == 0:
        return [0.0] * len(RECALL_LEVELS)
    points, hits = [], 0
    for rank, j in enumerate(order, start=1):
        hits += g_labels[j] == q_label
        points.append((hits / n_rel, hits / rank))
    return [max(p for r, p in points if r >= level - 1e-9) for level in RECALL_LEVELS]


# ---- data ------------------------------------------------------------------------------------


def tied_embeddings(rng, n: int, dim: int = 3) -> np.ndarray:
    """Scaled +-axis vectors: every cosine is exactly -1, 0 or 1, so ties are everywhere and
    exact in any floating-point order of operations."""
    x = np.zeros((n, dim), dtype=np.float32)
    axis = rng.integers(0, dim, n)
    x[np.arange(n), axis] = rng.choice([-1, 1], n) * rng.integers(1, 5, n)
    return x


# ---- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_labels", [2, 5, 13])
def test_map_matches_loop_reference_with_ties(num_labels):
    rng = np.random.default_rng(num_labels)
    q, g = tied_embeddings(rng, 40), tied_embeddings(rng, 50)
    ql, gl = rng.integers(0, num_labels, 40), rng.integers(0, num_labels, 50)
    stats = ranking_stats(q, g, ql, gl, ks=(1, 5, 10), chunk=7)  # chunks that do not divide
    ref = [ref_ap(q[i].tolist(), g.tolist(), ql[i], gl.tolist()) for i in range(40)]
    np.testing.assert_allclose(stats.ap, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("num_labels", [2, 4, 10])
def test_map_matches_loop_reference_continuous(num_labels):
    rng = np.random.default_rng(100 + num_labels)
    q, g = rng.normal(size=(60, 8)), rng.normal(size=(45, 8))
    ql, gl = rng.integers(0, num_labels, 60), rng.integers(0, num_labels, 45)
    ref = np.mean([ref_ap(q[i].tolist(), g.tolist(), ql[i], gl.tolist()) for i in range(60)])
    assert mean_average_precision(q, g, ql, gl) == pytest.approx(ref, rel=1e-6)


def test_query_without_relevant_items_scores_zero():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    stats = ranking_stats(q, g, np.array([0, 1, 9]), np.array([0, 0, 1, 1, 1]), ks=(1,))
    assert stats.ap[2] == 0.0 and stats.ap[0] > 0.0


def test_perfect_and_reversed_rankings():
    g = np.eye(4, dtype=np.float32)
    labels = np.array([0, 1, 2, 3])
    assert mean_average_precision(g, g, labels, labels) == pytest.approx(1.0)
    # the only relevant item ranked last of 4 -> AP = 1/4
    assert mean_average_precision(-g[:1], g, labels[:1], labels) == pytest.approx(0.25)


@pytest.mark.parametrize("k", [1, 5, 10, 80])  # 80 > gallery size: precision over all items
def test_precision_at_k_matches_reference(k):
    rng = np.random.default_rng(k)
    q, g = tied_embeddings(rng, 30), tied_embeddings(rng, 50)
    ql, gl = rng.integers(0, 3, 30), rng.integers(0, 3, 50)
    stats = ranking_stats(q, g, ql, gl, ks=(k,))
    ref = [ref_precision_at(q[i].tolist(), g.tolist(), ql[i], gl.tolist(), k) for i in range(30)]
    np.testing.assert_allclose(stats.precision_at[k], ref, rtol=1e-6)


def test_interpolated_pr_matches_reference():
    rng = np.random.default_rng(7)
    q, g = rng.normal(size=(20, 5)), rng.normal(size=(35, 5))
    ql, gl = rng.integers(0, 3, 20), rng.integers(0, 3, 35)
    stats = ranking_stats(q, g, ql, gl, ks=(), with_pr=True)
    ref = [ref_interpolated_pr(q[i].tolist(), g.tolist(), ql[i], gl.tolist()) for i in range(20)]
    np.testing.assert_allclose(stats.pr_precision, ref, rtol=1e-6)
    assert np.all(np.diff(stats.pr_precision, axis=1) <= 1e-12)  # non-increasing in recall


def test_retrieval_metrics_directions_and_keys():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 50)
    visual = rng.normal(size=(50, 6))
    audio = visual + 0.1 * rng.normal(size=(50, 6))
    m = retrieval_metrics(visual, audio, labels, ks=(1, 10), with_pr=True)
    a2v = mean_average_precision(audio, visual, labels, labels)
    v2a = mean_average_precision(visual, audio, labels, labels)
    assert m["map_a2v"] == pytest.approx(a2v) and m["map_v2a"] == pytest.approx(v2a)
    assert m["map_mean"] == pytest.approx((a2v + v2a) / 2)
    for key in ("p@1_a2v", "p@1_v2a", "p@1", "p@10", "pr"):
        assert key in m
    assert len(m["pr"]["a2v"]) == len(RECALL_LEVELS)


def test_zero_vectors_do_not_produce_nan():
    q = np.zeros((2, 3), dtype=np.float32)
    g = np.eye(3, dtype=np.float32)
    assert np.isfinite(mean_average_precision(q, g, np.array([0, 1]), np.array([0, 1, 2])))


def test_numpy_fallback_ranks_like_torch(monkeypatch):
    from avindex.training import metrics

    rng = np.random.default_rng(5)
    q, g = tied_embeddings(rng, 30), tied_embeddings(rng, 40)
    ql, gl = rng.integers(0, 3, 30), rng.integers(0, 3, 40)
    with_torch = ranking_stats(q, g, ql, gl, ks=(5,)).ap
    monkeypatch.setattr(metrics, "torch", None)
    np.testing.assert_array_equal(ranking_stats(q, g, ql, gl, ks=(5,)).ap, with_torch)


def test_average_precision_of_one_ranked_list():
    assert average_precision([True, False, True]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([False, False]) == 0.0
    assert average_precision([False, True]) == pytest.approx(0.5)
