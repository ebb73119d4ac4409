"""Side-by-side comparison on one FeatureSet: linear CCA and the network variants.

    linear-cca     regularised linear CCA (numpy), unsupervised
    ae             the VAE-CCA network without its variational part (z = mu, no KL)
    vae-cca        the published model (with this project's fixes)
    vae-cca-dcca   vae-cca plus a true deep-CCA term (Andrew et al. 2013)
    dcca           deep CCA alone (optional, not in the default set)

Every network gets the same TrainConfig (seed, epochs, early stopping) apart from `method`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from .features_h5 import FeatureSet
from .linear_cca import evaluate_linear_cca
from .model import METHODS
from .train import TrainConfig, train

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("linear-cca", "ae", "vae-cca", "vae-cca-dcca")
ALL_METHODS = ("linear-cca", *METHODS)


def _run_one(
    name: str, features: FeatureSet, cfg: TrainConfig, out: Path | None, cca_k: int,
    cca_reg: float,
) -> dict:
    if name == "linear-cca":
        return evaluate_linear_cca(features, k=cca_k, reg=cca_reg, ks=cfg.ks)
    result = train(features, replace(cfg, method=name), out / name if out else None)
    m = dict(result.metrics)
    m["epochs"] = result.epochs_run
    return m


def compare(
    features: FeatureSet,
    cfg: TrainConfig | None = None,
    methods: tuple[str, ...] = DEFAULT_METHODS,
    out: Path | None = None,
    cca_k: int = 64,
    cca_reg: float = 1e-3,
) -> dict:
    """{"methods": {NAME: {"map_a2v", "map_v2a", "map_mean", "p@k"..., "epochs",
    "train_seconds", ...}}, "pr": {NAME: curve}} (pr only for the networks)."""
    cfg = cfg or TrainConfig()
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(ALL_METHODS)}")
    rows: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    for name in methods:
        log.info("compare: %s", name)
        m = _run_one(name, features, cfg, out, cca_k, cca_reg)
        if "pr" in m:
            curves[name] = m.pop("pr")
        rows[name] = m
    return {"methods": rows, "pr": curves}


def format_table(result: dict, ks: tuple[int, ...] = (1, 10)) -> str:
    """Aligned text table of a compare() result, one method per row."""
    cols = ["map_a2v", "map_v2a", "map_mean", *[f"p@{k}" for k in ks], "epochs", "train_seconds"]
    heads = ["method", "MAP a->v", "MAP v->a", "MAP mean", *[f"P@{k}" for k in ks], "epochs",
             "train s"]
    lines = [[name] + [_cell(m.get(c), c) for c in cols] for name, m in result["methods"].items()]
    widths = [max(len(r[i]) for r in [heads, *lines]) for i in range(len(heads))]
    fmt = "  ".join([f"{{:<{widths[0]}}}"] + [f"{{:>{w}}}" for w in widths[1:]])
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*heads), rule, *(fmt.format(*r) for r in lines)])


def _cell(value: object, column: str) -> str:
    if value is None:
        return "-"
    if column == "train_seconds":
        return f"{float(value):.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
