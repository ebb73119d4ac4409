"""Cross-modal retrieval metrics under the DSCMR protocol (the one VAE-CCA reports).

Each test query of one modality is ranked against the *whole* test set of the other modality by
cosine distance; an item is relevant when its label equals the query's; average precision runs
over the full ranking, and MAP is its mean over queries (a query with no relevant item scores 0,
as in the authors' `fx_calc_map_label`). Equal distances are ordered by gallery index (stable
sort), so results never depend on the sort algorithm.

Vectorised: query rows are processed in chunks; each chunk's (q, N) distance matrix is argsorted
in float32, relevance is gathered in rank order and turned into precision by cumulative sums.
A 5,621 x 5,621 test set takes a few seconds and ~100 MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

try:  # torch's stable argsort is ~1.5x numpy's here; numpy alone is enough (no torch needed)
    import torch
except ImportError:  # pragma: no cover - the training extra installs torch
    torch = None

DEFAULT_KS = (1, 5, 10, 50, 100)
RECALL_LEVELS = np.round(np.linspace(0.0, 1.0, 11), 2)  # 11-point interpolated PR curve


def cosine_distance(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1 - cos for all pairs: (Q, K), (N, K) -> (Q, N) float32. Zero vectors get cos 0."""
    q = np.asarray(query, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return 1.0 - q @ g.T


def _ranked_relevance(
    query: np.ndarray, gallery: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray
) -> np.ndarray:
    """(Q, N) bool: relevance of the gallery items in each query's ranking order."""
    dist = cosine_distance(query, gallery)  # (Q, N)
    if torch is not None:
        order = torch.argsort(torch.from_numpy(dist), dim=1, stable=True).numpy()  # (Q, N)
    else:
        order = np.argsort(dist, axis=1, kind="stable")
    return g_labels[order] == q_labels[:, None]


@dataclass
class RankingStats:
    """Per-query statistics of one retrieval direction."""

    ap: np.ndarray  # (Q,) average precision over the full ranking
    precision_at: dict[int, np.ndarray] = field(default_factory=dict)  # k -> (Q,)
    pr_precision: np.ndarray | None = None  # (Q, len(RECALL_LEVELS)) interpolated precision


def _stats_of_chunk(rel: np.ndarray, ks: tuple[int, ...], with_pr: bool) -> RankingStats:
    """rel: (q, N) bool in rank order -> AP, precision@k (and interpolated PR) for each row."""
    n = rel.shape[1]
    hits = np.cumsum(rel, axis=1, dtype=np.float32)  # (q, N) relevant items up to each rank
    precision = hits / np.arange(1, n + 1, dtype=np.float32)  # (q, N) exact below 2^24 items
    n_rel = hits[:, -1].astype(np.float64)  # (q,)
    sum_prec = np.where(rel, precision, 0.0).sum(axis=1, dtype=np.float64)  # (q,)
    ap = np.where(n_rel > 0, sum_prec / np.maximum(n_rel, 1), 0.0)
    p_at = {k: hits[:, min(k, n) - 1].astype(np.float64) / min(k, n) for k in ks}
    pr = _interpolated_pr(hits, precision, n_rel) if with_pr else None
    return RankingStats(ap, p_at, pr)


def _interpolated_pr(hits: np.ndarray, precision: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    """Precision at RECALL_LEVELS, interpolated: the best precision at any recall >= r."""
    n = hits.shape[1]
    best_after = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # (q, N)
    recall = hits / np.maximum(n_rel, 1)[:, None].astype(np.float32)  # (q, N) non-decreasing
    # index of the first rank whose recall reaches r, per level: (q, L)
    first = np.stack([(recall < r - 1e-6).sum(axis=1) for r in RECALL_LEVELS], axis=1)
    pr = np.take_along_axis(best_after, np.minimum(first, n - 1), axis=1).astype(np.float64)
    pr[n_rel == 0] = 0.0
    return pr


def ranking_stats(
    query: np.ndarray,
    gallery: np.ndarray,
    q_labels: np.ndarray,
    g_labels: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
    with_pr: bool = False,
    chunk: int = 1024,
) -> RankingStats:
    """Rank every query against the whole gallery; chunks of `chunk` rows bound the memory."""
    q_labels, g_labels = np.asarray(q_labels).ravel(), np.asarray(g_labels).ravel()
    if len(gallery) == 0:
        raise ValueError("empty gallery")
    parts = [
        _stats_of_chunk(
            _ranked_relevance(query[i : i + chunk], gallery, q_labels[i : i + chunk], g_labels),
            ks,
            with_pr,
        )
        for i in range(0, len(query), chunk)
    ]
    return RankingStats(
        ap=np.concatenate([p.ap for p in parts]),
        precision_at={k: np.concatenate([p.precision_at[k] for p in parts]) for k in ks},
        pr_precision=np.concatenate([p.pr_precision for p in parts]) if with_pr else None,
    )


def average_precision(relevant) -> float:
    """AP of one ranked list of relevance flags that covers the whole retrieval set (0 when
    nothing is relevant), as each row of `ranking_stats`."""
    rel = np.asarray(relevant, dtype=bool).reshape(1, -1)
    return float(_stats_of_chunk(rel, (), False).ap[0])


def mean_average_precision(
    query: np.ndarray, gallery: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray
) -> float:
    """MAP of one direction (queries of one modality against the other's whole set)."""
    return float(ranking_stats(query, gallery, q_labels, g_labels, ks=()).ap.mean())


def retrieval_metrics(
    visual: np.ndarray,
    audio: np.ndarray,
    labels: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
    with_pr: bool = False,
) -> dict:
    """MAP audio->visual, visual->audio and their mean, precision@k per direction (and PR).

    visual, audio: (N, K) embeddings of the same N clips; labels (N,).
    Keys: map_a2v, map_v2a, map_mean, p@k_a2v, p@k_v2a, p@k (mean of both), optionally
    pr = {"recall": [...], "a2v": [...], "v2a": [...]}.
    """
    labels = np.asarray(labels).ravel()
    a2v = ranking_stats(audio, visual, labels, labels, ks, with_pr)
    v2a = ranking_stats(visual, audio, labels, labels, ks, with_pr)
    out: dict = {
        "map_a2v": float(a2v.ap.mean()),
        "map_v2a": float(v2a.ap.mean()),
    }
    out["map_mean"] = (out["map_a2v"] + out["map_v2a"]) / 2
    for k in ks:
        pa, pv = float(a2v.precision_at[k].mean()), float(v2a.precision_at[k].mean())
        out[f"p@{k}_a2v"], out[f"p@{k}_v2a"], out[f"p@{k}"] = pa, pv, (pa + pv) / 2
    if with_pr:
        out["pr"] = {
            "recall": RECALL_LEVELS.tolist(),
            "a2v": a2v.pr_precision.mean(axis=0).tolist(),
            "v2a": v2a.pr_precision.mean(axis=0).tolist(),
        }
    return out
