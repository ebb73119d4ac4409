"""`avindex export`: a training checkpoint (or the default recipe) -> a model directory."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write a model directory (ONNX graphs per modality + manifest.json) that the daemon "
        "loads. Each graph takes decoded media (uint8 RGB frames / mono float audio at the "
        "manifest's rate) and returns the shared-space embedding and its variance; "
        "normalisation, the spectrogram, the front-end network and pooling run inside it."
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="checkpoint.pt written by `avindex train`")
    src.add_argument("--default", action="store_true",
                     help="build the default model from pip-installed weights only: AV-digits "
                     "corpus -> features -> VAE-CCA training -> export")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--no-fp16", action="store_true", help="skip the fp16 GPU variants")
    parser.add_argument("--model-id", default="avindex-vaecca")
    parser.add_argument("--work", type=Path, default=None,
                        help="with --default: folder for the corpus, features and checkpoint "
                        "(default: OUT.work)")
    parser.add_argument("--seed", type=int, default=0, help="with --default: corpus/train seed")
    parser.add_argument("--train-clips", type=int, default=2500, help="with --default")
    parser.add_argument("--val-clips", type=int, default=250, help="with --default")
    parser.add_argument("--test-clips", type=int, default=500, help="with --default")
    moved = parser.add_argument_group(
        "the paper's extractors (vgg19, vggish): where their weights files are now, if they moved "
        "since `avindex data features`; the sha256 recorded then must match")
    moved.add_argument("--visual-weights", type=Path, metavar="FILE")
    moved.add_argument("--audio-weights", type=Path, metavar="FILE")
    moved.add_argument("--audio-pca", type=Path, metavar="FILE")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("torch").setLevel(logging.ERROR)
    if args.default:
        from avindex.exporters.default_model import build_default_model

        manifest = build_default_model(
            args.out, work=args.work, seed=args.seed, n_train=args.train_clips,
            n_val=args.val_clips, n_test=args.test_clips, fp16=not args.no_fp16,
        )
    else:
        from avindex.exporters.writer import export_model_dir
        from avindex.training.frontends.user_weights import WeightsFileError

        weights = {"visual": args.visual_weights, "audio": args.audio_weights,
                   "audio_pca": args.audio_pca}
        try:
            manifest = export_model_dir(args.checkpoint, args.out, fp16=not args.no_fp16,
                                        model_id=args.model_id, weights=weights)
        except WeightsFileError as exc:  # a file the user supplied: no traceback needed
            print(f"avindex export: {exc}", file=sys.stderr)
            return 2
    print(json.dumps({"out": str(args.out), "model_version": manifest["model_version"],
                      "embedding_dim": manifest["embedding_dim"],
                      "metrics": manifest.get("metrics", {})}))
    return 0
