"""`avindex reindex`: the daemon with the re-index completion policy (`avindex.daemon.reindex`).

Indexes the topics into the new model version's collection up to the end offsets seen at start,
then, with `--switch-alias`, points the alias at it. Exit codes are the policy's: 0 caught up,
1 stopped or failed before catching up (alias untouched), 2 configuration refused, 3 start-up
timeout.
"""

from __future__ import annotations

import argparse
import logging

from avindex.daemon.app import EXIT_CONFIG
from avindex.daemon.reindex import reindex_daemon
from avindex.tools.run import configure as configure_run
from avindex.tools.run import run_daemon, settings_from_args

__all__ = ["configure", "main"]

log = logging.getLogger("avindex.daemon.reindex")


def configure(parser: argparse.ArgumentParser) -> None:
    configure_run(parser)
    parser.add_argument("--switch-alias", action="store_true",
                        help="once caught up, point qdrant.alias at the new collection")


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings is None:
        return EXIT_CONFIG
    switch = bool(getattr(args, "switch_alias", False))
    daemon = reindex_daemon(settings, switch_alias=switch)
    log.info("avindex reindex starting", extra={"fields": {
        "settings": daemon.settings.redacted(), "switch_alias": switch}})
    return run_daemon(daemon, "avindex reindex")
