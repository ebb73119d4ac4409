"""Training speed on a VEGAS-sized feature set, and what early stopping saves.

    .venv/bin/python bench/train_speed.py [--threads 2] [--seed 0] [--out bench/results]

The data are random but structured like VEGAS: 28,000 clips (5,621 test), visual 1,024-d,
audio 128-d, 10 classes of unequal size. Each clip has a latent "content" vector drawn around
its class mean, shared by both modalities, plus modality-specific nuisance factors; each modality
sees content and nuisance through its own random two-layer ReLU map, plus isotropic noise.
So retrieval is learnable but not trivial, and linear CCA is not the best possible method.

Measured: seconds per training epoch (median of all epochs of the run) and per validation pass,
the epoch with the best validation MAP and the epoch early stopping ended at, and the time the
public code's fixed 500 epochs would take at the same speed (its loop has no validation pass).
Writes bench/results/train_speed.json and train_speed.png. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from avindex.training.features_h5 import FeatureSet, Split
from avindex.training.train import TrainConfig, train

PUBLIC_CODE_EPOCHS = 500


def _relu_map(rng: np.random.Generator, x: np.ndarray, hidden: int, out_dim: int) -> np.ndarray:
    """A random two-layer ReLU network applied to x: (N, d) -> (N, out_dim)."""
    w1 = rng.normal(size=(x.shape[1], hidden)) / np.sqrt(x.shape[1])
    w2 = rng.normal(size=(hidden, out_dim)) / np.sqrt(hidden)
    return np.maximum(x @ w1, 0.0) @ w2


def make_vegas_like(
    seed: int = 0, n: int = 28_000, n_test: int = 5_621, visual_dim: int = 1024,
    audio_dim: int = 128, classes: int = 10, content_dim: int = 32, class_sep: float = 0.7,
    nuisance: float = 1.5, noise: float = 0.8,
) -> FeatureSet:
    """Class-conditional, nonlinearly mixed two-view Gaussians; see the module docstring."""
    rng = np.random.default_rng(seed)
    prior = rng.dirichlet(np.full(classes, 5.0))  # unequal class sizes, as VEGAS
    labels = rng.choice(classes, size=n, p=prior)  # (N,)
    means = rng.normal(size=(classes, content_dim)) * class_sep  # (C, c)
    content = means[labels] + rng.normal(size=(n, content_dim))  # (N, c) shared by both views
    nv = nuisance * rng.normal(size=(n, 16))  # (N, 16) visual-only factors
    na = nuisance * rng.normal(size=(n, 8))  # (N, 8) audio-only factors
    visual = _relu_map(rng, np.hstack([content, nv]), 256, visual_dim)  # (N, Dv)
    audio = _relu_map(rng, np.hstack([content, na]), 128, audio_dim)  # (N, Da)
    visual += noise * visual.std() * rng.normal(size=visual.shape)
    audio += noise * audio.std() * rng.normal(size=audio.shape)
    perm = rng.permutation(n)
    test, tr = perm[:n_test], perm[n_test:]
    attrs = {"corpus": "vegas-like synthetic", "seed": seed}
    return FeatureSet(
        train=Split(visual[tr], audio[tr], labels[tr]),
        test=Split(visual[test], audio[test], labels[test]),
        attrs=attrs,
    )


def summarise(result, wall: float, cfg: TrainConfig) -> dict:
    h = result.history
    epoch_s = statistics.median(r["epoch_seconds"] for r in h)
    val_s = statistics.median(r["val_seconds"] for r in h)
    ours = sum(r["epoch_seconds"] + r["val_seconds"] for r in h)
    public = PUBLIC_CODE_EPOCHS * epoch_s
    return {
        "seconds_per_epoch_median": epoch_s,
        "seconds_per_epoch_iqr": _iqr([r["epoch_seconds"] for r in h]),
        "validation_seconds_median": val_s,
        "steps_per_epoch": result.checkpoint["data_sizes"]["train"] // cfg.batch_size,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "patience": cfg.patience,
        "val_map_best": result.metrics["val_map_mean"],
        "val_map_last": h[-1]["val_map_mean"],  # below the best: the model was overfitting
        "test_map_a2v": result.metrics["map_a2v"],
        "test_map_v2a": result.metrics["map_v2a"],
        "test_map_mean": result.metrics["map_mean"],
        "our_seconds_train_plus_validation": ours,
        "wall_seconds_total": wall,
        "public_code_epochs": PUBLIC_CODE_EPOCHS,
        "public_code_projected_seconds": public,
        "projected_seconds_saved": public - ours,
        "projected_speedup": public / ours,
    }


def _iqr(xs: list[float]) -> list[float]:
    q = np.percentile(xs, [25, 75])
    return [float(q[0]), float(q[1])]


def plot(result, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = result.history
    epochs = [r["epoch"] for r in h]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(epochs, [r["val_map_mean"] for r in h], label="validation MAP (mean)")
    best, run = summary["best_epoch"], summary["epochs_run"]
    a1.axvline(best, color="g", ls="--", label=f"best epoch {best}")
    a1.axvline(run, color="r", ls=":", label=f"stopped at {run}")
    a1.set_xlabel("epoch")
    a1.set_ylabel("MAP")
    a1.legend(fontsize=8)
    a1.set_title("VEGAS-sized synthetic: validation MAP")
    names = ["public code\n(500 epochs)", "avindex\n(early stopping)"]
    secs = [summary["public_code_projected_seconds"], summary["our_seconds_train_plus_validation"]]
    a2.bar(names, secs, color=["grey", "tab:blue"])
    for i, s in enumerate(secs):
        a2.text(i, s, f"{s / 60:.1f} min", ha="center", va="bottom")
    a2.set_ylabel("seconds (train + validation)")
    a2.set_title(f"{summary['seconds_per_epoch_median']:.2f} s/epoch, "
                 f"{summary['threads']} torch threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patience", type=int, default=TrainConfig.patience)
    p.add_argument("--max-epochs", type=int, default=PUBLIC_CODE_EPOCHS)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    features = make_vegas_like(args.seed)
    gen_s = time.perf_counter() - t0
    cfg = TrainConfig(seed=args.seed, patience=args.patience, epochs=args.max_epochs)
    load_before = os.getloadavg()  # other processes on 2 cores distort the timings: record them
    t0 = time.perf_counter()
    result = train(features, cfg, None)
    wall = time.perf_counter() - t0

    summary = summarise(result, wall, cfg)
    summary.update(threads=torch.get_num_threads(), data_seconds=gen_s,
                   train_items=len(features.train), test_items=len(features.test),
                   visual_dim=features.visual_dim, audio_dim=features.audio_dim,
                   classes=features.num_classes, machine=platform.processor() or platform.machine(),
                   torch=torch.__version__, cpu_count=os.cpu_count(),
                   load_average_before=load_before, load_average_after=os.getloadavg(),
                   train_config=asdict(cfg))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_speed.json").write_text(json.dumps(summary, indent=2))
    plot(result, summary, args.out / "train_speed.png")
    print(json.dumps({k: v for k, v in summary.items() if k != "train_config"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
