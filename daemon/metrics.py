"""Prometheus metrics: one `avindex_` prefix, the stage in every name, one failure counter.

Each daemon gets its own registry (two daemons in one test process must not collide). Names
follow what operators know from Triton and TEI: per-stage duration histograms, batch sizes,
queue depths, a failure counter labelled by stage and reason.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

__all__ = ["Metrics"]

P = "avindex_"
LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
END_TO_END = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SEARCH = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30)


class Metrics:
    """All of the daemon's metrics, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # -- message outcomes
        self.consumed = Counter(P + "messages_consumed", "Messages taken from Kafka.",
                                ["topic"], registry=r)
        self.indexed = Counter(P + "messages_indexed", "Messages whose point Qdrant confirmed.",
                               ["topic"], registry=r)
        self.deleted = Counter(P + "messages_deleted",
                               "Tombstones whose point deletion the store confirmed.",
                               ["topic"], registry=r)
        self.dead_lettered = Counter(
            P + "messages_dead_lettered", "Messages written to the dead-letter topic.",
            ["stage", "reason"], registry=r)
        self.failures = Counter(
            P + "failures", "Failed attempts, retried or dead-lettered, by stage and reason.",
            ["stage", "reason"], registry=r)
        self.retries = Counter(P + "retries", "Retries after transient failures.", ["stage"],
                               registry=r)
        # -- per-stage latency
        self.fetch_seconds = Histogram(P + "fetch_duration_seconds",
                                       "Resolving a claim-check URI (file check or download).",
                                       buckets=LATENCY, registry=r)
        self.decode_seconds = Histogram(P + "decode_duration_seconds",
                                        "PyAV decoding and resampling of one item.",
                                        buckets=LATENCY, registry=r)
        self.queue_seconds = Histogram(P + "queue_duration_seconds",
                                       "Time an item waited in a queue.", ["queue"],
                                       buckets=LATENCY, registry=r)
        self.inference_seconds = Histogram(P + "inference_duration_seconds",
                                           "One ONNX Runtime call (a batch of one modality).",
                                           ["modality"], buckets=LATENCY, registry=r)
        self.upsert_seconds = Histogram(P + "upsert_duration_seconds",
                                        "One successful upsert (applied when it returns).",
                                        buckets=LATENCY, registry=r)
        self.flush_seconds = Histogram(P + "flush_duration_seconds",
                                       "Making the store's writes durable before a commit "
                                       "(Qdrant Edge; a no-op on a server).",
                                       buckets=LATENCY, registry=r)
        self.end_to_end_seconds = Histogram(
            P + "end_to_end_latency_seconds",
            "From the Kafka message timestamp to the confirmed upsert.", buckets=END_TO_END,
            registry=r)
        # -- batching and flow control
        self.inference_batch = Histogram(P + "inference_batch_size", "Items per inference call.",
                                         ["modality"], buckets=BATCH, registry=r)
        self.upsert_batch = Histogram(P + "upsert_batch_size", "Points per upsert.",
                                      buckets=BATCH, registry=r)
        self.queue_depth = Gauge(P + "queue_depth", "Items waiting in each queue.", ["queue"],
                                 registry=r)
        self.in_flight = Gauge(P + "in_flight_messages",
                               "Messages taken and not yet indexed or dead-lettered.", registry=r)
        self.oldest_in_flight = Gauge(
            P + "oldest_in_flight_seconds",
            "Age of the oldest message taken and not yet indexed or dead-lettered.", registry=r)
        self.paused_partitions = Gauge(P + "paused_partitions",
                                       "Assigned partitions paused for back-pressure.",
                                       registry=r)
        self.assigned_partitions = Gauge(P + "assigned_partitions", "Partitions assigned to us.",
                                         registry=r)
        self.consumer_lag = Gauge(P + "consumer_lag",
                                  "High watermark minus our commit point, per partition.",
                                  ["topic", "partition"], registry=r)
        self.commits = Counter(P + "offset_commits", "Successful offset commits.", registry=r)
        self.rebalances = Counter(P + "rebalances", "Partition revocations (group rebalances).",
                                  registry=r)
        # -- search (HTTP)
        self.searches = Counter(P + "search_requests",
                                "Search answers (POST /v1/search, /search, /v1/search/batch) by "
                                "HTTP status and error code.", ["status", "code"], registry=r)
        self.search_seconds = Histogram(P + "search_duration_seconds",
                                        "A search request, from arrival to the answer.",
                                        buckets=SEARCH, registry=r)
        self.http_responses = Counter(P + "http_responses",
                                      "HTTP answers by route, status and error code.",
                                      ["route", "status", "code"], registry=r)
        # -- identity and state
        self.model = Info(P + "model", "The model directory being served.", registry=r)
        self.provider = Gauge(P + "execution_provider",
                              "1 for the ONNX Runtime provider each graph runs on.",
                              ["modality", "provider"], registry=r)
        self.ready = Gauge(P + "ready", "1 when /readyz would answer 200.", registry=r)
        self.healthy = Gauge(P + "healthy", "1 when /healthz would answer 200.", registry=r)
