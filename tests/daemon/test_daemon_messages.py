"""The message contract: value forms, ids, metadata, URI allow-lists, dead-letter headers."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from avindex.daemon.deadletter import dead_letter_headers
from avindex.daemon.messages import Fetcher, ItemError, Record, parse_record
from avindex.tools.kafka_admin import free_port


def rec(value, key=b"m1", headers=(), **kw) -> Record:
    return Record(topic="t", partition=2, offset=41, key=key, value=value,
                  headers=tuple(headers), timestamp_ms=kw.get("ts", 1700000000000))


def reason(call) -> tuple[str, str]:
    with pytest.raises(ItemError) as info:
        call()
    return info.value.stage, info.value.reason


def test_raw_media_with_content_type_and_header_metadata():
    r = parse_record(rec(b"\x00\x00\x00 ftypisom", headers=[
        ("content-type", b"video/mp4"), ("camera", b"cam-7"), ("site", b"Z\xc3\xbcrich")]))
    assert r.media_id == "m1" and r.uri is None and r.data.startswith(b"\x00")
    assert r.metadata == {"camera": "cam-7", "site": "Zürich"}


def test_envelope_by_header_or_by_sniffing():
    env = {"id": "m1", "uri": "file:///data/a.mp4", "metadata": {"lang": "fr", "n": 3}}
    for headers in ([("content-type", b"application/json; charset=utf-8")], []):
        r = parse_record(rec(json.dumps(env).encode(), headers=headers))
        assert (r.media_id, r.uri, r.data, r.metadata) == ("m1", env["uri"], None, env["metadata"])
    r = parse_record(rec(json.dumps(env).encode(), key=None))  # key optional for envelopes
    assert r.media_id == "m1"


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (rec(b"x", headers=[("content-type", b"text/plain")]), "unsupported_content_type"),
        (rec(b"{not json", headers=[("content-type", b"application/json")]), "bad_envelope"),
        (rec(b"[1, 2]", headers=[("content-type", b"application/json")]), "bad_envelope"),
        (rec(json.dumps({"id": "m1"}).encode()), "bad_envelope"),
        (rec(json.dumps({"id": "m1", "uri": "file:///a", "metadata": [1]}).encode()),
         "bad_envelope"),
        (rec(json.dumps({"id": "", "uri": "file:///a"}).encode()), "missing_id"),
        (rec(json.dumps({"id": "other", "uri": "file:///a"}).encode()), "id_mismatch"),
        (rec(b"media", key=None, headers=[("content-type", b"video/mp4")]), "missing_id"),
        (rec(b"media", key=b"\xff\xfe", headers=[("content-type", b"video/mp4")]), "missing_id"),
        (rec(json.dumps({"id": "m1", "uri": "file:///a", "metadata": {"x": "y" * 100}}).encode()),
         "metadata_too_large"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(record, expected):
    assert reason(lambda: parse_record(record, metadata_max_bytes=64)) == ("parse", expected)


@pytest.fixture
def roots(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.mp4").write_bytes(b"clip")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (root / "escape.mp4").symlink_to(outside)
    (root / "inside-link.mp4").symlink_to(root / "sub" / "a.mp4")
    return root, outside


def test_file_uris_stay_inside_allowed_roots(roots):
    root, outside = roots
    f = Fetcher([str(root)], [], timeout_s=2, max_bytes=1000)
    assert f.fetch(f"file://{root}/sub/a.mp4") == root / "sub" / "a.mp4"
    assert f.fetch(f"file://localhost{root}/inside-link.mp4") == root / "sub" / "a.mp4"
    assert f.fetch(f"file://{root}/sub/%61.mp4") == root / "sub" / "a.mp4"  # percent-encoding
    cases = {
        f"file://{outside}": "uri_not_allowed",
        f"file://{root}/sub/../../secret.txt": "uri_not_allowed",
        f"file://{root}/escape.mp4": "uri_not_allowed",  # symlink out of the root
        f"file://{root}/sub/%2e%2e/%2e%2e/secret.txt": "uri_not_allowed",
        f"file://otherhost{root}/sub/a.mp4": "uri_not_allowed",
        f"file://{root}/missing.mp4": "not_found",
        "ftp://example.com/a.mp4": "unsupported_uri_scheme",
        "s3://bucket/a.mp4": "unsupported_uri_scheme",
        "/no/scheme.mp4": "unsupported_uri_scheme",
    }
    for uri, expected in cases.items():
        assert reason(lambda u=uri: f.fetch(u)) == ("fetch", expected), uri
    assert reason(lambda: Fetcher([], [], 2, 1000).fetch(f"file://{root}/sub/a.mp4")) == (
        "fetch", "uri_not_allowed")  # no roots configured: file URIs refused


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path, with a redirect and a slow path."""
    (tmp_path / "clip.mp4").write_bytes(b"x" * 5000)
    (tmp_path / "big.mp4").write_bytes(b"x" * 50_000)
    port = free_port()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def do_GET(self):
            if self.path == "/away":
                self.send_response(302)
                self.send_header("Location", "http://example.invalid/clip.mp4")
                self.end_headers()
            elif self.path == "/here":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{port}/clip.mp4")
                self.end_headers()
            elif self.path == "/fail":
                self.send_error(500)
            else:
                super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()
    server.server_close()


def test_http_uris_only_from_allowed_hosts(http_server, monkeypatch):
    port = http_server
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")  # must be ignored
    f = Fetcher([], [f"127.0.0.1:{port}"], timeout_s=5, max_bytes=10_000)
    base = f"http://127.0.0.1:{port}"
    assert f.fetch(f"{base}/clip.mp4") == b"x" * 5000
    assert f.fetch(f"{base}/here") == b"x" * 5000  # redirect to an allowed host
    closed = free_port()
    cases = {
        f"{base}/missing.mp4": "not_found",
        f"{base}/fail": "http_error",
        f"{base}/big.mp4": "too_large",
        f"{base}/away": "uri_not_allowed",  # redirect off the allow-list
        "http://example.invalid/clip.mp4": "uri_not_allowed",  # never contacted
        f"http://127.0.0.1:{closed}/clip.mp4": "uri_not_allowed",  # other port: not listed
        f"http://user:pw@127.0.0.1:{port}/clip.mp4": "bad_uri",
    }
    for uri, expected in cases.items():
        assert reason(lambda u=uri: f.fetch(u)) == ("fetch", expected), uri
    # A host listed without a port allows its scheme's default port only: a bare name must not
    # open every service on that host (an SSRF to its admin ports).
    g = Fetcher([], ["127.0.0.1"], timeout_s=2, max_bytes=10_000)
    assert reason(lambda: g.fetch(f"http://127.0.0.1:{closed}/clip.mp4")) == (
        "fetch", "uri_not_allowed")
    assert reason(lambda: g.fetch("http://127.0.0.1/clip.mp4")) == ("fetch", "unreachable")
    assert reason(lambda: g.fetch("https://127.0.0.1:80/clip.mp4")) == (
        "fetch", "uri_not_allowed")  # 80 is not https's default


def test_dead_letter_headers_keep_the_original_and_say_what_happened():
    original = rec(b"v", headers=[("content-type", b"video/mp4"), ("avindex.error.reason", b"x")])
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    headers = dead_letter_headers(original, reason="corrupt", stage="decode", message="bad",
                                  exception="MediaError", now=now)
    h = {k: v.decode() for k, v in headers}
    assert h["content-type"] == "video/mp4"
    assert [k for k, _ in headers].count("avindex.error.reason") == 1  # earlier attempt replaced
    assert h["avindex.error.reason"] == "corrupt" and h["avindex.error.stage"] == "decode"
    assert h["avindex.error.message"] == "bad" and h["avindex.error.exception"] == "MediaError"
    assert h["avindex.source.topic"] == "t" and h["avindex.source.partition"] == "2"
    assert h["avindex.source.offset"] == "41"
    assert h["avindex.source.timestamp_ms"] == "1700000000000"
    assert h["avindex.error.time"] == "2026-01-02T03:04:05.000Z"
