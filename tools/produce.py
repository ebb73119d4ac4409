"""`avindex produce`: push media into a topic the way the daemon expects it.

    avindex produce FILE|DIR|MANIFEST.csv --topic T [--by-reference [--root R]]
                    [--metadata k=v ...] [--bootstrap-servers HOST:PORT] [--delete ID ...]

- Inputs: a media file; a folder (every audio/video file under it); or a manifest CSV with an
  `id` and a `path` column (relative to the manifest) whose other columns become metadata.
- The key is the media id: the manifest's `id`, else the path relative to the folder given (a
  single file: its name). The same file always gets the same key, and the daemon derives the
  point id from it, so producing again overwrites instead of duplicating.
- As bytes (default): the file is the value, its content type a header, `--metadata` more
  headers. Refused before sending when larger than the daemon's limits (`kafka.
  max_message_bytes`, `media.max_bytes`, from `--config`/`AVINDEX_*` or the defaults), with a
  hint to send it by reference.
- By reference (`--by-reference`): a claim-check envelope `{"id", "uri", "metadata"}`; the URI
  is `file://` of the file (which must lie under `--root` when given: the daemon's
  `media.allowed_roots`), or `--root https://host/base` + the relative path.
- `--delete ID ...` sends tombstones (the key and a null value): the daemon deletes those
  points (`kafka.tombstones=delete`).

Exit codes: 0 everything sent; 1 some items refused (the rest was sent); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import json
import mimetypes
import os
import sys
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avindex.daemon.settings import KafkaSettings, Settings, SettingsError, load_settings

__all__ = ["Item", "Limits", "Refused", "configure", "encode", "items_from", "main", "send"]

MEDIA_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts",
                  ".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus"}
CONTENT_TYPES = {".mkv": "video/x-matroska", ".webm": "video/webm", ".ts": "video/mp2t",
                 ".m4a": "audio/mp4", ".aac": "audio/aac", ".flac": "audio/flac",
                 ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg",
                 ".wav": "audio/wav"}
ENVELOPE_TYPE = b"application/json"


class Refused(Exception):
    """One item the daemon would refuse: not sent, with the reason and what to do."""


@dataclass(frozen=True)
class Limits:
    """The daemon's limits that a producer can check before sending."""

    max_message_bytes: int = 1048576
    max_bytes: int = 268435456
    metadata_max_bytes: int = 65536

    @classmethod
    def of(cls, s: Settings) -> Limits:
        return cls(s.kafka.max_message_bytes, s.media.max_bytes, s.media.metadata_max_bytes)


@dataclass
class Item:
    media_id: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    base: Path | None = None  # what the id is relative to (for --root URLs)


def content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] \
        or "application/octet-stream"


def items_from(target: Path, metadata: dict[str, Any] | None = None) -> list[Item]:
    """The items a FILE, DIR or MANIFEST.csv names, in a stable order."""
    extra = dict(metadata or {})
    if target.is_dir():
        base = target.resolve()
        return [Item(p.relative_to(base).as_posix(), p, dict(extra), base)
                for p in sorted(base.rglob("*")) if p.is_file()
                and p.suffix.lower() in MEDIA_SUFFIXES]
    if not target.is_file():
        raise FileNotFoundError(f"no such file or folder: {target}")
    if target.suffix.lower() == ".csv":
        with open(target, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows and not {"id", "path"} <= set(rows[0]):
            raise ValueError(f"{target}: a manifest needs `id` and `path` columns")
        base = target.parent.resolve()
        return [Item(row["id"], (base / row["path"]).resolve(),
                     {**{k: v for k, v in row.items() if k not in ("id", "path")}, **extra},
                     base) for row in rows]
    return [Item(target.name, target.resolve(), extra, target.parent.resolve())]


def _reference(item: Item, root: str | None) -> str:
    if root and urllib.parse.urlsplit(root).scheme in ("http", "https"):
        relative = item.path.relative_to(item.base) if item.base else Path(item.path.name)
        return f"{root.rstrip('/')}/{urllib.parse.quote(relative.as_posix())}"
    real = Path(os.path.realpath(item.path))
    if root:
        allowed = Path(os.path.realpath(root))
        if real != allowed and not real.is_relative_to(allowed):
            raise Refused(f"{item.path} is outside --root {root} (the daemon's "
                          "media.allowed_roots would refuse it)")
    return real.as_uri()


def encode(item: Item, *, by_reference: bool, root: str | None,
           limits: Limits) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of one item, or Refused with the reason."""
    meta_size = len(json.dumps(item.metadata, ensure_ascii=False).encode())
    if meta_size > limits.metadata_max_bytes:
        raise Refused(f"{item.media_id}: metadata is {meta_size} bytes > "
                      f"media.metadata_max_bytes {limits.metadata_max_bytes}")
    if not item.path.is_file():
        raise Refused(f"{item.media_id}: no such file {item.path}")
    if by_reference:
        value = json.dumps({"id": item.media_id, "uri": _reference(item, root),
                            "metadata": item.metadata}, ensure_ascii=False).encode()
        headers = [("content-type", ENVELOPE_TYPE)]
    else:
        size = item.path.stat().st_size
        if size > limits.max_bytes:
            raise Refused(f"{item.media_id}: {size} bytes > media.max_bytes {limits.max_bytes}")
        if size > limits.max_message_bytes:
            raise Refused(f"{item.media_id}: {size} bytes > kafka.max_message_bytes "
                          f"{limits.max_message_bytes}: send it by reference (--by-reference, "
                          "a claim-check envelope) or raise the limits of the producer, the "
                          "broker, the topic and the daemon together")
        value = item.path.read_bytes()
        headers = [("content-type", content_type(item.path).encode())]
        headers += [(str(k), str(v).encode()) for k, v in item.metadata.items()]
    if len(value) > limits.max_message_bytes:
        raise Refused(f"{item.media_id}: the message is {len(value)} bytes > "
                      f"kafka.max_message_bytes {limits.max_message_bytes}")
    return value, headers


def producer_for(kafka: KafkaSettings, limits: Limits):
    from kafka import KafkaProducer

    from avindex.daemon.kafka_config import client_config

    config = client_config(kafka)
    config["client_id"] = "avindex-produce"
    return KafkaProducer(**config, acks="all", linger_ms=20,
                         max_request_size=limits.max_message_bytes + 65536)


def send(producer, topic: str, messages: Iterable[tuple[bytes, bytes | None, list]], *,
         total: int | None = None, progress: bool = True) -> int:
    """Send (key, value, headers) and wait until the broker has taken all of them (acks=all);
    returns how many were sent. A failed send raises."""
    from tqdm import tqdm

    futures = []
    with tqdm(total=total, unit="msg", disable=not progress, file=sys.stderr,
              mininterval=0.5) as bar:
        for key, value, headers in messages:
            futures.append(producer.send(topic, key=key, value=value, headers=headers))
            bar.update(1)
        producer.flush(120)
    for future in futures:
        future.get(timeout=60)
    return len(futures)


# ------------------------------------------------------------------------------------------ CLI
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", type=Path, metavar="FILE|DIR|MANIFEST.csv",
                        help="media to send (a folder: every audio/video file under it; a "
                        "manifest: `id` and `path` columns, others become metadata)")
    parser.add_argument("--topic", help="topic (default: the first of kafka.topics)")
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                        help="Kafka (default: kafka.bootstrap_servers)")
    parser.add_argument("--by-reference", action="store_true",
                        help="send claim-check envelopes {id, uri, metadata} instead of bytes")
    parser.add_argument("--root", metavar="DIR|URL",
                        help="with --by-reference: files must lie under DIR (the daemon's "
                        "media.allowed_roots), or URIs are URL + the relative path")
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="producer metadata for every item (repeatable)")
    parser.add_argument("--delete", nargs="+", default=[], metavar="ID",
                        help="send tombstones: the daemon deletes these media ids' points")
    parser.add_argument("--config", metavar="FILE",
                        help="the daemon's settings (limits, Kafka security); default: "
                        "$AVINDEX_CONFIG and AVINDEX_* variables, else the defaults")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _settings(args: argparse.Namespace) -> Settings:
    environ = dict(os.environ)
    if not (args.config or any(k.startswith("AVINDEX_") for k in environ)):
        return Settings()
    environ.setdefault("AVINDEX_MODEL_DIR", "(unused by avindex produce)")
    if not (environ.get("AVINDEX_QDRANT_URL") or environ.get("AVINDEX_QDRANT_PATH")):
        environ["AVINDEX_QDRANT_PATH"] = "(unused by avindex produce)"
    settings, _ = load_settings(args.config, environ)
    return settings


def _metadata(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--metadata {pair!r} is not KEY=VALUE")
        out[key.strip()] = value
    return out


def main(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        metadata = _metadata(args.metadata)
        items = [i for target in args.inputs for i in items_from(target, metadata)]
    except (SettingsError, ValueError, FileNotFoundError) as exc:
        print(f"avindex produce: {exc}", file=sys.stderr)
        return 2
    if not items and not args.delete:
        print("avindex produce: nothing to send (give FILE|DIR|MANIFEST.csv or --delete ID)",
              file=sys.stderr)
        return 2
    if args.root and not args.by_reference:
        print("avindex produce: --root goes with --by-reference", file=sys.stderr)
        return 2
    kafka = settings.kafka
    if args.bootstrap_servers:
        kafka.bootstrap_servers = [s.strip() for s in args.bootstrap_servers.split(",")]
    topic = args.topic or kafka.topics[0]
    limits = Limits.of(settings)
    refused: list[str] = []

    def messages():
        for item in items:
            try:
                value, headers = encode(item, by_reference=args.by_reference, root=args.root,
                                        limits=limits)
            except Refused as exc:
                refused.append(str(exc))
                continue
            yield item.media_id.encode(), value, headers
        for media_id in args.delete:
            yield media_id.encode(), None, []

    producer = producer_for(kafka, limits)
    try:
        sent = send(producer, topic, messages(), total=len(items) + len(args.delete),
                    progress=not args.no_progress)
    finally:
        producer.close(10)
    for reason in refused:
        print(f"avindex produce: refused {reason}", file=sys.stderr)
    form = "claim-check envelopes" if args.by_reference else "media bytes"
    print(f"sent {sent - len(args.delete)} items as {form} and {len(args.delete)} tombstones "
          f"to {topic}; refused {len(refused)}")
    return 1 if refused else 0
