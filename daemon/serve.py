"""The search-only service (`avindex serve`, tools/serve.py): the search API alone, against
the collection behind `qdrant.alias`, with no Kafka consumer, so applications scale their
search replicas apart from the indexers.

Same settings file as the daemon (only `model`, `qdrant`, `media`, `http` and `log` matter).
Order: settings -> logging -> HTTP (alive, not ready) -> model -> warm-up -> Qdrant, retried
with back-off until the alias resolves to a collection of this model version -> ready. A
watcher re-checks Qdrant every few seconds for readiness. Liveness is the process's own loop
only: a Qdrant outage makes the service not ready, never restarts it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from avindex.daemon.app import EXIT_CONFIG, searcher_for
from avindex.daemon.encoder import EncodeError, Encoder
from avindex.daemon.health import Health
from avindex.daemon.http.app import Api
from avindex.daemon.http.server import HttpServer, start_api
from avindex.daemon.metrics import Metrics
from avindex.daemon.model_dir import ModelDirError, load_model_dir
from avindex.daemon.retry import Backoff
from avindex.daemon.search import SearchError
from avindex.daemon.settings import Settings
from avindex.daemon.sink import open_store
from avindex.daemon.store import VectorStore
from avindex.daemon.store_server import ServerStore

__all__ = ["SearchServer"]

log = logging.getLogger("avindex.serve")

CHECK_INTERVAL_S = 5.0


class SearchServer:
    """The search-only service. `run()` blocks until `request_stop()` (what a signal does)."""

    def __init__(self, settings: Settings, *, store: VectorStore | None = None,
                 qdrant_client: Any = None) -> None:
        self.settings = settings
        self.health = Health(stale_s=settings.http.health_stale_s, needs_broker=False)
        self.metrics = Metrics()
        self.stop = threading.Event()
        self.force = threading.Event()  # install_signal_handlers sets it on a second signal
        self.api: Api | None = None
        self.http: HttpServer | None = None
        if store is None and qdrant_client is not None:
            store = ServerStore(qdrant_client)
        self._store = store

    def request_stop(self) -> None:
        if self.stop.is_set():
            self.force.set()
        self.stop.set()

    @property
    def http_port(self) -> int | None:
        return self.http.ports[0] if self.http else None

    def run(self) -> int:
        s = self.settings
        self.api, self.http = start_api(s, self.health, self.metrics)
        own_store = self._store is None
        store = None
        try:
            self.health.set(stage="model")
            model = load_model_dir(s.model.dir)
            encoder = Encoder(model, device=s.model.device, tensorrt=s.model.tensorrt,
                              fp16=s.model.fp16, cuda_device_id=s.model.cuda_device_id,
                              intra_op_threads=s.model.intra_op_threads, max_batch=1)
            encoder.warm_up()
            self.health.set(warmed_up=True, last_inference_ok=True, stage="qdrant")
            self.health.beat()
            store = self._store or open_store(s.qdrant)
            return self._loop(store, model, encoder)
        except (ModelDirError, EncodeError, RuntimeError) as exc:
            log.error("cannot start: %s", exc)
            return EXIT_CONFIG
        finally:
            self.health.set(stage="stopping")
            self.http.stop()
            self.api.service.close()
            if own_store and store is not None:
                store.close()

    def _loop(self, store: VectorStore, model, encoder: Encoder) -> int:
        """Attach a searcher once the alias resolves, then watch Qdrant until stopped."""
        backoff = Backoff(self.settings.pipeline.retry_initial_s,
                          self.settings.pipeline.retry_max_s)
        alias = self.settings.qdrant.alias
        attempt = 0
        while not self.stop.is_set():
            self.health.beat()
            searcher = self.api.service.searcher
            try:
                if searcher is None:
                    searcher = searcher_for(self.settings, store, model, encoder, alias)
                    self.api.attach(searcher)
                    log.info("serving searches on %s (model %s, version %s)",
                             searcher.collection, model.model_id, searcher.model_version)
                else:
                    store.ping()
            except SearchError as exc:
                if exc.code == "model_mismatch":
                    log.error("cannot start: %s", exc)
                    return EXIT_CONFIG
                self._not_ready(f"{exc.code}: {exc}", attempt)
            except Exception as exc:  # Qdrant unreachable or refusing: not ready, keep trying
                self._not_ready(f"{type(exc).__name__}: {exc}", attempt)
            else:
                attempt = 0
                self.health.set(qdrant_ok=True, qdrant_error=None, stage="running")
                self.stop.wait(CHECK_INTERVAL_S)
                continue
            attempt += 1
            self.stop.wait(min(backoff.delay(attempt), CHECK_INTERVAL_S))
        return 0

    def _not_ready(self, error: str, attempt: int) -> None:
        self.health.set(qdrant_ok=False, qdrant_error=error[:300])
        if attempt == 0:
            log.error("Qdrant: %s; not ready, retrying", error.splitlines()[0][:300])

