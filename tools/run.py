"""`avindex run`: load the settings, install signal handlers, run the daemon, exit with its code.

The daemon itself (`avindex.daemon.app.Daemon`) knows nothing about the command line: this module
turns `--config`/AVINDEX_* into settings, sets up logging, and maps signals to stop requests.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

from avindex.daemon.app import EXIT_CONFIG, Daemon
from avindex.daemon.jsonlog import setup_logging
from avindex.daemon.settings import Settings, SettingsError, load_settings

__all__ = ["configure", "install_signal_handlers", "main", "settings_from_args"]

log = logging.getLogger("avindex.daemon")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="YAML/TOML/JSON settings file (default: $AVINDEX_CONFIG); "
                        "AVINDEX_<SECTION>_<FIELD> environment variables override it")


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGTERM/SIGINT only set flags: the first asks for a drain, the second forces exit."""

    def handler(signum, frame) -> None:
        daemon.request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def settings_from_args(args: argparse.Namespace) -> Settings | None:
    """Load the settings named by `--config`/env and set up logging; None when refused."""
    try:
        settings, warnings = load_settings(getattr(args, "config", None))
    except SettingsError as exc:
        setup_logging("INFO", "json")
        log.error("invalid settings: %s", exc)
        return None
    setup_logging(settings.log.level, settings.log.format)
    for warning in warnings:
        log.warning(warning)
    return settings


def run_daemon(daemon: Daemon, what: str) -> int:
    """Run with signal handlers; a forced stop skips the interpreter's slow teardown."""
    install_signal_handlers(daemon)
    code = daemon.run()
    log.info("%s exiting with code %d", what, code)
    if daemon.force.is_set():
        # Forced exit: everything was closed in run(); skip the interpreter's teardown (module
        # finalisers, ONNX Runtime sessions), which takes seconds on a loaded machine.
        logging.shutdown()
        os._exit(code)
    return code


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings is None:
        return EXIT_CONFIG
    log.info("avindex daemon starting", extra={"fields": {"settings": settings.redacted()}})
    return run_daemon(Daemon(settings), "avindex daemon")
