"""`avindex evaluate`: retrieval quality under the DSCMR protocol (MAP, precision@k, PR curve).

Modes, each in its own function and chosen by select_mode():

    checkpoint  avindex evaluate --checkpoint runs/x/checkpoint.pt --data FEATURES.h5
                [--split test] [--json] [--plot-dir DIR]
    compare     avindex evaluate --data FEATURES.h5 --compare [--methods ...] [--epochs N]
                [--out DIR] [--json]

`--data` is not globally required: each mode validates what it needs, so further modes (e.g. a
model directory evaluated on media) can be added with their own options. With --json exactly one
JSON object goes to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .cli_train import add_training_options, configure_logging, train_config_from_args
from .metrics import DEFAULT_KS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate cross-modal retrieval (DSCMR protocol: cosine distance, each query of one "
        "modality ranked against the whole split of the other, relevant = same label, AP over "
        "the full ranking). Modes: --checkpoint CKPT --data F.h5 evaluates a trained model; "
        "--data F.h5 --compare trains and compares linear CCA and the network variants; "
        "--model MODEL_DIR --media MANIFEST.csv evaluates an exported model through the "
        "daemon's decode -> ONNX Runtime path."
    )
    parser.add_argument("--data", type=Path, metavar="FEATURES.h5",
                        help="feature file in the paper's HDF5 layout (checkpoint, compare modes)")
    modes = parser.add_argument_group("modes")
    modes.add_argument("--checkpoint", type=Path, metavar="CKPT",
                       help="evaluate this checkpoint.pt (from `avindex train`) on --data")
    modes.add_argument("--compare", action="store_true",
                       help="train and evaluate linear CCA, ae, vae-cca and vae-cca-dcca side "
                       "by side on --data and print a table")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true",
                     help="print exactly one JSON object on stdout instead of text")
    out.add_argument("--plot-dir", type=Path, metavar="DIR",
                     help="write the precision-recall curve PNG(s) here")
    out.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)),
                     help="precision@k cut-offs, comma-separated (default: %(default)s)")
    out.add_argument("-v", "--verbose", action="store_true")
    ck = parser.add_argument_group("checkpoint mode")
    ck.add_argument("--split", default="test", choices=("test", "val", "train"),
                    help="split of --data to evaluate (default: %(default)s)")
    cmp_ = parser.add_argument_group("compare mode")
    cmp_.add_argument("--methods", default=None,
                      help="comma-separated subset of linear-cca,ae,vae-cca,vae-cca-dcca,dcca "
                      "(default: all but dcca)")
    cmp_.add_argument("--out", type=Path, metavar="DIR",
                      help="keep each method's run directory, comparison.json and pr.png here")
    cmp_.add_argument("--cca-k", type=int, default=64,
                      help="linear CCA components (default: %(default)s)")
    md = parser.add_argument_group("model-directory mode")
    md.add_argument("--model", type=Path, metavar="MODEL_DIR",
                    help="evaluate an exported model directory on --media through the daemon's "
                    "own path (decode_media -> ONNX Runtime)")
    md.add_argument("--media", type=Path, metavar="MANIFEST.csv",
                    help="labelled media list (columns path,label[,split]); each file a video "
                    "with sound; clips that cannot be decoded are reported, not fatal")
    md.add_argument("--media-split", dest="media_split", default=None,
                    help="only rows of --media whose split column has this value (e.g. test)")
    md.add_argument("--workers", type=int, default=None, help="decoding processes")
    cmp_.add_argument("--cca-reg", type=float, default=1e-3,
                      help="linear CCA ridge on standardised features (default: %(default)s)")
    add_training_options(parser)


class UsageError(ValueError):
    """Bad combination of options for a mode; reported on stderr with exit status 2."""


def select_mode(args: argparse.Namespace) -> str:
    """Which mode the options ask for; modes added later insert their test here."""
    if args.model is not None:
        if args.compare or args.checkpoint:
            raise UsageError("--model is its own mode; drop --compare/--checkpoint")
        if args.media is None:
            raise UsageError("--model needs --media MANIFEST.csv")
        return "model"
    if args.compare and args.checkpoint:
        raise UsageError("--compare and --checkpoint are separate modes; choose one")
    if args.compare:
        return "compare"
    if args.checkpoint:
        return "checkpoint"
    raise UsageError("choose a mode: --checkpoint CKPT --data F.h5, --data F.h5 --compare, "
                     "or --model MODEL_DIR --media MANIFEST.csv")


def _ks(args: argparse.Namespace) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in args.ks.split(",") if k.strip())
    except ValueError as exc:
        raise UsageError(f"--ks must be comma-separated integers, got {args.ks!r}") from exc
    if any(k < 1 for k in ks):
        raise UsageError("--ks values must be >= 1")
    return ks


def _require_data(args: argparse.Namespace, mode: str):
    from .features_h5 import load_features

    if args.data is None:
        raise UsageError(f"{mode} mode needs --data FEATURES.h5")
    return load_features(args.data)


# ---- checkpoint mode ------------------------------------------------------------------------


def evaluate_checkpoint(args: argparse.Namespace) -> int:
    """MAP a2v/v2a/mean, precision@k and the PR curve of one checkpoint on one split."""
    from .metrics import retrieval_metrics
    from .plots import plot_pr
    from .train import load_checkpoint

    features = _require_data(args, "checkpoint")
    model, ckpt = load_checkpoint(args.checkpoint)
    split = getattr(features, args.split)
    if split is None:
        raise UsageError(f"{args.data} has no {args.split} split")
    c = model.config
    if (features.visual_dim, features.audio_dim) != (c.visual_dim, c.audio_dim):
        raise UsageError(
            f"checkpoint expects Dv={c.visual_dim}, Da={c.audio_dim}; {args.data} has "
            f"Dv={features.visual_dim}, Da={features.audio_dim}"
        )
    ev, ea = model.embed(split.visual, split.audio)  # (N, K) each
    m = retrieval_metrics(ev, ea, split.labels, _ks(args), with_pr=True)
    method = ckpt["train_config"]["method"]
    if args.plot_dir:
        plot_pr({method: m["pr"]}, args.plot_dir / "pr_curve.png",
                title=f"{method} on {args.data.name} ({args.split})")
    result = {"checkpoint": str(args.checkpoint), "method": method, "split": args.split,
              "items": len(split), **m}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{method} on {args.data} ({args.split}, {len(split)} items)")
    print(f"  MAP a->v {m['map_a2v']:.4f}   v->a {m['map_v2a']:.4f}   mean {m['map_mean']:.4f}")
    for k in _ks(args):
        print(f"  P@{k:<4} a->v {m[f'p@{k}_a2v']:.4f}   v->a {m[f'p@{k}_v2a']:.4f}")
    return 0


# ---- compare mode ---------------------------------------------------------------------------


def evaluate_compare(args: argparse.Namespace) -> int:
    """Train/evaluate the methods side by side on one feature file; table or JSON on stdout."""
    from .compare import DEFAULT_METHODS, compare, format_table
    from .plots import plot_pr

    features = _require_data(args, "compare")
    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else DEFAULT_METHODS
    cfg = train_config_from_args(args)
    cfg.ks = _ks(args)
    result = compare(features, cfg, methods, out=args.out, cca_k=args.cca_k,
                     cca_reg=args.cca_reg)
    for folder in (args.out, args.plot_dir):
        if folder is not None and result["pr"]:
            plot_pr(result["pr"], Path(folder) / "pr.png", title=f"test PR, {args.data.name}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "comparison.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result, ks=tuple(k for k in cfg.ks if k in (1, 10)) or cfg.ks[:2]))
    return 0


# ---- model-directory mode ----------------------------------------------------------------------


def evaluate_model_dir(args: argparse.Namespace) -> int:
    """MAP of an exported model on labelled media, decoded and embedded as the daemon does."""
    from .media_eval import evaluate_model_on_media

    result = evaluate_model_on_media(args.model, args.media, split=args.media_split,
                                     ks=_ks(args), workers=args.workers)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.model} on {args.media} ({result['n']} clips, {len(result['failed'])} failed)")
    print(f"  MAP a->v {result['map_a2v']:.4f}   v->a {result['map_v2a']:.4f}   "
          f"mean {result['map_mean']:.4f}")
    for failure in result["failed"]:
        print(f"  not evaluated: {failure['path']}: {failure['reason']}")
    return 0


MODES: dict[str, Callable[[argparse.Namespace], int]] = {
    "checkpoint": evaluate_checkpoint,
    "compare": evaluate_compare,
    "model": evaluate_model_dir,
}


def main(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    try:
        return MODES[select_mode(args)](args)
    except (UsageError, OSError, ValueError) as exc:
        print(f"avindex evaluate: {exc}", file=sys.stderr)
        return 2
