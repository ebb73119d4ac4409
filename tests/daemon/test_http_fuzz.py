"""Property-based fuzzing (hypothesis) of the request path: the streaming multipart reader, the
JSON search parser, the whole app in-process, and raw requests to a real uvicorn server.

Properties: any bytes give an answer below 500 (or a closed connection for what is not HTTP),
never an exception or a hang; a well-formed form parses to the same parts however it is split
into chunks. The default suite runs a short pass; `-m slow` runs the long one:

    .venv/bin/python -m pytest tests/daemon/test_http_fuzz.py -m slow
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qdrant_client import QdrantClient, models

from avindex.daemon.encoder import Encoder
from avindex.daemon.health import Health
from avindex.daemon.http.app import Api
from avindex.daemon.http.body import FormReader
from avindex.daemon.http.errors import ApiError
from avindex.daemon.http.queries import Limits, parse_batch, parse_search
from avindex.daemon.http.server import HttpServer
from avindex.daemon.metrics import Metrics
from avindex.daemon.model_dir import load_model_dir
from avindex.daemon.search import Searcher
from avindex.daemon.settings import Settings
from avindex.daemon.store_server import ServerStore

SHORT = settings(max_examples=120, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])
LONG = settings(SHORT, max_examples=3000)
LIMITS = Limits(max_top_k=50, max_offset=100, max_upload_bytes=200_000, max_batch=4)
BOUNDARY = b"fz0123"


def form(parts: list[tuple[bytes, bytes]]) -> bytes:
    out = b""
    for name, data in parts:
        out += (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="' + name
                + b'"\r\n\r\n' + data + b"\r\n")
    return out + b"--" + BOUNDARY + b"--\r\n"


names = st.sampled_from([b"file", b"id", b"kind", b"by", b"top_k", b"filter", b"fields", b"x"])
valid_forms = st.lists(st.tuples(names, st.binary(max_size=200).filter(
    lambda b: b"\r\n--" + BOUNDARY not in b + b"\r\n")), max_size=6).filter(
    lambda parts: [n for n, _ in parts].count(b"file") <= 1)  # one file per form


@st.composite
def mutated(draw, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid body with bytes flipped, dropped, duplicated or inserted."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "drop", "dup", "insert"]))
        if not data and op != "insert":
            continue
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "drop":
            del data[i:i + draw(st.integers(1, 20))]
        elif op == "dup":
            data[i:i] = data[i:i + draw(st.integers(1, 40))]
        else:
            data[i:i] = draw(st.sampled_from([b"\r\n", b"--", b"--" + BOUNDARY, b"\r\n\r\n",
                                              b"\x00", b'"', b":", b"{", b"]", b"\xff"]))
    return bytes(data)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def read_form(data: bytes, cuts: list[int]):
    reader = FormReader(BOUNDARY)
    for chunk in chunks(data, cuts):
        reader.feed(chunk)
    return reader.form()


def check_form_reader(data: bytes, cuts: list[int]) -> None:
    try:
        read_form(data, cuts)
    except ApiError as exc:
        assert 400 <= exc.status < 500


@SHORT
@given(valid_forms, st.lists(st.integers(0, 10_000), max_size=8))
def test_well_formed_forms_parse_the_same_however_they_are_chunked(parts, cuts):
    parsed = read_form(form(parts), cuts)
    assert [(p.name.encode(), bytes(p.data)) for p in parsed.parts] == parts


@SHORT
@given(mutated(valid_forms.map(form)), st.lists(st.integers(0, 10_000), max_size=8))
def test_any_multipart_body_is_parsed_or_refused_with_4xx(data, cuts):
    check_form_reader(data, cuts)


json_requests = st.fixed_dictionaries({
    "query": st.one_of(st.fixed_dictionaries({"id": st.text(max_size=20)}),
                       st.fixed_dictionaries({"audio": st.sampled_from(["", "AAAA", "!!"])}),
                       st.dictionaries(st.text(max_size=6), st.integers(), max_size=2)),
    "limit": st.integers(-5, 100), "offset": st.integers(-5, 200),
    "filter": st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=10)),
                           lambda inner: st.one_of(
                               st.lists(inner, max_size=3),
                               st.dictionaries(st.sampled_from(
                                   ["must", "should", "must_not", "key", "match", "range",
                                    "value", "any", "except", "gte", "lt"]), inner,
                                   max_size=3)), max_leaves=12)})


def check_parser(body: bytes) -> None:
    for parse in (parse_search, parse_batch):
        try:
            parse(body, LIMITS)
        except ApiError as exc:
            assert 400 <= exc.status < 500


@SHORT
@given(mutated(json_requests.map(lambda v: json.dumps(v).encode())))
def test_any_json_body_is_parsed_or_refused_with_4xx(body):
    check_parser(body)


def test_deep_json_is_refused_not_recursed():
    for body in (b"[" * 100_000, b'{"query": {"id": "a"}, "filter": ' + b'{"must": [' * 5000):
        with pytest.raises(ApiError) as info:
            parse_search(body, LIMITS)
        assert info.value.status == 400


# ------------------------------------------------------------------------- the whole app
@pytest.fixture(scope="module")
def api(model_dir):
    """The real app with a real searcher over an empty in-memory collection."""
    model = load_model_dir(model_dir)
    client = QdrantClient(location=":memory:")
    collection = f"avindex-{model.model_version}"
    client.create_collection(collection, vectors_config={
        m: models.VectorParams(size=model.embedding_dim, distance=models.Distance.COSINE)
        for m in model.graphs})
    s = Settings()
    s.http.max_upload_bytes, s.http.request_timeout_s = 200_000, 5.0
    s.http.api_keys = ["fuzz-key-0123456789"]
    api = Api(s, Metrics(), Health())
    api.attach(Searcher(ServerStore(client), model, Encoder(model, device="cpu", max_batch=1),
                        collection, max_top_k=50))
    yield api
    api.service.close()


CONTENT_TYPES = st.sampled_from([
    "application/json", "multipart/form-data; boundary=fz0123", "multipart/form-data",
    "multipart/form-data; boundary=", "text/plain", "", "application/json; charset=latin-1",
    "multipart/form-data; boundary=\"fz0123\""])
PATHS = st.sampled_from(["/v1/search", "/search", "/v1/search/batch", "/v1/info",
                         "/v1/media/x", "/v1/media/00000000-0000-0000-0000-000000000000",
                         "/web/app.js", "/web/..%2f", "/nope", "/"])
BODIES = st.one_of(mutated(valid_forms.map(form)),
                   mutated(json_requests.map(lambda v: json.dumps(v).encode())),
                   st.binary(max_size=300))


def check_app(api: Api, method: str, path: str, ctype: str, body: bytes, key: bool) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    if key:
        headers["Authorization"] = "Bearer fuzz-key-0123456789"

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=api.app(), raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.request(method, path, content=body, headers=headers)

    response = asyncio.run(send())
    assert response.status_code < 500, (path, ctype, body[:200], response.text[:300])
    if response.headers.get("content-type", "").startswith("application/json"):
        answer = response.json()
        assert isinstance(answer, dict)


@SHORT
@given(st.sampled_from(["GET", "POST", "PUT"]), PATHS, CONTENT_TYPES, BODIES, st.booleans())
def test_the_app_answers_any_request_below_500(api, method, path, ctype, body, key):
    check_app(api, method, path, ctype, body, key)


# -------------------------------------------------------------------- real uvicorn, raw
@pytest.fixture(scope="module")
def server(api):
    http = api.http
    running = HttpServer([(api.app(), 0)], "127.0.0.1", http)
    running.start()
    yield running.ports[0]
    running.stop()


REQUEST = (b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
           b"Authorization: Bearer fuzz-key-0123456789\r\nContent-Type: application/json\r\n"
           b"Content-Length: 35\r\n\r\n{\"query\": {\"id\": \"a\"}, \"limit\": 3}")


def check_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # nothing more comes: the server must answer or close
        answer = b""
        started = time.monotonic()
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 8  # no hang
    if answer.startswith(b"HTTP/1.1 "):
        assert int(answer[9:12]) < 500, (data[:300], answer[:300])


@SHORT
@given(mutated(st.just(REQUEST)))
def test_raw_requests_to_uvicorn_get_4xx_or_a_close(server, data):
    check_raw(server, data)


# ------------------------------------------------------------------------------- long runs
@pytest.mark.slow
@LONG
@given(mutated(valid_forms.map(form)), st.lists(st.integers(0, 10_000), max_size=8))
def test_long_multipart(data, cuts):
    check_form_reader(data, cuts)


@pytest.mark.slow
@LONG
@given(mutated(json_requests.map(lambda v: json.dumps(v).encode())))
def test_long_json(body):
    check_parser(body)


@pytest.mark.slow
@settings(LONG, max_examples=1000)
@given(st.sampled_from(["GET", "POST"]), PATHS, CONTENT_TYPES, BODIES, st.booleans())
def test_long_app(api, method, path, ctype, body, key):
    check_app(api, method, path, ctype, body, key)


@pytest.mark.slow
@settings(LONG, max_examples=1000)
@given(mutated(st.just(REQUEST)))
def test_long_raw(server, data):
    check_raw(server, data)
