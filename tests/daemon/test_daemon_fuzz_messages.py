"""Property-based fuzzing of the message contract: any record, any URI.

Whatever bytes, keys and headers a producer sends, `parse_record` returns a usable request or
refuses with an `ItemError` of stage `parse`: never another exception (which would dead-letter
as an internal error, or worse). The same holds for claim-check URIs and the fetcher's checks.
A short run is part of the default suite; the long one is a slow test:

    .venv/bin/python -m pytest -m slow tests/daemon/test_daemon_fuzz_messages.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avindex.daemon.messages import Fetcher, ItemError, MediaRequest, Record, parse_record

SHORT = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=20_000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

CONTENT_TYPES = st.sampled_from([
    b"video/mp4", b"audio/wav", b"application/json", b"application/json; charset=utf-8",
    b"application/vnd.avindex.envelope+json", b"application/octet-stream", b"text/plain",
    b"VIDEO/MP4", b"application/x+json", b"", b"\xff\xfe", b";", b"video/"])
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
ENVELOPES = st.fixed_dictionaries(
    {}, optional={"id": st.one_of(st.text(max_size=40), JSONISH),
                  "uri": st.one_of(st.text(max_size=60), JSONISH),
                  "metadata": JSONISH}).map(lambda d: json.dumps(d).encode())
VALUES = st.one_of(st.none(), st.binary(max_size=300), ENVELOPES,
                   ENVELOPES.map(lambda b: b[: len(b) // 2]))  # truncated JSON too
HEADERS = st.lists(st.tuples(
    st.one_of(st.just("content-type"), st.just("Content-Type"), st.text(max_size=20),
              st.just("avindex.error.reason")),
    st.one_of(st.none(), CONTENT_TYPES, st.binary(max_size=40))), max_size=6)
RECORDS = st.builds(Record, topic=st.just("t"), partition=st.just(0), offset=st.just(0),
                    key=st.one_of(st.none(), st.binary(max_size=40),
                                  st.text(max_size=40).map(str.encode)),
                    value=VALUES, headers=HEADERS.map(tuple),
                    timestamp_ms=st.one_of(st.none(), st.integers(0, 2**41)))


def check_record(record: Record) -> None:
    try:
        request = parse_record(record, metadata_max_bytes=4096)
    except ItemError as exc:
        assert exc.stage == "parse" and exc.reason and str(exc)
        return
    assert isinstance(request, MediaRequest)
    assert isinstance(request.media_id, str) and request.media_id.strip()
    assert (request.data is None) != (request.uri is None)
    json.dumps(request.metadata)  # storable as a Qdrant payload
    assert not any(k.lower().startswith("avindex.") for k in request.metadata
                   if request.data is not None)


@SHORT
@given(RECORDS)
def test_any_record_parses_or_is_refused_with_a_parse_error(record):
    check_record(record)


@pytest.mark.slow
@LONG
@given(RECORDS)
def test_any_record_parses_or_is_refused_long_run(record):
    check_record(record)


URIS = st.one_of(
    st.text(max_size=80),
    st.builds(lambda s, rest: f"{s}://{rest}",
              st.sampled_from(["file", "http", "https", "ftp", "FILE", "HtTp", "data", ""]),
              st.text(max_size=60)))


@SHORT
@given(URIS)
def test_any_claim_check_uri_resolves_inside_the_roots_or_is_refused(tmp_path_factory, uri):
    root = tmp_path_factory.getbasetemp() / "fuzz-root"
    root.mkdir(exist_ok=True)
    (root / "a.mp4").write_bytes(b"x")
    fetcher = Fetcher([str(root)], [], timeout_s=1.0, max_bytes=10)  # no host: no network
    try:
        found = fetcher.fetch(uri)
    except ItemError as exc:
        assert exc.stage == "fetch" and exc.reason
        return
    assert isinstance(found, Path) and found.is_relative_to(root.resolve())
