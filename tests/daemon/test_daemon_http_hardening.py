"""The HTTP findings of issue 13 (point 6), each against a real daemon over real sockets.

Reproduced first against the ThreadingHTTPServer stack (all six failed there), kept against the
Starlette/uvicorn one: a slow upload holds no search slot and is cut off by a total deadline;
connections cost no thread each; the multipart part limit stops a body while it is being read;
malformed requests get 4xx, never 500; /media errors name no server path; foreign Host headers
are refused when `http.allowed_hosts` is set.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from daemon_harness import DaemonThread, produce, settings_for, wait_for
from search_helpers import read_all

from avindex.daemon.sink import point_id

N = 6
TIMEOUT_S = 3.0  # http.request_timeout_s of this daemon: the total deadline for a request body


@pytest.fixture(scope="module")
def daemon(broker, model_dir, clips, media_root, tmp_path_factory):
    link = media_root / "hardening-link.mp4"
    if not link.exists():
        link.symlink_to(clips[0])
    topic = f"hardening-{time.monotonic_ns() % 10**8}"
    broker.create_topic(topic)
    settings = settings_for(model_dir, broker.bootstrap, topic, group="g-hardening",
                            dlq="hardening-dlq", media={"allowed_roots": [str(media_root)]},
                            edge=tmp_path_factory.mktemp("hardening") / "edge",
                            http={"max_upload_bytes": 400_000, "search_concurrency": 1,
                                  "request_timeout_s": TIMEOUT_S,
                                  "allowed_hosts": ["127.0.0.1", "localhost"]})
    messages = []
    for i, clip in enumerate(clips[:N]):
        uri = f"file://{link}" if i == 0 else f"file://{clip}"
        messages.append((f"h-{i}".encode(), json.dumps({"id": f"h-{i}", "uri": uri}).encode(),
                         [("content-type", b"application/json")]))
    running = DaemonThread(settings, None).start()
    produce(broker.bootstrap, topic, messages)
    port = running.daemon.http_port
    wait_for(lambda: request(port, get("/info"))[0] == 200
             and json.loads(request(port, get("/info"))[1]).get("points") == N, 60,
             what="indexed points")
    yield running
    assert running.stop() == 0


def get(path: str, host: str = "127.0.0.1") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def id_search(media_id: str) -> tuple[bytes, bytes]:
    body = (b'--b\r\nContent-Disposition: form-data; name="id"\r\n\r\n' + media_id.encode()
            + b"\r\n--b--\r\n")
    head = (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    return head, body


def request(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes, read until the server closes; (status, body), status 0: no answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = read_all(s)
    if not data.startswith(b"HTTP/"):
        return 0, data
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]


def test_slow_uploads_hold_no_search_slot_and_meet_a_total_deadline(daemon):
    """search_concurrency=1. Two uploads dripping a byte a second do not starve other searches
    (the body is read before a slot is taken), and they are cut off with 408 after
    http.request_timeout_s in all, however regularly they send."""
    port = daemon.daemon.http_port
    head, body = id_search("h-1")
    slow = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]
    answers: list[bytes] = []
    started = time.monotonic()

    def drip(sock: socket.socket) -> None:
        try:
            sock.sendall(head)
            for byte in body[:-1]:
                sock.sendall(bytes([byte]))
                time.sleep(1.0)
                if time.monotonic() - started > TIMEOUT_S + 6:
                    break
        except OSError:  # the server answered and closed: what the test wants
            pass
        answers.append(read_all(sock))

    threads = [threading.Thread(target=drip, args=(s,)) for s in slow]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        for _ in range(3):
            t0 = time.monotonic()
            status, answer = request(port, b"".join(id_search("h-2")))
            assert status == 200, answer[:300]
            assert time.monotonic() - t0 < 2.0
        for t in threads:
            t.join(TIMEOUT_S + 15)
        assert len(answers) == 2
        for data in answers:
            assert data.startswith(b"HTTP/1.1 408"), data[:200]
            assert json.loads(data.partition(b"\r\n\r\n")[2])["error"] == "timeout"
        assert time.monotonic() - started < TIMEOUT_S + 5
    finally:
        for s in slow:
            s.close()


def test_connections_cost_no_thread_each(daemon):
    port = daemon.daemon.http_port
    before = threading.active_count()
    idle = []
    try:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
            idle.append(s)
        time.sleep(1.0)
        assert threading.active_count() - before <= 4
        assert request(port, get("/healthz"))[0] == 200  # and the server still answers
    finally:
        for s in idle:
            s.close()


def test_the_part_limit_stops_a_body_while_it_is_read(daemon):
    """A 390 kB body of empty form fields is refused after its first kilobytes: the answer
    comes while most of the body is still unsent (the old server read and split it first)."""
    port = daemon.daemon.http_port
    part = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'
    total = 390_000
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                  b"Content-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: " + str(total).encode() + b"\r\n\r\n" + part * 200)
        data = read_all(s)
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    answer = json.loads(data.partition(b"\r\n\r\n")[2])
    assert answer["error"] == "bad_request" and "form fields" in answer["message"]


MALFORMED = [
    b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: \xb2\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n",
    b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: \xc2\xb2\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n",
    b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n",
    b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1e3\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n",
    b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999999999999999\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n",
    b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\n\r\nabcd",
    b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n"
    b"Content-Type: multipart/form-data; boundary=\r\n\r\nabcd",
    b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n"
    b"Content-Type: multipart/form-data; boundary=\xff\xfe\r\n\r\nabcd",
    b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n0\r\n\r\n",
    b"GET /media/%ZZ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /media/\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Line\r\n\r\n",
    b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /info HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_requests_get_4xx(daemon, raw):
    status, body = request(daemon.daemon.http_port, raw)
    assert 400 <= status < 500, (status, body[:300])


def test_media_range_errors_are_4xx(daemon):
    port = daemon.daemon.http_port
    pid = point_id("h-3")
    for value in (b"bytes=\xc2\xb2-", b"bytes=5-1", b"bytes=999999999-", b"lines=1-2",
                  b"bytes=0-1,4-5x"):
        raw = (f"GET /media/{pid} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               .encode() + b"Range: " + value + b"\r\n\r\n")
        status, body = request(port, raw)
        assert status == 416, (value, status, body[:200])


def test_media_errors_name_no_server_path(daemon, media_root, clips):
    port = daemon.daemon.http_port
    link = media_root / "hardening-link.mp4"
    link.unlink()
    link.symlink_to("/etc/hostname")
    try:
        status, body = request(port, get(f"/media/{point_id('h-0')}"))
        assert status == 403 and json.loads(body)["error"] == "uri_not_allowed"
        text = body.decode()
        assert str(media_root) not in text and "/etc" not in text and "hardening-link" not in text
    finally:
        link.unlink()
        link.symlink_to(clips[0])
    status, body = request(port, get(f"/media/{point_id('h-0')}"))
    assert status == 200


def test_foreign_host_headers_are_refused(daemon):
    port = daemon.daemon.http_port
    status, body = request(port, get("/info", host="evil.example"))
    assert status == 400 and json.loads(body)["error"] == "bad_host"
    status, _ = request(port, get("/info", host=f"127.0.0.1:{port}"))
    assert status == 200
    status, _ = request(port, get("/info", host="localhost"))
    assert status == 200
    # probes stay open whatever the Host (the kubelet sends the pod IP)
    status, _ = request(port, get("/healthz", host="10.1.2.3:8080"))
    assert status == 200
