"""The daemon's wiring: build every part once, in order, and run until a stop is requested.

Order: settings -> logging -> HTTP API and probes (alive, not ready) -> model directory -> ONNX
sessions -> warm-up at the largest batch -> Qdrant (collection, alias) -> dead-letter producer ->
Kafka consumer -> pipeline threads -> main loop. Configuration errors (bad settings, a refused model
directory, a collection that does not fit the model) end the process with exit code 2 and a
message that names the problem. Unreachable Qdrant or Kafka at start-up is not a configuration
error: the daemon keeps trying with back-off, says so in the log and answers /readyz with 503.

`avindex run` (`avindex.tools.run`) and `avindex reindex` (a `CompletionPolicy`,
`avindex.daemon.reindex`) both run this class; the command-line side lives in `avindex.tools`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka.errors import RetriableError

from avindex.daemon.deadletter import DeadLetterProducer
from avindex.daemon.encoder import EncodeError, Encoder
from avindex.daemon.health import Health
from avindex.daemon.http.app import Api
from avindex.daemon.http.server import HttpServer, start_api
from avindex.daemon.media import DecodeLimits
from avindex.daemon.messages import Fetcher
from avindex.daemon.metrics import Metrics
from avindex.daemon.model_dir import ModelDirError, load_model_dir
from avindex.daemon.pipeline import Pipeline
from avindex.daemon.ports import CompletionPolicy, TopicPartition
from avindex.daemon.quarantine import Quarantine, StateTopic
from avindex.daemon.retry import Aborted, Backoff, retry
from avindex.daemon.runner import Runner
from avindex.daemon.search import Searcher
from avindex.daemon.settings import MediaSettings, Settings, SettingsError
from avindex.daemon.sink import CollectionMismatchError, QdrantSink, StoreBusyError, open_store
from avindex.daemon.source import KafkaSource
from avindex.daemon.store import VectorStore

__all__ = [
    "EXIT_CONFIG",
    "EXIT_STARTUP_TIMEOUT",
    "ConfigurationError",
    "Daemon",
    "decode_limits",
    "searcher_for",
]

log = logging.getLogger("avindex.daemon")

EXIT_CONFIG = 2
EXIT_STARTUP_TIMEOUT = 3
# Kafka errors that mean "not reachable (yet)" rather than "refused"
UNREACHABLE = (RetriableError, OSError)


class ConfigurationError(RuntimeError):
    """A dependency answered but refused us (credentials, permissions): retrying cannot help."""


class StartupTimeoutError(RuntimeError):
    """A dependency stayed unreachable for longer than allowed at start-up."""


def decode_limits(media: MediaSettings, *, max_bytes: int,
                  extra_codecs: frozenset[str] = frozenset()) -> DecodeLimits:
    """The decoder's bounds from the settings; `extra_codecs` widen a non-empty allow-list
    (search queries may be still images)."""
    codecs = frozenset(media.allowed_codecs) | extra_codecs if media.allowed_codecs else None
    return DecodeLimits(max_bytes=max_bytes, max_duration_s=media.max_duration_s,
                        max_width=media.max_width, max_height=media.max_height,
                        max_decoded_frames=media.max_decoded_frames, allowed_codecs=codecs)


def searcher_for(settings: Settings, store: VectorStore, model, encoder: Encoder,
                 collection: str) -> Searcher:
    """A Searcher under the settings' limits: queries decode like media (size cap:
    `http.max_upload_bytes`), with `png` and `mjpeg` added for still images."""
    limits = decode_limits(settings.media, max_bytes=settings.http.max_upload_bytes,
                           extra_codecs=frozenset({"png", "mjpeg"}))
    return Searcher(store, model, encoder, collection, limits=limits,
                    max_top_k=settings.http.max_top_k)


class Daemon:
    """One indexing daemon. `run()` blocks; `request_stop()` is what a signal does.

    `store` lets tests and benchmarks share one vector store between daemons or put a fault
    injector in front of it (`qdrant_client` wraps a qdrant-client `QdrantClient` as the
    server engine); production opens the engine the settings name. `completion` ends the run
    by itself (`avindex reindex`); without one it runs until stopped.
    """

    def __init__(self, settings: Settings, *, store: VectorStore | None = None,
                 qdrant_client: Any = None, completion: CompletionPolicy | None = None) -> None:
        self.settings = settings
        self.completion = completion
        self.stop = threading.Event()
        self.force = threading.Event()
        self.health = Health(stale_s=settings.http.health_stale_s,
                             max_in_flight_age_s=settings.pipeline.max_in_flight_age_s)
        self.metrics = Metrics()
        if store is None and qdrant_client is not None:
            from avindex.daemon.store_server import ServerStore

            store = ServerStore(qdrant_client)
        self._store = store
        self.http: HttpServer | None = None
        self.api: Api | None = None
        self.runner: Runner | None = None
        self.sink: QdrantSink | None = None
        self.started = threading.Event()  # the main loop is about to run (tests wait on it)

    def request_stop(self) -> None:
        """First call: graceful stop. Second call: force (skip the drain)."""
        if self.stop.is_set():
            self.force.set()
        self.stop.set()

    @property
    def http_port(self) -> int | None:
        return self.http.ports[0] if self.http else None

    @property
    def metrics_port(self) -> int | None:
        return self.http.ports[-1] if self.http else None

    def assignment(self) -> set[TopicPartition]:
        """The partitions this daemon's consumer holds now (empty before it joined)."""
        return self.runner.source.assignment() if self.runner is not None else set()

    # --------------------------------------------------------------------------------- run
    def run(self) -> int:
        s = self.settings
        if s.http.enabled:
            self.api, self.http = start_api(s, self.health, self.metrics)
        closers: list[Callable[[], None]] = []
        try:
            return self._run(closers)
        except (SettingsError, ModelDirError, EncodeError, CollectionMismatchError,
                ConfigurationError) as exc:
            log.error("cannot start: %s", exc, extra={"fields": {"error": type(exc).__name__}})
            return EXIT_CONFIG
        except StartupTimeoutError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_STARTUP_TIMEOUT
        except Aborted:
            log.info("stopped during start-up")
            return self.completion.finish(0, caught_up=False) if self.completion else 0
        finally:
            for close in reversed(closers):
                close()
            if self.http is not None:
                self.http.stop()
            if self.api is not None:
                self.api.service.close()

    def _run(self, closers: list[Callable[[], None]]) -> int:
        s = self.settings
        self.health.set(stage="model")
        model = load_model_dir(s.model.dir)
        encoder = Encoder(model, device=s.model.device, tensorrt=s.model.tensorrt,
                          fp16=s.model.fp16, cuda_device_id=s.model.cuda_device_id,
                          intra_op_threads=s.model.intra_op_threads, max_batch=s.model.max_batch)
        self.metrics.model.info({"model_id": model.model_id, "model_version": model.model_version,
                                 "embedding_dim": str(model.embedding_dim),
                                 "modalities": ",".join(model.graphs)})
        for modality, provider in encoder.providers.items():
            self.metrics.provider.labels(modality, provider).set(1)
        self._check_stop()
        timings = encoder.warm_up()
        self.health.set(warmed_up=True, last_inference_ok=True)
        log.info("model %s (%s) warmed up at batch %d", model.model_id, model.model_version,
                 s.model.max_batch, extra={"fields": {"providers": encoder.providers,
                                                      "warmup_s": timings}})

        self._check_stop()
        self.health.set(stage="qdrant")
        store = self._store or open_store(s.qdrant)
        self.sink = sink = QdrantSink(
            store, model_version=model.model_version, embedding_dim=model.embedding_dim,
            distance=model.distance, modalities=list(model.graphs),
            collection_prefix=s.qdrant.collection_prefix, alias=s.qdrant.alias,
            alias_policy=s.qdrant.alias_policy, payload_indexes=s.qdrant.payload_indexes,
            shard_number=s.qdrant.shard_number, replication_factor=s.qdrant.replication_factor)
        if self._store is None:
            closers.append(sink.close)

        def refused(exc: BaseException) -> bool:
            if isinstance(exc, CollectionMismatchError | StoreBusyError):
                return True
            is_refusal = getattr(store, "is_refusal", None)
            return bool(is_refusal and is_refusal(exc))

        try:
            self._until_reachable("Qdrant", store.target, sink.connect,
                                  lambda exc: not refused(exc))
        except (Aborted, StartupTimeoutError, CollectionMismatchError):
            raise
        except StoreBusyError as exc:
            raise ConfigurationError(f"{exc}; stop the other process, or use a Qdrant server "
                                     "(qdrant.url) to run several daemons") from exc
        except Exception as exc:  # answered, but refused: wrong API key, forbidden, bad request
            raise ConfigurationError(f"Qdrant at {store.target} refused the collection "
                                     f"bootstrap: {type(exc).__name__}: {exc}") from exc
        self.health.set(qdrant_ok=True, qdrant_error=None)
        self._attach_search(store, model, encoder, sink.collection)

        self._check_stop()
        self.health.set(stage="kafka")
        dead_letters = DeadLetterProducer(s.kafka)
        closers.append(dead_letters.close)
        acks: queue.SimpleQueue = queue.SimpleQueue()
        pipeline = Pipeline(
            model=model, encoder=encoder, sink=sink, dead_letters=dead_letters,
            fetcher=Fetcher(s.media.allowed_roots, s.media.allowed_hosts, s.media.http_timeout_s,
                            s.media.max_bytes),
            limits=decode_limits(s.media, max_bytes=s.media.max_bytes),
            metrics=self.metrics, health=self.health, on_done=acks.put,
            intake_size=s.kafka.max_in_flight + s.kafka.max_poll_records,
            embed_queue=s.pipeline.embed_queue,
            decode_workers=s.media.decode_workers, max_batch=s.model.max_batch,
            batch_max_wait_s=s.pipeline.batch_max_wait_ms / 1000,
            backoff=self._backoff(), metadata_max_bytes=s.media.metadata_max_bytes,
            dead_letter_failures_unready=s.kafka.dead_letter_failures_unready,
            tombstones=s.kafka.tombstones)
        quarantine = self._quarantine(closers)
        source = KafkaSource(s.kafka)
        self.runner = runner = Runner(s, source, pipeline, acks, self.metrics, self.health,
                                      self.stop, self.force, quarantine)
        source.connect(runner.on_revoked, runner.on_assigned, runner.on_revoke_commit)
        closers.append(source.close)  # idempotent; the runner closes it first on a normal stop
        self._until_reachable("Kafka", ",".join(s.kafka.bootstrap_servers),
                              lambda: source.bootstrap(timeout_s=5.0), lambda exc: True)
        self.health.set(broker_ok=True)
        if self.completion is not None:
            completion = self.completion
            self._until_reachable("Kafka", ",".join(s.kafka.bootstrap_servers),
                                  lambda: completion.prepare(source, runner.tracker, sink),
                                  lambda exc: not isinstance(exc, ConfigurationError))
            runner.done = completion.done
        pipeline.start()
        log.info("consuming %s as group %s", s.kafka.topics, s.kafka.group_id)
        self.started.set()
        code = runner.run()
        if self.completion is not None:
            code = self.completion.finish(code, caught_up=runner.finished)
        return code

    def _quarantine(self, closers: list[Callable[[], None]]) -> Quarantine | None:
        """The poison quarantine, with its state topic created when missing (or None: off)."""
        k = self.settings.kafka
        if not k.state_topic or not k.poison_after_crashes:
            return None
        store = StateTopic(k)
        closers.append(store.close)
        try:
            self._until_reachable("Kafka", ",".join(k.bootstrap_servers), store.ensure,
                                  lambda exc: isinstance(exc, UNREACHABLE))
        except (Aborted, StartupTimeoutError):
            raise
        except Exception as exc:  # refused (ACLs, policies): index without the quarantine
            log.error("poison quarantine off: cannot create or check kafka.state_topic %r (%s: "
                      "%s); create it (1 partition, cleanup.policy=compact) or set "
                      "kafka.state_topic empty", k.state_topic, type(exc).__name__, exc)
            return None
        return Quarantine(store, after_crashes=k.poison_after_crashes,
                          window=k.max_in_flight_per_partition)

    def _attach_search(self, store: VectorStore, model, encoder: Encoder,
                       collection: str) -> None:
        """Searches are answered from now on, with this model against its own collection."""
        if self.api is None:
            return
        try:
            self.api.attach(searcher_for(self.settings, store, model, encoder, collection))
        except Exception as exc:  # search is a service on the side: indexing goes on
            log.error("search disabled: %s: %s", type(exc).__name__, exc)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Aborted()

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.pipeline.retry_initial_s, self.settings.pipeline.retry_max_s)

    def _until_reachable(self, name: str, target: str, call: Callable[[], None],
                         transient: Callable[[BaseException], bool]) -> None:
        """Start-up calls retried with back-off until they work, a stop, or the time limit."""
        limit = self.settings.pipeline.startup_timeout_s
        started = time.monotonic()

        def on_failure(exc: BaseException, attempt: int, delay: float) -> None:
            self.health.beat()
            fact = "qdrant_error" if name == "Qdrant" else "broker_error"
            self.health.set(**{fact: f"{type(exc).__name__}: {exc}"[:300],
                               ("qdrant_ok" if name == "Qdrant" else "broker_ok"): False})
            log.error("%s at %s is unreachable (%s: %s); retrying in %.1fs (not ready meanwhile)",
                      name, target, type(exc).__name__, str(exc).splitlines()[0][:200], delay)
            if limit and time.monotonic() - started > limit:
                raise StartupTimeoutError(f"{name} at {target} unreachable for over {limit}s")

        retry(call, is_transient=transient, backoff=self._backoff(), stop=self.stop,
              on_failure=on_failure)
