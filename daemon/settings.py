"""The daemon's one settings object: defaults and documentation live next to each field.

Values come from three layers, later ones winning: the defaults below, a config file (YAML,
TOML or JSON, one table per section) and `AVINDEX_<SECTION>_<FIELD>` environment variables
(`AVINDEX_KAFKA_BOOTSTRAP_SERVERS=a:9092,b:9092`). Nothing else in the daemon reads the
environment. Secrets (the Qdrant API key, Kafka SASL/SSL passwords) can also be read from files
and are masked whenever the settings are logged.

`docs/daemon.md` lists every field; `reference_markdown()` generates that table so it cannot drift.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ENV_PREFIX", "Settings", "SettingsError", "load_settings", "reference_markdown"]

ENV_PREFIX = "AVINDEX_"
MASK = "***"
# Read by scripts/setup.sh, scripts/test.sh and the training tools, not by the daemon: not worth
# a warning.
SCRIPT_VARIABLES = ("AVINDEX_EXTRAS", "AVINDEX_VENV", "AVINDEX_TORCH", "AVINDEX_TORCH_INDEX",
                    "AVINDEX_WEIGHTS_DIR")


class SettingsError(ValueError):
    """Configuration that cannot work; the message names the setting and the fix."""


def setting(default: Any, doc: str, *, secret: bool = False) -> Any:
    """A dataclass field with its documentation (and whether it is a secret) attached."""
    return field(default=default, metadata={"doc": doc, "secret": secret})


def doc(text: str) -> dict[str, Any]:
    """Metadata for a list field, written as `field(default_factory=..., metadata=doc(...))`."""
    return {"doc": text, "secret": False}


# Payload index types a collection can be given (`qdrant.payload_indexes`), Qdrant's names.
PAYLOAD_SCHEMAS = ("keyword", "integer", "float", "bool", "datetime", "text", "uuid")

DEFAULT_CODECS = (
    "h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "aac", "mp3", "opus", "vorbis", "flac", "alac",
    "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_u8",
)


@dataclass
class ModelSettings:
    """The embedding model (a model directory as in docs/model-directory.md)."""

    dir: str = setting("", "Model directory: manifest.json plus ONNX files. Required.")
    device: str = setting(
        "auto", "`auto` (CUDA when onnxruntime-gpu sees a GPU, else CPU), `cuda` or `cpu`. "
        "An unavailable GPU falls back to CPU with a warning.")
    tensorrt: bool = setting(
        False, "Try ONNX Runtime's TensorRT provider first (GPU builds only).")
    fp16: bool = setting(
        False, "Use the fp16 graphs from the manifest when running on a GPU and they exist.")
    cuda_device_id: int = setting(0, "GPU index for the CUDA/TensorRT providers.")
    intra_op_threads: int = setting(0, "ONNX Runtime intra-op threads (0 = its default).")
    max_batch: int = setting(
        32, "Items per inference call and per Qdrant upsert; warm-up runs at this size.")


@dataclass
class KafkaSettings:
    """The source topic(s), the consumer group and the dead-letter topic."""

    bootstrap_servers: list[str] = field(
        default_factory=lambda: ["localhost:9092"], metadata=doc("Kafka brokers (host:port)."))
    topics: list[str] = field(
        default_factory=lambda: ["avindex.media"],
        metadata=doc("Topics with media items (key = media id)."))
    group_id: str = setting("avindex", "Consumer group; scale out by starting more daemons.")
    client_id: str = setting("avindex-daemon", "Kafka client id (broker logs and quotas).")
    dead_letter_topic: str = setting(
        "avindex.media.dlq", "Where items that cannot be indexed go, with the reason.")
    auto_offset_reset: str = setting(
        "earliest", "Where a group without committed offsets starts: `earliest` or `latest`.")
    session_timeout_ms: int = setting(
        10000, "Group session timeout; a daemon silent this long loses its partitions.")
    heartbeat_interval_ms: int = setting(3000, "Heartbeat period (below a third of the session).")
    max_poll_interval_ms: int = setting(
        300000, "Longest gap between polls before the group evicts us. The daemon keeps polling "
        "while paused and while draining, so this only bounds a stuck main loop (and must "
        "exceed kafka.revoke_drain_s).")
    max_poll_records: int = setting(100, "Records taken per poll (also capped by free capacity).")
    max_message_bytes: int = setting(
        1048576, "Largest message value expected; sizes the fetch and the dead-letter producer. "
        "Raise it together with the broker and topic limits, or send large media by reference.")
    request_timeout_ms: int = setting(30000, "Kafka request timeout.")
    security_protocol: str = setting(
        "PLAINTEXT", "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL` (passed to the client).")
    sasl_mechanism: str | None = setting(None, "`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, ...")
    sasl_username: str | None = setting(None, "SASL user name.")
    sasl_password: str | None = setting(None, "SASL password (secret).", secret=True)
    sasl_password_file: str | None = setting(
        None, "File holding the SASL password (read at start-up, trailing newline stripped).")
    ssl_cafile: str | None = setting(None, "CA bundle for SSL.")
    ssl_certfile: str | None = setting(None, "Client certificate for SSL.")
    ssl_keyfile: str | None = setting(None, "Client key for SSL.")
    ssl_password: str | None = setting(None, "Password of the SSL key (secret).", secret=True)
    ssl_check_hostname: bool = setting(True, "Verify the broker's host name against its cert.")
    commit_interval_s: float = setting(
        1.0, "How often finished offsets are committed (also on revoke and shutdown).")
    max_in_flight: int = setting(
        256, "Messages taken but not yet indexed or dead-lettered, over all partitions; at this "
        "many, partitions are paused (the consumer keeps polling to stay in the group).")
    max_in_flight_per_partition: int = setting(
        128, "The same cap per partition; bounds how much is re-processed after a crash.")
    revoke_drain_s: float = setting(
        5.0, "On a rebalance, wait this long for revoked partitions' work before committing.")
    dead_letter_timeout_s: float = setting(
        30.0, "One attempt to write a dead letter (acks=all); failures are retried.")
    dead_letter_failures_unready: int = setting(
        3, "After this many failed dead-letter writes in a row /readyz fails (the daemon keeps "
        "retrying; one success makes it ready again).")
    state_topic: str = setting(
        "avindex.state", "Compacted topic (created when missing) where the poison quarantine "
        "records, per group and partition, which message was alone in flight; empty turns the "
        "quarantine off.")
    poison_after_crashes: int = setting(
        2, "A message that killed the daemon this many times while it was the only message in "
        "flight is dead-lettered as `crashed_decoder` instead of processed again (0: off).")
    tombstones: str = setting(
        "delete", "A record with a key and a null value (a tombstone): `delete` removes that "
        "media id's point (Kafka Connect's convention, and what a compacted topic needs); "
        "`dead_letter` sends it to the dead-letter topic instead.")


@dataclass
class MediaSettings:
    """Where media may come from, and the limits that protect the decoder."""

    allowed_roots: list[str] = field(default_factory=list, metadata=doc(
        "Directories `file://` URIs may point into (after resolving symlinks and `..`). "
        "Empty: file URIs are refused."))
    allowed_hosts: list[str] = field(default_factory=list, metadata=doc(
        "Hosts that `http(s)://` URIs may name, redirects included: `host` allows its scheme's "
        "default port only (80, 443), `host:port` that port. Empty: HTTP URIs are refused."))
    http_timeout_s: float = setting(
        10.0, "Total deadline of a fetch (connect, TLS, headers, body, redirects): its sockets "
        "are shut down when it passes, however slowly the server drips.")
    max_bytes: int = setting(268435456, "Largest media item accepted (raw or fetched).")
    max_duration_s: float = setting(600.0, "Longest media accepted.")
    max_width: int = setting(4096, "Widest video accepted.")
    max_height: int = setting(4096, "Tallest video accepted.")
    max_decoded_frames: int = setting(20000, "Most video frames decoded per item.")
    allowed_codecs: list[str] = field(default_factory=lambda: list(DEFAULT_CODECS), metadata=doc(
        "FFmpeg codec names the decoder may run; others are dead-lettered as "
        "`unsupported_codec` before any decoding. Empty: every codec FFmpeg has."))
    decode_workers: int = setting(2, "Threads that fetch and decode (PyAV releases the GIL).")
    metadata_max_bytes: int = setting(65536, "Largest producer metadata (as JSON) accepted.")


@dataclass
class QdrantSettings:
    """The vector store: a Qdrant server (`url`) or Qdrant Edge in-process (`path`)."""

    url: str | None = setting(
        None, "Qdrant server or cluster, e.g. `http://qdrant:6333` (several daemons, "
        "replication, more data than one node holds).")
    path: str | None = setting(
        None, "Qdrant Edge, the embedded engine: its folder (one shard per model version plus "
        "an alias file). One process at a time; single-node services, the demo, trials.")
    api_key: str | None = setting(None, "Qdrant API key (secret).", secret=True)
    api_key_file: str | None = setting(None, "File holding the API key (Kubernetes secrets).")
    prefer_grpc: bool = setting(True, "Talk gRPC to a server (`url` only).")
    grpc_port: int = setting(6334, "Server gRPC port.")
    timeout_s: float = setting(10.0, "Per-request timeout.")
    collection_prefix: str = setting(
        "avindex", "Collections are named `<prefix>-<model_version>`.")
    alias: str = setting("avindex", "Alias that applications query.")
    alias_policy: str = setting(
        "if_missing", "`if_missing`: point the alias at this model's collection only when it "
        "does not exist yet; `always`: switch it at start-up; `never`: leave it alone.")
    shard_number: int | None = setting(None, "Shards of a new collection (cluster).")
    replication_factor: int | None = setting(None, "Replicas of a new collection (cluster).")
    flush_interval_s: float = setting(
        5.0, "Qdrant Edge only: at most one durability flush (WAL and segments synced to disk) "
        "per this many seconds, and offsets are committed only after one, so commits come this "
        "often. A flush holds the Python interpreter while it runs (tens to hundreds of ms on a "
        "busy disk); a Qdrant server needs none.")
    payload_indexes: dict[str, str] = field(default_factory=dict, metadata=doc(
        "Payload indexes created with a new collection (and added to an existing one), besides "
        "the built-in ones: `{\"metadata.language\": \"keyword\", \"metadata.recorded_at\": "
        "\"datetime\"}`; types keyword, integer, float, bool, datetime, text, uuid. As an "
        "environment variable: JSON, or `metadata.language=keyword,...`."))


@dataclass
class PipelineSettings:
    """Queues, batching, retries and shutdown."""

    embed_queue: int = setting(
        64, "Decoded items waiting for the encoder (each can be a few MB of frames).")
    batch_max_wait_ms: float = setting(
        0.0, "Extra wait for a batch to fill; 0 = take what piled up while the encoder was busy.")
    retry_initial_s: float = setting(0.5, "First retry delay after a transient failure.")
    retry_max_s: float = setting(30.0, "Retry delays double up to this cap.")
    startup_timeout_s: float = setting(
        0.0, "Give up (exit 3) when Qdrant or Kafka stays unreachable this long at start-up; "
        "0 = keep trying, answering /readyz with 503 meanwhile.")
    max_in_flight_age_s: float = setting(
        600.0, "/healthz fails when a message has been in flight this long without waiting on "
        "Qdrant or the dead-letter topic (a stuck fetch, decode or inference; outages are "
        "reported by /readyz instead). 0: not checked.")
    shutdown_deadline_s: float = setting(
        25.0, "SIGTERM/SIGINT: time to finish in-flight work before dropping it (dropped work is "
        "not committed and will be redelivered). A second signal forces exit.")


@dataclass
class HttpSettings:
    """The HTTP API: probes, metrics, search, media and the web page (docs/search-api.md)."""

    enabled: bool = setting(
        True, "Serve the HTTP API: /healthz, /readyz, /metrics, /v1/search, /openapi.json, the "
        "web page and /media.")
    host: str = setting(
        "", "Listen address. Empty: `127.0.0.1` while no API key is set (said at start-up), "
        "all interfaces (`0.0.0.0`) once one is. Set it (e.g. `0.0.0.0` in containers) to "
        "listen elsewhere; without keys the API is then open to whoever reaches it.")
    port: int = setting(8080, "Listen port (0 = any free port, logged at start-up).")
    metrics_port: int | None = setting(
        None, "Serve /healthz, /readyz and /metrics on this port (same host, never behind a "
        "key) instead of `http.port`.")
    api_keys: list[str] = field(default_factory=list, metadata={
        "doc": "API keys (16+ characters, comma-separated in the environment). Set: search, "
        "/info and /media need `Authorization: Bearer KEY` or `api-key: KEY`; 401 otherwise. "
        "Probes, /metrics, /openapi.json and the page itself stay open.", "secret": True})
    api_keys_file: str | None = setting(
        None, "File with more API keys, one a line (`#` comments); Kubernetes secrets.")
    allowed_hosts: list[str] = field(default_factory=list, metadata=doc(
        "`Host` header values accepted (`name`, `name:port` or `*.domain`); others get 400 "
        "`bad_host`. Empty: any. Probes accept any Host (the kubelet sends the pod IP)."))
    health_stale_s: float = setting(
        30.0, "/healthz fails when the main loop has not turned for this long.")
    max_upload_bytes: int = setting(
        33554432, "Largest query media: a multipart body (media plus the form), or the media "
        "inside a JSON body (whose own cap is 4/3 of this plus 64 KiB, for base64). Refused "
        "with 413 before anything is read when Content-Length says more.")
    request_timeout_s: float = setting(
        30.0, "Total time to receive a request: its headers, then its whole body (408 "
        "`timeout`), however steadily a slow client sends.")
    upload_concurrency: int = setting(
        8, "Request bodies received at once (search and batch); more get 503 `overloaded`. "
        "Bounds the memory held by uploads in flight.")
    search_concurrency: int = setting(
        2, "Searches decoded, embedded and queried at once, in a worker pool of this size "
        "(never the indexing loop), taken after the body arrived; more get 503 `overloaded`.")
    max_connections: int = setting(
        256, "Open connections; requests beyond get 503 (uvicorn's `limit_concurrency`). "
        "Connections cost no thread.")
    max_top_k: int = setting(1000, "Largest `limit` (`top_k`) a search may ask for.")
    max_offset: int = setting(10000, "Largest `offset` a search may ask for (pagination).")
    max_batch: int = setting(16, "Most searches in one POST /v1/search/batch.")
    web_enabled: bool = setting(
        True, "Serve the search page at `/` and indexed media at `/v1/media/<point id>` (only "
        "`file://` URIs inside media.allowed_roots).")
    media_concurrency: int = setting(
        16, "Media downloads served at once (a results page plays up to top_k files); more get "
        "503.")


@dataclass
class LogSettings:
    """Logging."""

    level: str = setting("INFO", "`DEBUG`, `INFO`, `WARNING` or `ERROR`.")
    format: str = setting("json", "`json` (one object per line) or `text`.")


SECTIONS: dict[str, type] = {
    "model": ModelSettings,
    "kafka": KafkaSettings,
    "media": MediaSettings,
    "qdrant": QdrantSettings,
    "pipeline": PipelineSettings,
    "http": HttpSettings,
    "log": LogSettings,
}


@dataclass
class Settings:
    """Everything the daemon can be told; see the section classes for the fields."""

    model: ModelSettings = field(default_factory=ModelSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    qdrant: QdrantSettings = field(default_factory=QdrantSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)

    def redacted(self) -> dict[str, dict[str, Any]]:
        """All values as plain data with secrets replaced by '***' (safe to log)."""
        out: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            values = {}
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                if f.metadata.get("secret") and value not in (None, []):
                    value = MASK
                values[f.name] = value
            out[name] = values
        return out

    def __repr__(self) -> str:  # a stray print or traceback must not leak secrets either
        return f"Settings({self.redacted()!r})"

    def validate(self) -> None:
        """Refuse combinations that cannot work, naming the setting."""
        _validate(self)


def env_name(section: str, name: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{name.upper()}"


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    read_secret_files: bool = True,
) -> tuple[Settings, list[str]]:
    """Defaults, then the file, then the environment; returns (settings, warnings).

    `config_file` defaults to `$AVINDEX_CONFIG`. Warnings name environment variables with our
    prefix that match no setting (Kubernetes injects `<SERVICE>_PORT`-style variables, so those
    must not be fatal).
    """
    environ = os.environ if environ is None else environ
    settings = Settings()
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG") or None
    if config_file:
        _apply_mapping(settings, _read_config_file(Path(config_file)), f"config file {config_file}")
    warnings = _apply_environ(settings, environ)
    if read_secret_files:
        _read_secret_files(settings)
    settings.validate()
    return settings, warnings


def _read_config_file(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise SettingsError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise SettingsError(f"config file {path}: use .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise SettingsError(f"config file {path} does not parse: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"config file {path}: top level must be a table of sections")
    return data


def _apply_mapping(settings: Settings, data: Mapping[str, Any], origin: str) -> None:
    for section_name, values in data.items():
        if section_name not in SECTIONS:
            raise SettingsError(f"{origin}: unknown section {section_name!r}"
                                f"{_suggest(section_name, SECTIONS)}")
        if not isinstance(values, Mapping):
            raise SettingsError(f"{origin}: section {section_name!r} must be a table")
        section = getattr(settings, section_name)
        hints = _hints(type(section))
        for key, raw in values.items():
            if key not in hints:
                raise SettingsError(f"{origin}: unknown setting {section_name}.{key}"
                                    f"{_suggest(key, hints)}")
            setattr(section, key, _coerce(raw, hints[key], f"{section_name}.{key}", origin))


def _apply_environ(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    known = {f"{ENV_PREFIX}CONFIG", *SCRIPT_VARIABLES}
    for section_name in SECTIONS:
        section = getattr(settings, section_name)
        for key, hint in _hints(type(section)).items():
            var = env_name(section_name, key)
            known.add(var)
            if var in environ:
                setattr(section, key, _coerce(environ[var], hint, f"{section_name}.{key}", var))
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    return [f"environment variable {k} matches no setting{_suggest(k, known)}" for k in unknown]


def _read_secret_files(settings: Settings) -> None:
    """`*_file` settings fill their secret when it is not given directly; API keys files add
    their keys (one a line) to `http.api_keys`."""
    pairs = [(settings.qdrant, "api_key"), (settings.kafka, "sasl_password")]
    for section, name in pairs:
        path = getattr(section, f"{name}_file")
        if path and getattr(section, name) is None:
            setattr(section, name, _read_secret(path, f"{name}_file").strip())
    if settings.http.api_keys_file:
        lines = _read_secret(settings.http.api_keys_file, "http.api_keys_file").splitlines()
        keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        settings.http.api_keys = [*settings.http.api_keys, *keys]


def _read_secret(path: str, name: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read {name} {path}: {exc.strerror}") from exc


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(raw: Any, hint: Any, name: str, origin: str) -> Any:
    """Turn a file or environment value into the field's type, or explain why not."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if optional and (raw is None or (isinstance(raw, str) and raw.strip() in ("", "null"))):
        return None
    try:
        if typing.get_origin(hint) is dict:
            return _mapping(raw)
        if typing.get_origin(hint) is list:
            if isinstance(raw, str):
                return [p.strip() for p in raw.split(",") if p.strip()]
            if isinstance(raw, list | tuple):
                return [str(p) for p in raw]
            raise TypeError("expected a list")
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if hint is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError("expected an integer")
            return int(raw)
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            return float(raw)
        if hint is str:
            if isinstance(raw, dict | list):
                raise TypeError("expected a string")
            return str(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{origin}: {name}={raw!r}: {exc}") from exc
    raise SettingsError(f"{origin}: {name} has an unsupported type {hint}")  # pragma: no cover


TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def topic_name_problem(name: str) -> str | None:
    """Why Kafka would refuse `name` as a topic name (None when it is legal)."""
    if not TOPIC_NAME.match(name):
        return "is not a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)"
    if name in (".", ".."):
        return "is not a Kafka topic name ('.' and '..' are reserved)"
    return None


def _mapping(raw: Any) -> dict[str, str]:
    """A table from a config file, or JSON / `k=v,k=v` from the environment."""
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            raw = json.loads(text)
        else:
            pairs = [p.partition("=") for p in text.split(",") if p.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ValueError("expected JSON or key=value,key=value")
            raw = {k.strip(): v.strip() for k, _, v in pairs}
    if not isinstance(raw, Mapping):
        raise TypeError("expected a table")
    return {str(k): str(v) for k, v in raw.items()}


def _validate(s: Settings) -> None:
    errors: list[str] = []
    if not s.model.dir:
        errors.append(f"model.dir is required ({env_name('model', 'dir')})")
    if s.model.device not in ("auto", "cuda", "cpu"):
        errors.append("model.device must be auto, cuda or cpu")
    if s.model.max_batch < 1:
        errors.append("model.max_batch must be >= 1")
    targets = [n for n in ("url", "path") if getattr(s.qdrant, n)]
    if len(targets) != 1:
        errors.append("set exactly one of qdrant.url (a Qdrant server) or qdrant.path (Qdrant "
                      f"Edge, embedded) (got {targets or 'none'})")
    for key, schema in s.qdrant.payload_indexes.items():
        if schema not in PAYLOAD_SCHEMAS:
            errors.append(f"qdrant.payload_indexes[{key!r}] must be one of "
                          f"{', '.join(PAYLOAD_SCHEMAS)} (got {schema!r})")
    if s.qdrant.flush_interval_s < 0:
        errors.append("qdrant.flush_interval_s must be >= 0")
    if s.kafka.tombstones not in ("delete", "dead_letter"):
        errors.append("kafka.tombstones must be delete or dead_letter")
    if s.qdrant.alias_policy not in ("if_missing", "always", "never"):
        errors.append("qdrant.alias_policy must be if_missing, always or never")
    if not s.kafka.topics:
        errors.append("kafka.topics is empty")
    named = [("kafka.topics", t) for t in s.kafka.topics]
    named.append(("kafka.dead_letter_topic", s.kafka.dead_letter_topic))
    if s.kafka.state_topic:
        named.append(("kafka.state_topic", s.kafka.state_topic))
    for name, topic in named:
        if problem := topic_name_problem(topic):
            errors.append(f"{name}: {topic!r} {problem}")
    if s.kafka.dead_letter_topic in s.kafka.topics:
        errors.append("kafka.dead_letter_topic must not be one of kafka.topics")
    if s.kafka.state_topic and s.kafka.state_topic in (*s.kafka.topics,
                                                       s.kafka.dead_letter_topic):
        errors.append("kafka.state_topic must differ from kafka.topics and the dead-letter topic")
    if s.kafka.dead_letter_failures_unready < 1 or s.kafka.poison_after_crashes < 0:
        errors.append("need kafka.dead_letter_failures_unready >= 1 and "
                      "kafka.poison_after_crashes >= 0")
    if s.kafka.auto_offset_reset not in ("earliest", "latest"):
        errors.append("kafka.auto_offset_reset must be earliest or latest")
    for name in ("max_in_flight", "max_in_flight_per_partition", "max_poll_records"):
        if getattr(s.kafka, name) < 1:
            errors.append(f"kafka.{name} must be >= 1")
    if s.kafka.revoke_drain_s * 1000 >= s.kafka.max_poll_interval_ms:
        errors.append("kafka.revoke_drain_s must stay below kafka.max_poll_interval_ms")
    if s.media.decode_workers < 1 or s.pipeline.embed_queue < 1:
        errors.append("media.decode_workers and pipeline.embed_queue must be >= 1")
    if s.pipeline.max_in_flight_age_s < 0:
        errors.append("pipeline.max_in_flight_age_s must be >= 0 (0: not checked)")
    if s.pipeline.retry_initial_s <= 0 or s.pipeline.retry_max_s < s.pipeline.retry_initial_s:
        errors.append("need 0 < pipeline.retry_initial_s <= pipeline.retry_max_s")
    for name in ("max_upload_bytes", "search_concurrency", "max_top_k", "media_concurrency",
                 "upload_concurrency", "max_connections", "max_batch"):
        if getattr(s.http, name) < 1:
            errors.append(f"http.{name} must be >= 1")
    if s.http.max_offset < 0 or s.http.request_timeout_s <= 0:
        errors.append("http.max_offset must be >= 0 and http.request_timeout_s > 0")
    if any(len(k) < 16 or not k.isprintable() or " " in k for k in s.http.api_keys):
        errors.append("http.api_keys: each key needs 16 or more printable characters, no spaces")
    if s.http.metrics_port is not None and s.http.metrics_port == s.http.port != 0:
        errors.append("http.metrics_port must differ from http.port")
    if s.log.format not in ("json", "text"):
        errors.append("log.format must be json or text")
    if errors:
        raise SettingsError("invalid settings: " + "; ".join(errors))


def reference_markdown() -> str:
    """The settings table for docs/daemon.md (a test keeps the doc in step)."""
    lines = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    defaults = Settings()
    for section_name in SECTIONS:
        section = getattr(defaults, section_name)
        for f in dataclasses.fields(section):
            default = getattr(section, f.name)
            shown = ",".join(default) if isinstance(default, list) else default
            shown = json.dumps(default) if isinstance(default, dict) else shown
            shown = "" if shown is None else shown
            doc = f.metadata["doc"].replace("|", "\\|")
            lines.append(f"| `{section_name}.{f.name}` | `{env_name(section_name, f.name)}` | "
                         f"`{shown}` | {doc} |")
    return "\n".join(lines) + "\n"
