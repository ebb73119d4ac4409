"""`avindex data`: build the AV-digits corpus, or extract features from a media corpus."""

from __future__ import annotations

import argparse
import json
import logging

from avindex.training.frontends.registry import AUDIO_FRONTENDS, VISUAL_FRONTENDS


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    avd = sub.add_parser(
        "avdigits",
        help="build the AV-digits corpus (MNIST digits on screen, the spoken digit in the sound)",
        description="Build AV-digits: MP4 clips (h264 + aac) showing a handwritten MNIST digit "
        "while a human (Debian asterisk-core-sounds-*) or eSpeak NG voice speaks it, with "
        "manifest.csv and splits disjoint by speaker and by image. Deterministic from --seed.",
    )
    from avindex.training.avdigits import cli as avdigits_cli

    avdigits_cli.configure(avd)
    avd.set_defaults(data_main=avdigits_cli.main)

    feat = sub.add_parser(
        "features",
        help="decode a labelled media corpus and write front-end features as HDF5",
        description="Decode each clip of MANIFEST.csv (columns path,label[,split,id]) with the "
        "daemon's decoder, run the visual and audio front-ends and write the paper's HDF5 "
        "layout (visual_*/audio_*/lab_* for train/val/test). Without a split column a "
        "stratified 70/10/20 split is assigned.",
    )
    feat.add_argument("--media", required=True, help="manifest CSV with path,label columns")
    feat.add_argument("--out", required=True, help="HDF5 file to write")
    feat.add_argument("--visual", default="efficientnet-lite0", choices=VISUAL_FRONTENDS)
    feat.add_argument("--audio", default="logmel", choices=AUDIO_FRONTENDS,
                      help="audio front-end: weight-free log-mel statistics or aiSFX")
    feat.add_argument("--size", type=int, default=160, help="frame size fed to the visual net")
    feat.add_argument("--fps", type=float, default=1.0, help="frames sampled per second")
    feat.add_argument("--max-frames", type=int, default=8, help="frames kept per clip")
    feat.add_argument("--max-seconds", type=float, default=10.0, help="audio kept per clip")
    feat.add_argument("--workers", type=int, default=None, help="decoding processes")
    feat.add_argument("--batch-size", type=int, default=16)
    feat.add_argument("--seed", type=int, default=0, help="seed for an assigned split")
    feat.set_defaults(data_main=_features_main)


def _features_main(args: argparse.Namespace) -> int:
    from avindex.training.features import extract_features
    from avindex.training.frontends import default_audio_spec, default_visual_spec

    visual = default_visual_spec(args.visual, size=args.size, fps=args.fps,
                                 max_frames=args.max_frames)
    audio = default_audio_spec(args.audio, max_seconds=args.max_seconds)
    fs = extract_features(args.media, args.out, visual, audio, workers=args.workers,
                          batch_size=args.batch_size, split_seed=args.seed)
    summary = {
        "out": args.out,
        "visual_dim": fs.visual_dim,
        "audio_dim": fs.audio_dim,
        "n": {k: len(getattr(fs, k)) for k in ("train", "val", "test") if getattr(fs, k)},
        "skipped": len(fs.attrs.get("skipped", [])),
    }
    print(json.dumps(summary))
    return 0


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return int(args.data_main(args) or 0)
