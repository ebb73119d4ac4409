"""The message contract: turn a Kafka record into a media request, and fetch what it points to.

A record's key is the media id. Its value is either the media bytes (content type in a
`content-type` header) or a JSON envelope `{"id", "uri", "metadata"}` pointing to the media
(claim-check for files too large for Kafka). Producer metadata comes from the headers (raw form)
or the envelope. URIs are resolved under an allow-list: `file://` paths must resolve (symlinks
and `..` included) inside an allowed root, `http(s)://` hosts must be listed, redirects too.

Every refusal is an `ItemError` with a stage and a machine-readable reason; the pipeline
dead-letters it and carries on.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Fetcher", "ItemError", "MediaRequest", "Record", "parse_record", "tombstone_id"]

MAX_ID_LENGTH = 1024
ENVELOPE_TYPES = ("application/json", "application/vnd.avindex.envelope+json")
RAW_PREFIXES = ("video/", "audio/")
RAW_TYPES = ("application/octet-stream", "application/mp4", "application/ogg",
             "application/x-matroska")
RESERVED_HEADERS = ("content-type",)
OUR_HEADER_PREFIX = "avindex."  # dead-letter and test headers: never producer metadata
DEFAULT_PORTS = {"http": 80, "https": 443}


class ItemError(Exception):
    """One item cannot be indexed. `stage` and `reason` label metrics and dead letters."""

    def __init__(self, stage: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class Record:
    """A consumed message, independent of the Kafka client library."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None


@dataclass
class MediaRequest:
    """What to index: inline bytes (`data`) or a `uri` to fetch."""

    media_id: str
    data: bytes | None
    uri: str | None
    content_type: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def _header(record: Record, name: str) -> bytes | None:
    for key, value in reversed(record.headers):
        if key.lower() == name:
            return value
    return None


def _media_type(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("latin-1").split(";", 1)[0].strip().lower() or None


def _bad(reason: str, message: str) -> ItemError:
    return ItemError("parse", reason, message)


def _check_metadata(metadata: Any, limit: int) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        raise _bad("bad_envelope", "envelope metadata must be a JSON object")
    try:
        size = len(json.dumps(metadata, ensure_ascii=False).encode())
    except (ValueError, RecursionError) as exc:  # nested too deep, or NaN-like oddities
        raise _bad("bad_envelope", f"envelope metadata cannot be stored: {exc}") from exc
    if size > limit:
        raise _bad("metadata_too_large", f"metadata is {size} bytes > limit {limit}")
    return metadata


def _check_id(media_id: Any, what: str) -> str:
    if not isinstance(media_id, str) or not media_id.strip():
        raise _bad("missing_id", f"{what} must be a non-empty string")
    if len(media_id) > MAX_ID_LENGTH:
        raise _bad("missing_id", f"{what} is longer than {MAX_ID_LENGTH} characters")
    return media_id


def _key_text(record: Record) -> str | None:
    if record.key is None:
        return None
    try:
        return record.key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad("missing_id", "message key (the media id) is not UTF-8") from exc


def tombstone_id(record: Record) -> str:
    """The media id a tombstone (a key and a null value) deletes; its key is required."""
    return _check_id(_key_text(record), "a tombstone's key (the media id to delete)")


def parse_record(record: Record, metadata_max_bytes: int = 65536) -> MediaRequest:
    """Classify and validate a record; raises ItemError(stage='parse')."""
    content_type = _media_type(_header(record, "content-type"))
    value = record.value or b""
    if content_type is None:
        is_envelope = value.lstrip()[:1] == b"{"
    elif content_type in ENVELOPE_TYPES or content_type.endswith("+json"):
        is_envelope = True
    elif content_type.startswith(RAW_PREFIXES) or content_type in RAW_TYPES:
        is_envelope = False
    else:
        raise _bad("unsupported_content_type", f"content type {content_type!r} is neither media "
                   "(video/*, audio/*) nor an envelope (application/json)")
    if is_envelope:
        return _parse_envelope(record, value, content_type, metadata_max_bytes)
    media_id = _check_id(_key_text(record), "message key (the media id)")
    metadata = {}
    for key, raw in record.headers:
        if key.lower() not in RESERVED_HEADERS and not key.lower().startswith(OUR_HEADER_PREFIX):
            metadata[key] = raw.decode("utf-8", errors="replace") if raw is not None else None
    return MediaRequest(media_id=media_id, data=value, uri=None, content_type=content_type,
                        metadata=_check_metadata(metadata, metadata_max_bytes))


def _parse_envelope(record: Record, value: bytes, content_type: str | None,
                    metadata_max_bytes: int) -> MediaRequest:
    try:
        envelope = json.loads(value)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise _bad("bad_envelope", f"envelope is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(envelope, dict):
        raise _bad("bad_envelope", "envelope must be a JSON object {id, uri, metadata}")
    media_id = _check_id(envelope.get("id"), "envelope id")
    key = _key_text(record)
    if key is not None and key != media_id:
        raise _bad("id_mismatch", f"message key {key!r} differs from envelope id {media_id!r}")
    uri = envelope.get("uri")
    if not isinstance(uri, str) or not uri:
        raise _bad("bad_envelope", "envelope uri must be a non-empty string")
    metadata = _check_metadata(envelope.get("metadata") or {}, metadata_max_bytes)
    return MediaRequest(media_id=media_id, data=None, uri=uri, content_type=content_type,
                        metadata=metadata)


# ------------------------------------------------------------------------------------- fetching
def _fail(reason: str, message: str) -> ItemError:
    return ItemError("fetch", reason, message)


def _split(uri: str) -> urllib.parse.SplitResult:
    try:
        return urllib.parse.urlsplit(uri)
    except ValueError as exc:  # "Invalid IPv6 URL" and the like
        raise _fail("bad_uri", f"{uri[:200]!r} is not a URI: {exc}") from exc


class _NoProxyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed host (a redirect must not escape the allow-list)."""

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.fetcher.check_http(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """The total deadline of one fetch, enforced on its sockets.

    Socket timeouts bound each read, not the whole: a server dripping one byte a second never
    trips a 10 s timeout. At the deadline this shuts every socket the fetch opened (redirect
    hops included) down, which wakes any read blocked on it; `expired` then says why it failed.
    """

    def __init__(self, seconds: float) -> None:
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def connection_class(self, base: type[http.client.HTTPConnection]) -> type:
        """`base` whose sockets this deadline watches from the moment they connect (before a
        TLS handshake, which could drip too)."""
        deadline = self

        class Watched(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)

                def create(address, timeout, source_address=None):
                    sock = socket.create_connection(address, timeout, source_address)
                    deadline.watch(sock)
                    return sock

                self._create_connection = create

        return Watched


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: nothing to wake
        sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTP(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._class = deadline.connection_class(http.client.HTTPConnection)

    def http_open(self, req):
        return self.do_open(self._class, req)


class _WatchedHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._class = deadline.connection_class(http.client.HTTPSConnection)

    def https_open(self, req):
        return self.do_open(self._class, req, context=self._context)


class Fetcher:
    """Resolves claim-check URIs: files under allowed roots, HTTP(S) from allowed hosts.

    A host listed without a port allows only its scheme's default port (80, 443); name the port
    (`host:8080`) for any other.
    """

    def __init__(self, allowed_roots: list[str], allowed_hosts: list[str], timeout_s: float,
                 max_bytes: int) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in allowed_roots]
        self.hosts = {h.strip().lower() for h in allowed_hosts if h.strip()}
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes

    def fetch(self, uri: str) -> Path | bytes:
        """A checked local path, or the downloaded bytes."""
        scheme = _split(uri).scheme.lower()
        if scheme == "file":
            return self.check_file(uri)
        if scheme in ("http", "https"):
            return self._download(uri)
        raise _fail("unsupported_uri_scheme", f"URI scheme {scheme or '(none)'!r} is not "
                    "supported (use file://, http:// or https://)")

    def check_file(self, uri: str) -> Path:
        parts = _split(uri)
        if parts.netloc not in ("", "localhost"):
            raise _fail("uri_not_allowed", f"file URI names a remote host {parts.netloc!r}")
        path = urllib.parse.unquote(parts.path)
        if "\x00" in path or not path.startswith("/"):
            raise _fail("bad_uri", f"file URI path must be absolute: {uri!r}")
        real = Path(os.path.realpath(path))  # resolves `..` and symlinks before the check
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            raise _fail("uri_not_allowed", f"{path} is outside the allowed roots")
        if not real.is_file():
            raise _fail("not_found", f"no such file: {path}")
        return real

    def check_http(self, uri: str) -> None:
        parts = _split(uri)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise _fail("uri_not_allowed", f"redirect to a non-HTTP URI {uri!r}")
        if parts.username or parts.password:
            raise _fail("bad_uri", "credentials in URIs are not accepted")
        try:
            host, port = (parts.hostname or "").lower(), parts.port
        except ValueError as exc:
            raise _fail("bad_uri", f"bad port in {uri!r}") from exc
        port = port or DEFAULT_PORTS[scheme]
        bare_ok = host in self.hosts and port == DEFAULT_PORTS[scheme]
        if not bare_ok and f"{host}:{port}" not in self.hosts:
            raise _fail("uri_not_allowed", f"host {host}:{port} is not in media.allowed_hosts")

    def _download(self, uri: str) -> bytes:
        """The body, within `timeout_s` in all (connect, TLS, headers, body, redirects)."""
        self.check_http(uri)
        with _Deadline(self.timeout_s) as deadline:
            # No proxies from the environment: the allow-list names the hosts contacted.
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}), _NoProxyRedirects(self),
                _WatchedHTTP(deadline), _WatchedHTTPS(deadline))
            try:
                return self._read(opener, uri, deadline)
            except ItemError:
                raise
            except urllib.error.HTTPError as exc:
                reason = "not_found" if exc.code in (404, 410) else "http_error"
                raise _fail(reason, f"{uri}: HTTP {exc.code} {exc.reason}") from exc
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out
                if deadline.expired:
                    raise _fail("unreachable", f"{uri}: no complete answer within "
                                f"{self.timeout_s}s (media.http_timeout_s)") from exc
                cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if isinstance(cause, ItemError):
                    raise cause from exc
                raise _fail("unreachable", f"{uri}: {cause}") from exc

    def _read(self, opener: urllib.request.OpenerDirector, uri: str,
              deadline: _Deadline) -> bytes:
        with opener.open(uri, timeout=self.timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > self.max_bytes:
                raise _fail("too_large", f"{uri} is {length} bytes > limit {self.max_bytes}")
            chunks, total = [], 0
            while block := response.read(1 << 16):
                total += len(block)
                if total > self.max_bytes:
                    raise _fail("too_large", f"{uri} is larger than {self.max_bytes} bytes")
                chunks.append(block)
            if deadline.expired:  # the shut-down socket read as an early end
                raise OSError("deadline passed")
            if length and length.isdigit() and total != int(length):
                raise _fail("unreachable", f"{uri}: the answer ended after {total} of {length} "
                            "bytes")
            return b"".join(chunks)
