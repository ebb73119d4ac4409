"""`avindex data`: build the AV-digits corpus, or extract features from a media corpus."""

from __future__ import annotations

import argparse
import json
import logging
import sys

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

    voices = sub.add_parser(
        "voices",
        help="fetch four more human voices for AV-digits from Debian (apt-get download)",
        description="Download the Debian packages asterisk-prompt-fr-armelle, "
        "asterisk-prompt-es-co, asterisk-prompt-it-menardi-wav and asterisk-core-sounds-ru-wav "
        "with `apt-get download`, and unpack their digit recordings into DIR/<voice>/digits "
        "(they are not installed: three would take over asterisk's language links). "
        "`avindex data avdigits` uses every voice found there. scripts/setup.sh runs this.",
    )
    voices.add_argument("--dir", default=None, metavar="DIR",
                        help="where to unpack (default $AVINDEX_WEIGHTS_DIR/voices, "
                        "~/.cache/avindex/voices)")
    voices.set_defaults(data_main=_voices_main)

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
    feat.add_argument("--audio", default="speech", choices=AUDIO_FRONTENDS,
                      help="audio front-end: Google's speech_embedding (default), weight-free "
                      "log-mel statistics, or aiSFX")
    feat.add_argument("--size", type=int, default=None,
                      help="frame size fed to the visual net (default 224; 299 for "
                      "inception-v3)")
    feat.add_argument("--visual-pooling", choices=("stages", "head"), default="stages",
                      help="efficientnet-lite0: spatial maxima of stages 4-7, 704 numbers "
                      "(default), or the head's 1280-channel average")
    feat.add_argument("--fps", type=float, default=1.0, help="frames sampled per second")
    feat.add_argument("--max-frames", type=int, default=None,
                      help="frames kept per clip, spread evenly over it (default 2; 8 for "
                      "vgg19 and inception-v3)")
    feat.add_argument("--max-seconds", type=float, default=10.0, help="audio kept per clip")
    feat.add_argument("--workers", type=int, default=None, help="decoding processes")
    feat.add_argument("--batch-size", type=int, default=16,
                      help="clips per front-end call (torch engine)")
    feat.add_argument("--engine", choices=["onnx", "torch"], default="onnx",
                      help="run the front-ends with ONNX Runtime in the decoding workers, as the "
                      "daemon does (onnx, 2x faster) or with PyTorch in this process (torch)")
    feat.add_argument("--seed", type=int, default=0, help="seed for an assigned split")
    paper = feat.add_argument_group(
        "the paper's extractors, from weights files you supply (docs/frontends.md)")
    paper.add_argument("--visual-weights", metavar="FILE",
                       help="with --visual vgg19 or inception-v3: a state dict in "
                       "torchvision's layout for that network")
    paper.add_argument("--visual-layer", choices=("fc7", "pool5"), default="fc7",
                       help="with --visual vgg19: fc7 (4096-d) or pooled last conv block (512-d)")
    paper.add_argument("--audio-weights", metavar="FILE",
                       help="with --audio vggish: a state dict in torchvggish's layout")
    paper.add_argument("--audio-pca", metavar="FILE",
                       help="with --audio vggish: AudioSet PCA parameters (.npz or .pth)")
    paper.add_argument("--audio-postprocess", choices=("pca", "none"), default=None,
                       help="with --audio vggish: PCA whitening (default when PCA parameters "
                       "are available) or the raw embedding")
    feat.set_defaults(data_main=_features_main)


def _frontend_specs(args: argparse.Namespace):
    """(visual, audio) specs from the arguments; user weights only where a front-end takes them."""
    from avindex.training.frontends import default_audio_spec, default_visual_spec
    from avindex.training.frontends.paper import inception_v3_spec, vgg19_spec, vggish_spec
    from avindex.training.frontends.user_weights import WeightsFileError

    if bool(args.visual_weights) != (args.visual in ("vgg19", "inception-v3")):
        raise WeightsFileError("--visual vgg19 or inception-v3 and --visual-weights FILE go "
                               "together (see docs/frontends.md)")
    if bool(args.audio_weights) != (args.audio == "vggish") or (
            args.audio_pca and not args.audio_weights):
        raise WeightsFileError("--audio vggish and --audio-weights FILE go together; "
                               "--audio-pca needs both (see docs/frontends.md)")
    if args.visual == "vgg19":
        visual = vgg19_spec(args.visual_weights, layer=args.visual_layer, size=args.size or 224,
                            fps=args.fps, max_frames=args.max_frames or 8)
    elif args.visual == "inception-v3":
        visual = inception_v3_spec(args.visual_weights, size=args.size or 299, fps=args.fps,
                                   max_frames=args.max_frames or 8)
    else:
        visual = default_visual_spec(args.visual, size=args.size or 224, fps=args.fps,
                                     max_frames=args.max_frames or 2,
                                     pooling=args.visual_pooling)
    if args.audio == "vggish":
        audio = vggish_spec(args.audio_weights, pca=args.audio_pca,
                            postprocess=args.audio_postprocess, max_seconds=args.max_seconds)
    else:
        audio = default_audio_spec(args.audio, max_seconds=args.max_seconds)
    return visual, audio


def _features_main(args: argparse.Namespace) -> int:
    from avindex.training.features import extract_features
    from avindex.training.frontends.user_weights import WeightsFileError

    try:  # bad options or a bad weights file: say what is wrong, without a traceback
        visual, audio = _frontend_specs(args)
        fs = extract_features(args.media, args.out, visual, audio, workers=args.workers,
                              batch_size=args.batch_size, split_seed=args.seed,
                              engine=args.engine)
    except WeightsFileError as exc:
        print(f"avindex data features: {exc}", file=sys.stderr)
        return 2
    summary = {
        "out": args.out,
        "visual_dim": fs.visual_dim,
        "audio_dim": fs.audio_dim,
        "n": {k: len(getattr(fs, k)) for k in ("train", "val", "test") if getattr(fs, k)},
        "skipped": len(fs.attrs.get("skipped", [])),
    }
    print(json.dumps(summary))
    return 0


def _voices_main(args: argparse.Namespace) -> int:
    """Fetch the Debian voices; print each one's status. Returns 1 when any is missing."""
    from avindex.training.avdigits.voices import fetch_voices

    status = fetch_voices(args.dir)
    print(json.dumps(status, ensure_ascii=False))
    return 0 if all(s in ("present", "fetched") for s in status.values()) else 1


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return int(args.data_main(args) or 0)
