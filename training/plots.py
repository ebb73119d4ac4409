"""PNG figures for training runs and evaluations (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines; must precede pyplot
import matplotlib.pyplot as plt

LOSS_KEYS = ("total", "vae", "label", "corr", "pair", "centre", "dcca")


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """One panel per loss term present (unweighted epoch means) plus validation MAP."""
    keys = [k for k in LOSS_KEYS if history and k in history[0]]
    epochs = [h["epoch"] for h in history]
    ncols = 4
    nrows = -(-(len(keys) + 1) // ncols)  # ceil
    fig, grid = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.9 * nrows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(keys) + 1 :]:
        ax.set_visible(False)
    for ax, key in zip(axes, keys, strict=False):
        ax.plot(epochs, [h[key] for h in history])
        ax.set_title(f"loss: {key}" + (" (weighted)" if key == "total" else ""))
        ax.set_xlabel("epoch")
    ax = axes[len(keys)]
    for key in ("val_map_a2v", "val_map_v2a", "val_map_mean"):
        ax.plot(epochs, [h[key] for h in history], label=key.removeprefix("val_map_"))
    ax.set_title("validation MAP")
    ax.set_xlabel("epoch")
    ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_pr(curves: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """11-point interpolated precision-recall curves; curves: name -> metrics()["pr"]."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, pr in curves.items():
        for direction, style in (("a2v", "-"), ("v2a", "--")):
            ax.plot(pr["recall"], pr[direction], style, marker=".", label=f"{name} {direction}")
    ax.set_xlabel("recall")
    ax.set_ylabel("interpolated precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "precision-recall (test)")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
