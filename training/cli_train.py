"""`avindex train`: train VAE-CCA (or a variant) on a paper-layout HDF5 feature file.

    avindex train --data vegas_feature.h5 --out runs/vegas [--method vae-cca] [--epochs 500]

Writes checkpoint.pt, metrics.json, history.json and curves.png to --out; logs go to stderr,
the result (a summary, or one JSON object with --json) to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .losses import LossWeights
from .model import METHODS
from .train import TrainConfig

_D = TrainConfig()  # the single source of defaults


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `train` and `evaluate --compare` (which trains several methods)."""
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=_D.epochs,
                   help="maximum epochs (the paper's fixed count: 500); early stopping usually "
                   "ends sooner (default: %(default)s)")
    g.add_argument("--patience", type=int, default=_D.patience,
                   help="stop after N epochs without a better validation MAP; 0 = never "
                   "(default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=_D.batch_size, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=_D.lr, help="Adam learning rate, betas 0.5/0.999 "
                   "as the paper (default: %(default)s)")
    g.add_argument("--seed", type=int, default=_D.seed,
                   help="seeds weights, shuffling, sampling and the validation carve "
                   "(default: %(default)s)")
    g.add_argument("--val-fraction", type=float, default=_D.val_fraction,
                   help="stratified share of train used for validation when the file has no "
                   "*_val split (default: %(default)s)")
    g.add_argument("--latent-dim", type=int, default=_D.latent_dim,
                   help="embedding size (default: %(default)s)")
    g.add_argument("--hidden-dim", type=int, default=_D.hidden_dim,
                   help="encoder width (default: %(default)s)")
    g.add_argument("--dcca-top-k", type=int, default=_D.dcca_top_k,
                   help="canonical correlations summed by the DCCA term; 0 = all "
                   "(default: %(default)s)")
    g.add_argument("--device", default=_D.device, help="torch device (default: %(default)s)")
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads; 0 = torch's default")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    w = parser.add_argument_group("loss weights (the paper's defaults)")
    for name, flag in (("vae", "--w-vae"), ("label", "--w-label"), ("corr", "--w-corr"),
                       ("pair", "--w-pair"), ("centre", "--w-centre"), ("dcca", "--w-dcca")):
        w.add_argument(flag, type=float, default=getattr(_D.weights, name),
                       help=f"weight of the {name} term (default: %(default)s)")


def train_config_from_args(args: argparse.Namespace, method: str = "vae-cca") -> TrainConfig:
    """TrainConfig from the options of add_training_options."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return TrainConfig(
        method=method, epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, val_fraction=args.val_fraction, latent_dim=args.latent_dim,
        hidden_dim=args.hidden_dim, dcca_top_k=args.dcca_top_k, device=args.device,
        progress=not args.no_progress,
        weights=LossWeights(vae=args.w_vae, label=args.w_label, corr=args.w_corr,
                            pair=args.w_pair, centre=args.w_centre, dcca=args.w_dcca),
    )


def configure_logging(verbose: bool = False) -> None:
    """Logs on stderr so stdout carries only the result (e.g. one JSON object)."""
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train VAE-CCA (Zhang et al. 2023) or a variant on an HDF5 feature file in the paper's "
        "layout (visual_/audio_/lab_ train/test, optional *_val). The checkpoint with the best "
        "validation MAP is kept and evaluated once on test."
    )
    parser.add_argument("--data", required=True, type=Path, metavar="FEATURES.h5",
                        help="feature file (e.g. vegas_feature.h5)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="run directory: checkpoint.pt, metrics.json, history.json, "
                        "curves.png")
    parser.add_argument("--method", default="vae-cca", choices=sorted(METHODS),
                        help="vae-cca: the published model; ae: without its variational part; "
                        "vae-cca-dcca: plus a deep-CCA term; dcca: deep CCA alone "
                        "(default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print the test metrics as one JSON object on stdout")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_training_options(parser)


def main(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    from .features_h5 import load_features
    from .train import train

    try:
        features = load_features(args.data)
        cfg = train_config_from_args(args, args.method)
    except (OSError, ValueError) as exc:
        print(f"avindex train: {exc}", file=sys.stderr)
        return 2
    result = train(features, cfg, args.out)
    m = {k: v for k, v in result.metrics.items() if k != "pr"}
    if args.json:
        print(json.dumps(m))
    else:
        print(f"{cfg.method}: test MAP a->v {m['map_a2v']:.4f}  v->a {m['map_v2a']:.4f}  "
              f"mean {m['map_mean']:.4f}  (best epoch {m['best_epoch']} of {m['epochs_run']}, "
              f"{m['train_seconds']:.1f} s)  -> {args.out}")
    return 0
