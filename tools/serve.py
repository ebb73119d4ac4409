"""`avindex serve`: the search API alone (`avindex.daemon.serve.SearchServer`), against the
collection behind `qdrant.alias`, with no Kafka consumer. Same settings file as `avindex run`."""

from __future__ import annotations

import argparse
import logging

from avindex.daemon.app import EXIT_CONFIG
from avindex.daemon.serve import SearchServer
from avindex.tools.run import configure, run_daemon, settings_from_args

__all__ = ["configure", "main"]

log = logging.getLogger("avindex.serve")


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings is None:
        return EXIT_CONFIG
    log.info("avindex serve starting", extra={"fields": {"settings": settings.redacted()}})
    return run_daemon(SearchServer(settings), "avindex serve")
