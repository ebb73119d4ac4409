"""`avindex data avdigits`: command-line options for the corpus builder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .splits import SPLITS

SMALL_SIZES = (200, 50, 50)  # --small: a corpus for a quick look or a smoke test


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the builder's options to `parser`."""
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (clips/, manifest.csv, corpus.json, contact_sheet.png)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the same seed gives the same corpus (default 0)")
    parser.add_argument("--train", type=int, default=3000, dest="n_train", metavar="N",
                        help="training clips (default 3000)")
    parser.add_argument("--val", type=int, default=500, dest="n_val", metavar="N",
                        help="validation clips (default 500)")
    parser.add_argument("--test", type=int, default=1000, dest="n_test", metavar="N",
                        help="test clips (default 1000)")
    small = "/".join(map(str, SMALL_SIZES))
    parser.add_argument("--small", action="store_true",
                        help=f"quick corpus of {small} clips (overrides the sizes)")
    parser.add_argument("--speaker-dir", action="append", default=[], metavar="DIR[=SPLIT]",
                        help="extra human speaker: a folder with 0.wav … 9.wav (or digits/0.wav …),"
                        " optionally forced into SPLIT (train, val or test); repeatable")
    parser.add_argument("--workers", type=int, default=None,
                        help="clip-making processes (default: one per available CPU)")


def parse_speaker_dir(value: str) -> tuple[Path, str | None]:
    """`DIR` or `DIR=SPLIT` -> (path, split or None)."""
    folder, sep, split = value.rpartition("=")
    if sep and split in SPLITS:
        return Path(folder), split
    if sep and not Path(value).exists():
        raise ValueError(f"--speaker-dir {value!r}: split must be one of {', '.join(SPLITS)}")
    return Path(value), None


def main(args: argparse.Namespace) -> int:
    """Build the corpus; print the manifest path. Returns 2 on bad input."""
    from .build import build_corpus  # heavy imports only when the command runs

    sizes = SMALL_SIZES if args.small else (args.n_train, args.n_val, args.n_test)
    try:
        speaker_dirs = [parse_speaker_dir(v) for v in args.speaker_dir]
        manifest = build_corpus(args.out, seed=args.seed, n_train=sizes[0], n_val=sizes[1],
                                n_test=sizes[2], speaker_dirs=speaker_dirs, workers=args.workers)
    except (ValueError, FileNotFoundError) as exc:
        print(f"avdigits: {exc}", file=sys.stderr)
        return 2
    print(manifest)
    return 0
