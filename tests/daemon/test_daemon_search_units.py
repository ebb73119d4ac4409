"""Pure logic of the search service: which vector a query searches, filters, multipart bodies,
JSON requests, API keys and Host checks."""

from __future__ import annotations

import pytest
from qdrant_client import models

from avindex.daemon.http.auth import HostCheck, KeyRing, presented_key
from avindex.daemon.http.body import FormReader, boundary_of
from avindex.daemon.http.errors import ApiError
from avindex.daemon.http.queries import Limits, parse_search
from avindex.daemon.search import SearchError, parse_filters, plan

BOTH = ["visual", "audio"]


@pytest.mark.parametrize(("kind", "by", "expected"), [
    ("audio", None, ("audio", "visual")),
    ("audio", "audio", ("audio", "visual")),
    ("image", None, ("visual", "audio")),
    ("video", None, ("visual", "audio")),
    ("video", "visual", ("visual", "audio")),
    ("video", "audio", ("audio", "visual")),
])
def test_a_query_searches_the_other_modality(kind, by, expected):
    assert plan(kind, by, BOTH) == expected


@pytest.mark.parametrize(("kind", "by", "modalities", "code"), [
    ("audio", "visual", BOTH, "wrong_modality"),
    ("image", "audio", BOTH, "wrong_modality"),
    ("video", None, ["visual"], "wrong_modality"),  # nothing to search: no audio vectors
    ("text", None, BOTH, "bad_request"),
    ("video", "smell", BOTH, "bad_request"),
])
def test_impossible_plans_are_refused(kind, by, modalities, code):
    with pytest.raises(SearchError) as info:
        plan(kind, by, modalities)
    assert info.value.code == code


def test_filters_become_a_must_of_value_matches():
    f = parse_filters(["metadata.label=7", "topic=media"])
    assert isinstance(f, models.Filter) and len(f.must) == 2
    label = f.must[0].should
    assert [c.key for c in label] == ["metadata.label", "metadata.label"]
    assert [c.match.value for c in label] == ["7", 7]
    assert [c.match.value for c in parse_filters(["flag=true"]).must[0].should] == ["true", True]
    assert parse_filters([]) is None
    for bad in ("novalue", "=7", "a..b=1", "$where=1", "a b=1"):
        with pytest.raises(SearchError) as info:
            parse_filters([bad])
        assert info.value.code == "bad_filter"


def parse_form(raw: bytes, boundary: str, chunk: int = 7):
    """FormReader fed in small chunks, as a body arrives."""
    reader = FormReader(boundary.encode())
    for i in range(0, len(raw), chunk):
        reader.feed(raw[i:i + chunk])
    return reader.form().parts


def body(*parts: bytes, boundary: bytes = b"XyZ") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + \
        b"--" + boundary + b"--\r\n"


def test_multipart_keeps_binary_content_exactly():
    payload = b"\x00\r\n--Xy\r\n\r\n\xff" * 50
    raw = body(
        b'Content-Disposition: form-data; name="file"; filename="q.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + payload,
        b'Content-Disposition: form-data; name="top_k"\r\n\r\n5',
        b'Content-Disposition: form-data; name="empty"\r\n\r\n')
    parts = parse_form(raw, "XyZ")
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("file", "q.wav", "audio/wav"), ("top_k", None, None), ("empty", None, None)]
    assert parts[0].data == payload and parts[1].text == "5" and parts[2].data == b""
    assert [p.data for p in parse_form(raw, "XyZ", chunk=1)] == [p.data for p in parts]


@pytest.mark.parametrize("raw", [
    b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n",  # no closing boundary
    body(b"Content-Disposition: form-data\r\n\r\nno name"),
    body(b"Content-Disposition: attachment; name=\"a\"\r\n\r\n1"),
    body(b"no blank line after the headers"),
    body(b"Bad header line\r\n\r\nx"),
])
def test_malformed_multipart_is_refused(raw):
    with pytest.raises(ApiError) as info:
        parse_form(raw, "XyZ")
    assert (info.value.status, info.value.code) == (400, "bad_request")


def test_boundary_only_for_multipart_form_data():
    assert boundary_of('multipart/form-data; boundary="abc"') == b"abc"
    assert boundary_of("multipart/form-data; boundary=abc") == b"abc"
    assert boundary_of("multipart/mixed; boundary=abc") is None
    assert boundary_of("application/json") is None
    for bad in ("multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; "
                "boundary=" + "a" * 71):
        with pytest.raises(ApiError):
            boundary_of(bad)


def test_api_keys_from_either_header_against_every_key():
    ring = KeyRing(["k" * 16, "other-key-0123456"])
    assert ring.enabled and ring.accepts("k" * 16) and ring.accepts("other-key-0123456")
    assert not ring.accepts("k" * 15) and not ring.accepts(None) and not ring.accepts("")
    assert KeyRing([]).accepts(None)  # no keys configured: open
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bearer  abc ", None) == "abc"
    assert presented_key("Basic abc", "xyz") == "xyz"
    assert presented_key(None, "xyz") == "xyz"
    assert presented_key("Bearer ", None) is None


def test_host_check():
    hosts = HostCheck(["search.example.com", "127.0.0.1:8080", "*.svc.cluster.local"])
    assert hosts.accepts("search.example.com") and hosts.accepts("search.example.com:443")
    assert hosts.accepts("127.0.0.1:8080") and not hosts.accepts("127.0.0.1:9090")
    assert hosts.accepts("avindex.avindex.svc.cluster.local:8080")
    assert not hosts.accepts("svc.cluster.local") and not hosts.accepts("evil.example")
    assert not hosts.accepts("") and not hosts.accepts(None)
    assert HostCheck([]).accepts("anything")


LIMITS = Limits(max_top_k=50, max_offset=100, max_upload_bytes=1000, max_batch=2)


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{", 400, "bad_request"),
    (b"[]", 400, "bad_request"),
    (b'{"query": {}}', 400, "bad_request"),
    (b'{"query": {"id": "a", "audio": "AAAA"}}', 400, "bad_request"),
    (b'{"query": {"id": "a"}, "extra": 1}', 400, "bad_request"),
    (b'{"query": {"id": "a"}, "limit": 51}', 400, "bad_request"),
    (b'{"query": {"id": "a"}, "offset": 101}', 400, "bad_request"),
    (b'{"query": {"audio": "not base64!"}}', 400, "bad_request"),
    (b'{"query": {"audio": ""}}', 400, "no_file"),
    (b'{"query": {"id": "a"}, "filter": {"must": [{"key": "a", "range": {"gt": "x"}}]}}',
     400, "bad_filter"),
    (b'{"query": {"kind": "audio", "id": "a"}}', 400, "bad_request"),
])
def test_json_requests_are_validated(body, status, code):
    with pytest.raises(ApiError) as info:
        parse_search(body, LIMITS)
    assert (info.value.status, info.value.code) == (status, code)


def test_json_request_becomes_a_search_call():
    call = parse_search(b'{"query": {"uri": "file:///m/a.mp4", "kind": "video"}, "by": "audio",'
                        b' "limit": 5, "offset": 10, "with_payload": ["metadata"], "filter": '
                        b'{"must_not": [{"key": "metadata.lang", "match": {"any": ["fr"]}}]}}',
                        LIMITS)
    assert (call.uri, call.kind, call.by) == ("file:///m/a.mp4", "video", "audio")
    assert (call.options.limit, call.options.offset) == (5, 10)
    assert call.options.with_payload == ("metadata",)
    assert isinstance(call.options.filter, models.Filter)
    assert call.options.filter.must_not[0].match.any == ["fr"]
    media = parse_search(b'{"query": {"audio": "AAEC"}}', LIMITS)
    assert (media.kind, media.media) == ("audio", b"\x00\x01\x02")
