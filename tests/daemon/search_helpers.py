"""The search tests' index: one real daemon (in a thread, Tansu + Qdrant Edge, an API key
set) that indexed 40 real clips with metadata, and `avindex serve` on the same store; plus
brute-force expectations computed with the tiny model's numpy twin, and raw HTTP helpers.
"""

from __future__ import annotations

import datetime as dt
import json
import mimetypes
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from daemon_harness import DaemonThread, produce, settings_for, wait_for
from daemon_helpers import reference_embedding

from avindex.daemon.media import decode_media
from avindex.daemon.model_dir import load_model_dir
from avindex.daemon.serve import SearchServer

N = 40
UPLOAD_LIMIT = 400_000
KEY = "test-key-0123456789abcdef"
LANGUAGES = ("en", "fr", "es")
TIMEOUT_S = 5.0  # http.request_timeout_s
CLOSED_HOST = "127.0.0.1:9"


def media_id(i: int) -> str:
    return f"search-{i:03d}"


def metadata(i: int) -> dict:
    return {"n": i, "parity": "even" if i % 2 == 0 else "odd",
            "language": LANGUAGES[i % 3], "recorded_at": f"2026-01-{i % 28 + 1:02d}T12:00:00Z"}


class Index:
    """The running daemon and search service, and the indexed vectors for brute force."""

    def __init__(self, daemon: DaemonThread, serve: SearchServer, clips: list[Path],
                 model_dir: Path, settings) -> None:
        self.daemon, self.serve, self.clips, self.model_dir = daemon, serve, clips, model_dir
        self.settings = settings
        self.url = f"http://127.0.0.1:{daemon.daemon.http_port}"
        self.serve_url = f"http://127.0.0.1:{serve.http_port}"
        model = load_model_dir(model_dir)
        self.specs = model.visual_spec(), model.audio_spec()
        self.vectors = {media_id(i): self.embed(decode_media(c, *self.specs))
                        for i, c in enumerate(clips)}

    def embed(self, decoded) -> dict[str, np.ndarray]:
        out = {}
        if decoded.frames is not None:
            out["visual"] = reference_embedding("visual", decoded.frames)[0]
        if decoded.audio is not None:
            out["audio"] = reference_embedding("audio", decoded.audio)[0]
        return out

    def query_vector(self, clip: Path, modality: str) -> np.ndarray:
        return self.embed(decode_media(clip, *self.specs))[modality]

    def expected(self, query: np.ndarray, target: str, k: int, keep=lambda i: True) -> list:
        """(media id, cosine) best first, by brute force over the indexed vectors."""
        q = query / np.linalg.norm(query)
        scored = [(mid, float(q @ (v[target] / np.linalg.norm(v[target]))))
                  for mid, v in self.vectors.items()
                  if target in v and keep(int(mid.split("-")[1]))]
        return sorted(scored, key=lambda t: -t[1])[:k]


def start_index(broker, model_dir, clips, media_root, media_server):
    """Index N clips with a real daemon (clip 0 through a symlink in the allowed root), then
    start `avindex serve` on the daemon's Qdrant client. Returns the Index and a stop()."""
    chosen = clips[:N]
    link = media_root / "search-link.mp4"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(chosen[0])
    topic = f"search-{time.monotonic_ns() % 10**8}"
    broker.create_topic(topic, partitions=2)
    edge = Path(tempfile.mkdtemp(prefix="avindex-search-")) / "edge"
    settings = settings_for(model_dir, broker.bootstrap, topic, group="g-search", dlq="search-dlq",
                            edge=edge, media={"allowed_roots": [str(media_root)],
                                   # a closed port: `uri` queries there are unreachable (502)
                                   "allowed_hosts": [media_server, CLOSED_HOST]},
                            http={"max_upload_bytes": UPLOAD_LIMIT, "search_concurrency": 1,
                                  "max_top_k": 50, "max_offset": 30, "max_batch": 4,
                                  "api_keys": [KEY], "request_timeout_s": TIMEOUT_S,
                                  "allowed_hosts": ["127.0.0.1", "localhost"]})
    messages = []
    for i, clip in enumerate(chosen):
        uri = f"file://{link}" if i == 0 else f"file://{clip}"
        envelope = {"id": media_id(i), "uri": uri, "metadata": metadata(i)}
        messages.append((media_id(i).encode(), json.dumps(envelope).encode(),
                         [("content-type", b"application/json")]))
    daemon = DaemonThread(settings, None).start()
    url = f"http://127.0.0.1:{daemon.daemon.http_port}"
    before = dt.datetime.now(dt.UTC)
    produce(broker.bootstrap, topic, messages)
    wait_for(lambda: get_json(url, "/v1/info")[1].get("points") == N, 60, what="40 points")
    serve = SearchServer(settings, store=daemon.daemon.sink.store)
    thread = threading.Thread(target=serve.run, daemon=True)
    thread.start()
    wait_for(lambda: serve.http_port and get_json(
        f"http://127.0.0.1:{serve.http_port}", "/readyz", key=None)[0] == 200, 60,
        what="avindex serve ready")

    def stop() -> None:
        serve.request_stop()
        thread.join(30)
        assert not thread.is_alive()
        assert daemon.stop() == 0
        shutil.rmtree(edge.parent, ignore_errors=True)

    index = Index(daemon, serve, chosen, model_dir, settings)
    index.indexed_after = before
    return index, stop


# ------------------------------------------------------------------------------- raw HTTP
def read_all(sock) -> bytes:
    """Everything a socket receives until the server closes (or the socket times out)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def call(url: str, path: str, *, body: bytes | None = None, headers: dict | None = None,
         key: str | None = KEY, method: str | None = None) -> tuple[int, dict, dict]:
    """(status, JSON answer, response headers in lower case) of one request with urllib."""
    headers = dict(headers or {})
    if key is not None:
        headers.setdefault("Authorization", f"Bearer {key}")
    request = urllib.request.Request(url + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, _json(r.read()), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read()), {k.lower(): v for k, v in exc.headers.items()}


def _json(raw: bytes) -> dict:
    try:
        answer = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"raw": raw.decode(errors="replace")}
    return answer if isinstance(answer, dict) else {"value": answer}


def get_json(url: str, path: str, key: str | None = KEY) -> tuple[int, dict]:
    status, answer, _ = call(url, path, key=key)
    return status, answer


def post_json(url: str, path: str, value, key: str | None = KEY) -> tuple[int, dict]:
    status, answer, _ = call(url, path, body=json.dumps(value).encode(),
                             headers={"Content-Type": "application/json"}, key=key)
    return status, answer


def post_form(url: str, *, file: Path | None = None, data: bytes | None = None,
              kind: str | None = None, media_id: str | None = None, by: str | None = None,
              top_k: int = 10, filters=(), fields: str | None = None, key: str | None = KEY,
              path: str = "/search") -> tuple[int, dict]:
    """POST the multipart form (what curl and the page send)."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []

    def field(name: str, value: str) -> None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())

    if file is not None or data is not None:
        name = file.name if file is not None else "query"
        content = file.read_bytes() if file is not None else data
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="{name}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
                     + content + b"\r\n")
    for name, value in (("kind", kind), ("id", media_id), ("by", by), ("fields", fields)):
        if value:
            field(name, value)
    field("top_k", str(top_k))
    for f in filters:
        field("filter", f)
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    status, answer, _ = call(url, path, body=body, key=key, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    return status, answer


def ranked(answer: dict) -> list[tuple[str, float]]:
    return [(h["media_id"], h["score"]) for h in answer["results"]]


def assert_same_ranking(answer: dict, expected: list) -> None:
    got = ranked(answer)
    assert [m for m, _ in got] == [m for m, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-4)
