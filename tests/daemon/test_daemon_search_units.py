"""Pure logic of the search service: which vector a query searches, filters, multipart bodies."""

from __future__ import annotations

import pytest
from qdrant_client import models

from avindex.daemon.http.multipart import MultipartError, boundary_of, parse_form
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


def body(*parts: bytes, boundary: bytes = b"XyZ") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + \
        b"--" + boundary + b"--\r\n"


def test_multipart_keeps_binary_content_exactly():
    payload = b"\x00\r\n--Xy\r\n\r\n\xff" * 50
    parts = parse_form(body(
        b'Content-Disposition: form-data; name="file"; filename="q.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + payload,
        b'Content-Disposition: form-data; name="top_k"\r\n\r\n5',
        b'Content-Disposition: form-data; name="empty"\r\n\r\n'), "XyZ")
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("file", "q.wav", "audio/wav"), ("top_k", None, None), ("empty", None, None)]
    assert parts[0].data == payload and parts[1].text == "5" and parts[2].data == b""


@pytest.mark.parametrize("raw", [
    b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n",  # no closing boundary
    body(b"Content-Disposition: form-data\r\n\r\nno name"),
    body(b"Content-Disposition: attachment; name=\"a\"\r\n\r\n1"),
    body(b"no blank line after the headers"),
    body(b"Bad header line\r\n\r\nx"),
])
def test_malformed_multipart_is_refused(raw):
    with pytest.raises(MultipartError):
        parse_form(raw, "XyZ")


def test_boundary_only_for_multipart_form_data():
    assert boundary_of('multipart/form-data; boundary="abc"') == "abc"
    assert boundary_of("multipart/form-data; boundary=abc") == "abc"
    assert boundary_of("multipart/mixed; boundary=abc") is None
    assert boundary_of("multipart/form-data") is None
    assert boundary_of("application/json") is None
