"""Train VAE-CCA (or a variant of METHODS) on paper-layout features; reads top to bottom.

    result = train(load_features("vegas_feature.h5"), TrainConfig(), Path("runs/vegas"))

Differences from the authors' loop (docs/training.md says why): batches are shuffled (seeded);
a validation split (the file's `*_val`, else a stratified 10% of train) selects the checkpoint by
mean MAP and stops early; class centres are learned; inputs are standardised inside the model.
The test split is evaluated once, with the selected checkpoint.

Outputs in `out`: checkpoint.pt, metrics.json, history.json, curves.png.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .features_h5 import FeatureSet, Split
from .losses import (
    CentreLoss,
    LossWeights,
    correlation_loss,
    dcca_loss,
    label_loss,
    pair_distance,
    vae_loss,
)
from .metrics import DEFAULT_KS, retrieval_metrics
from .model import METHODS, VAECCA, ModalityOutput, VAECCAConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "avindex.vae-cca.checkpoint/1"


# ---------------------------------------------------------------------------------------------
# configuration (saved in every checkpoint)


@dataclass
class TrainConfig:
    # what to train: a key of model.METHODS, and the network's sizes
    method: str = "vae-cca"  # vae-cca | ae | vae-cca-dcca | dcca
    hidden_dim: int = 512
    latent_dim: int = 64
    dcca_top_k: int = 0  # 0 = all latent_dim canonical correlations
    dcca_r1: float = 1e-3
    dcca_r2: float = 1e-3
    # data
    val_fraction: float = 0.1  # carved from train (stratified) when the file has no *_val split
    seed: int = 0  # weights, shuffling, sampling noise and the validation carve
    # optimisation: the paper's Adam(1e-4, betas 0.5/0.999), batch 128, up to 500 epochs
    epochs: int = 500
    patience: int = 20  # epochs without a better validation MAP before stopping; 0 = never
    min_delta: float = 0.0  # improvement needed to count as better
    batch_size: int = 128
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    # loss
    weights: LossWeights = field(default_factory=LossWeights)
    centre_alpha: float = 0.5  # learning rate of the class centres (Wen et al.)
    centre_lambda: float = 0.5  # the authors' lambda inside the centre term
    # housekeeping
    device: str = "cpu"
    progress: bool = True  # tqdm bar on stderr
    ks: tuple[int, ...] = DEFAULT_KS  # precision@k reported on test

    def __post_init__(self) -> None:
        if isinstance(self.weights, dict):  # from a checkpoint's asdict()
            self.weights = LossWeights(**self.weights)
        self.betas, self.ks = tuple(self.betas), tuple(self.ks)
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {sorted(METHODS)}")


@dataclass
class TrainResult:
    model: VAECCA  # the selected (best validation MAP) weights, in eval mode
    centres: torch.Tensor  # (C, K) learned class centres at that epoch
    metrics: dict  # test metrics of the selected model + selection info
    history: list[dict]  # one entry per epoch run
    best_epoch: int
    epochs_run: int
    train_seconds: float  # optimisation only (no validation)
    checkpoint: dict  # what checkpoint.pt holds


# ---------------------------------------------------------------------------------------------
# data: validation split and shuffled batches


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, val): a seeded `fraction` of every class goes to val (at least one if >= 2)."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(split.labels):
        idx = rng.permutation(np.flatnonzero(split.labels == c))
        n_val = round(fraction * len(idx))
        n_val = max(n_val, 1) if len(idx) >= 2 else 0
        val_idx.append(idx[:n_val])
    val = np.sort(np.concatenate(val_idx))
    train = np.setdiff1d(np.arange(len(split)), val)
    return split.subset(train), split.subset(val)


def training_splits(features: FeatureSet, cfg: TrainConfig) -> tuple[Split, Split]:
    if features.val is not None and len(features.val):
        return features.train, features.val
    return stratified_split(features.train, cfg.val_fraction, cfg.seed)


def batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; the last partial batch is dropped when a full one exists
    (batch statistics of a handful of items make the correlation and DCCA terms noise)."""
    perm = torch.randperm(n, generator=gen)
    stop = n - n % batch_size if n >= batch_size else n
    return list(perm[:stop].split(batch_size))


# ---------------------------------------------------------------------------------------------
# model, optimiser, objective


def model_config_for(features: FeatureSet, cfg: TrainConfig) -> VAECCAConfig:
    return VAECCAConfig.for_method(
        cfg.method,
        visual_dim=features.visual_dim,
        audio_dim=features.audio_dim,
        num_classes=features.num_classes,
        hidden_dim=cfg.hidden_dim,
        latent_dim=cfg.latent_dim,
        dcca_top_k=cfg.dcca_top_k,
        dcca_r1=cfg.dcca_r1,
        dcca_r2=cfg.dcca_r2,
    )


def loss_terms(
    v: ModalityOutput, a: ModalityOutput, labels: torch.Tensor, mc: VAECCAConfig,
    centre: CentreLoss,
) -> dict[str, torch.Tensor]:
    """Unweighted loss terms of one batch for the model's objective (each term summed over the
    two modalities as in the authors' code; the centre term averages them)."""
    terms: dict[str, torch.Tensor] = {}
    if mc.objective in ("paper", "paper+dcca"):
        terms["vae"] = vae_loss(v.recon, v.target, v.mu, v.logvar, mc.variational) + vae_loss(
            a.recon, a.target, a.mu, a.logvar, mc.variational
        )
        terms["label"] = label_loss(v.logits, labels) + label_loss(a.logits, labels)
        terms["corr"] = correlation_loss(v.z, a.z, labels)
        terms["pair"] = pair_distance(v.z, a.z)
        terms["centre"] = centre(v.z, a.z, labels)
    if mc.objective in ("paper+dcca", "dcca"):
        # on mu, the retrieval embedding: the sampling noise of z is independent per modality
        terms["dcca"] = dcca_loss(v.mu, a.mu, mc.dcca_r1, mc.dcca_r2, mc.dcca_top_k)
    return terms


def weighted_total(terms: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    return sum(getattr(w, name) * value for name, value in terms.items())


def train_step(
    model: VAECCA, centre: CentreLoss, opt: torch.optim.Optimizer,
    xv: torch.Tensor, xa: torch.Tensor, y: torch.Tensor, w: LossWeights,
) -> dict[str, float]:
    v, a = model(xv, xa)  # (B, Dv), (B, Da) -> per-modality outputs
    terms = loss_terms(v, a, y, model.config, centre)
    total = weighted_total(terms, w)
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    if "centre" in terms:
        centre.update(v.z, a.z, y)  # Wen et al.: centres follow the batch, own rate alpha
    return {"total": total.item(), **{k: t.item() for k, t in terms.items()}}


def validation_map(model: VAECCA, split: Split) -> dict[str, float]:
    ev, ea = model.embed(split.visual, split.audio)  # (N, K) each, eval mode
    m = retrieval_metrics(ev, ea, split.labels, ks=())
    return {f"val_{k}": m[k] for k in ("map_a2v", "map_v2a", "map_mean")}


# ---------------------------------------------------------------------------------------------
# the loop


def train(features: FeatureSet, cfg: TrainConfig, out: Path | None = None) -> TrainResult:
    """Train one method on `features`, select by validation MAP, evaluate on test, save to out."""
    prev_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(features, cfg, Path(out) if out is not None else None)
    finally:
        torch.use_deterministic_algorithms(prev_deterministic)


def _train(features: FeatureSet, cfg: TrainConfig, out: Path | None) -> TrainResult:
    torch.manual_seed(cfg.seed)  # weights and reparameterisation noise
    gen = torch.Generator().manual_seed(cfg.seed)  # batch order
    train_split, val_split = training_splits(features, cfg)
    log.info("%s: %d train / %d val / %d test items, Dv=%d Da=%d C=%d", cfg.method,
             len(train_split), len(val_split), len(features.test), features.visual_dim,
             features.audio_dim, features.num_classes)

    mc = model_config_for(features, cfg)
    model = VAECCA(mc)
    model.set_standardisation(train_split.visual, train_split.audio)
    model.to(cfg.device)
    centre = CentreLoss(mc.num_classes, mc.latent_dim, cfg.centre_alpha, cfg.centre_lambda)
    centre.to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)

    xv = torch.as_tensor(train_split.visual, device=cfg.device)  # (N, Dv)
    xa = torch.as_tensor(train_split.audio, device=cfg.device)  # (N, Da)
    y = torch.as_tensor(train_split.labels, device=cfg.device)  # (N,)

    history: list[dict] = []
    best = {"map": -1.0, "epoch": 0, "model": None, "centres": None}
    train_seconds, stale = 0.0, 0
    bar = tqdm(range(1, cfg.epochs + 1), desc=cfg.method, disable=not cfg.progress,
               dynamic_ncols=True)
    for epoch in bar:
        # ---- one pass over shuffled training batches
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        idx_batches = batches(len(y), cfg.batch_size, gen)
        for idx in idx_batches:
            idx = idx.to(cfg.device)
            for k, val in train_step(model, centre, opt, xv[idx], xa[idx], y[idx],
                                     cfg.weights).items():
                sums[k] = sums.get(k, 0.0) + val
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds

        # ---- validation MAP decides which weights we keep and when to stop
        t1 = time.perf_counter()
        val = validation_map(model, val_split)
        row = {"epoch": epoch, **{k: s / len(idx_batches) for k, s in sums.items()}, **val,
               "epoch_seconds": epoch_seconds, "val_seconds": time.perf_counter() - t1}
        history.append(row)
        bar.set_postfix(loss=f"{row['total']:.4g}", val_map=f"{val['val_map_mean']:.4f}")
        if val["val_map_mean"] > best["map"] + cfg.min_delta:
            best = {"map": val["val_map_mean"], "epoch": epoch,
                    "model": copy.deepcopy(model.state_dict()),
                    "centres": centre.centres.detach().clone()}
            stale = 0
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                log.info("early stop at epoch %d (best %d, val MAP %.4f)", epoch, best["epoch"],
                         best["map"])
                break
    bar.close()

    # ---- the selected checkpoint, evaluated once on test
    model.load_state_dict(best["model"])
    model.eval()
    ev, ea = model.embed(features.test.visual, features.test.audio)  # (Ntest, K) each
    metrics = retrieval_metrics(ev, ea, features.test.labels, cfg.ks, with_pr=True)
    metrics.update(method=cfg.method, best_epoch=best["epoch"], epochs_run=len(history),
                   val_map_mean=best["map"], train_seconds=train_seconds)
    log.info("%s: test MAP a2v %.4f v2a %.4f mean %.4f (epoch %d of %d)", cfg.method,
             metrics["map_a2v"], metrics["map_v2a"], metrics["map_mean"], best["epoch"],
             len(history))

    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "method": cfg.method,
        "data_sizes": {"train": len(train_split), "val": len(val_split),
                       "test": len(features.test)},
        "config": asdict(mc),
        "train_config": asdict(cfg),
        "state_dict": model.state_dict(),
        "centres": best["centres"].cpu(),
        "feature_attrs": features.attrs,
        "metrics": metrics,
        "epoch": best["epoch"],
        "history": history,
    }
    if out is not None:
        save_run(out, ckpt)
    return TrainResult(model, best["centres"], metrics, history, best["epoch"], len(history),
                       train_seconds, ckpt)


# ---------------------------------------------------------------------------------------------
# saving and loading


def save_run(out: Path, ckpt: dict) -> None:
    """checkpoint.pt, metrics.json, history.json and curves.png in `out`."""
    from .plots import plot_curves  # matplotlib only when writing files

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "checkpoint.pt.tmp"
    state = {k: v.cpu() for k, v in ckpt["state_dict"].items()}
    torch.save({**ckpt, "state_dict": state}, tmp)
    tmp.replace(out / "checkpoint.pt")
    (out / "metrics.json").write_text(json.dumps(ckpt["metrics"], indent=2))
    (out / "history.json").write_text(json.dumps(ckpt["history"], indent=1))
    plot_curves(ckpt["history"], out / "curves.png", title=ckpt["train_config"]["method"])
    log.info("saved %s", out)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[VAECCA, dict]:
    """Rebuild the network of a checkpoint.pt (eval mode) and return it with the raw dict."""
    ckpt = torch.load(Path(path), map_location=map_location, weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an avindex VAE-CCA checkpoint ({ckpt.get('format')!r})")
    model = VAECCA(VAECCAConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt
