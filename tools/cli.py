"""The `avindex` command line.

Subcommands live in the package that owns them and are imported only when chosen, so the daemon's
runtime image (no torch) can run `avindex run` while `avindex train` pulls in torch on demand.
A subcommand module provides `configure(parser)` and `main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata

# name -> (module, one-line help). Order is the order shown in --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("avindex.training.cli_data", "build the AV-digits corpus or extract features to HDF5"),
    "train": ("avindex.training.cli_train", "train VAE-CCA (or a baseline) on HDF5 features"),
    "evaluate": ("avindex.training.cli_evaluate",
                 "MAP / precision@k of a checkpoint or a model directory; baselines"),
    "export": ("avindex.exporters.cli", "export a checkpoint (or the default model) to ONNX"),
    "run": ("avindex.tools.run", "run the indexing daemon: Kafka -> decode -> ONNX -> Qdrant"),
    "serve": ("avindex.tools.serve", "serve the search API alone, against the alias (no Kafka; "
              "scale it apart from the indexers)"),
    "reindex": ("avindex.tools.reindex", "re-index the topics into a new model's collection, "
                "then optionally switch the alias"),
    "produce": ("avindex.tools.produce", "send media files (bytes or claim-check envelopes) "
                "or tombstones to a topic, within the daemon's limits"),
    "optimize": ("avindex.tools.optimize", "build the HNSW indexes of a Qdrant Edge folder "
                 "(while no daemon holds it)"),
    "embed": ("avindex.tools.embed", "print the embeddings of media files as JSON lines"),
    "search": ("avindex.tools.search", "find the videos that fit a sound, or the sounds "
               "that fit a video or image"),
    "demo": ("avindex.tools.demo", "one-command demo: broker, Qdrant, daemon, an AV-digits "
             "stream, cross-modal queries and the web page"),
}


def version() -> str:
    """The installed distribution's version (the one in pyproject.toml)."""
    try:
        return metadata.version("avindex")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avindex",
        description="Audio-visual cross-modal indexing: train VAE-CCA encoders, export them to "
        "ONNX and index media streams from Kafka into Qdrant.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module_name).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
