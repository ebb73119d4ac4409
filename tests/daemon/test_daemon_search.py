"""Cross-modal search against an index built by the real daemon (Tansu + Qdrant Edge).

One daemon (in a thread, so the test can also reach its Qdrant client) indexes 40 real clips
sent as file envelopes; then POST /search, `avindex search` and the web page (headless
chromium) are checked against a brute-force ranking computed with the tiny model's numpy twin.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
from daemon_harness import DaemonThread, produce, settings_file, settings_for, wait_for
from daemon_helpers import build_model_dir, reference_embedding
from search_helpers import (
    KEY,
    UPLOAD_LIMIT,
    assert_same_ranking,
    get_json,
    media_id,
    ranked,
)
from search_helpers import post_form as post_search

from avindex.daemon.encoder import Encoder
from avindex.daemon.media import decode_media
from avindex.daemon.model_dir import load_model_dir
from avindex.daemon.search import Searcher, SearchError
from avindex.daemon.sink import point_id


@pytest.fixture
def index(search_index):
    return search_index


# ------------------------------------------------------------------------------ POST /search
def test_audio_query_finds_pictures_ranked_like_brute_force(index):
    clip = index.clips[7]  # a WAV: sound only
    status, answer = post_search(index.url, file=clip, kind="audio", top_k=10)
    assert status == 200, answer
    assert answer["query"]["by"] == "audio" and answer["query"]["vector"] == "visual"
    query = index.embed(decode_media(clip, *index.specs))["audio"]
    assert_same_ranking(answer, index.expected(query, "visual", 10))
    hit = answer["results"][0]
    assert hit["payload"]["model_version"] == answer["model_version"]
    assert hit["id"] == point_id(hit["media_id"])


def test_video_query_by_pictures_finds_sounds_and_by_sound_finds_pictures(index):
    clip = index.clips[3]
    decoded = index.embed(decode_media(clip, *index.specs))
    status, answer = post_search(index.url, file=clip, kind="video", top_k=5)
    assert status == 200 and answer["query"]["vector"] == "audio"
    assert_same_ranking(answer, index.expected(decoded["visual"], "audio", 5))
    status, answer = post_search(index.url, file=clip, kind="video", by="audio", top_k=5)
    assert status == 200 and answer["query"]["vector"] == "visual"
    assert_same_ranking(answer, index.expected(decoded["audio"], "visual", 5))


def test_image_query_searches_sounds(index, tmp_path):
    image = tmp_path / "query.png"
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:] = (200, 40, 90)
    with av.open(str(image), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    status, answer = post_search(index.url, file=image, top_k=6)  # kind from image/png
    assert status == 200, answer
    assert answer["query"]["kind"] == "image" and answer["query"]["vector"] == "audio"
    query = index.embed(decode_media(image, *index.specs))["visual"]
    assert_same_ranking(answer, index.expected(query, "audio", 6))


def test_search_by_indexed_id_and_payload_filter(index):
    status, answer = post_search(index.url, media_id=media_id(4), top_k=8,
                                 filters=["metadata.parity=odd"], fields="metadata")
    assert status == 200, answer
    expected = index.expected(index.vectors[media_id(4)]["audio"], "visual", 8,
                              keep=lambda i: i % 2 == 1)
    assert_same_ranking(answer, expected)
    assert all(h["payload"]["metadata"]["parity"] == "odd" for h in answer["results"])
    assert set(answer["results"][0]["payload"]) == {"media_id", "metadata"}
    # numbers in the payload match numeric filter values too
    status, answer = post_search(index.url, media_id=media_id(4), top_k=3,
                                 filters=["metadata.n=12"])
    assert status == 200 and ranked(answer)[0][0] == media_id(12) and len(answer["results"]) == 1


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({}, 400, "no_file"),
    ({"data": b""}, 400, "no_file"),
    ({"data": os.urandom(UPLOAD_LIMIT + 10)}, 413, "too_large"),
    ({"data": b"\x00\x01 not media " * 50, "kind": "audio"}, 422, "undecodable"),
    ({"clip": 9, "kind": "audio"}, 422, "wrong_modality"),   # a silent video as a sound
    ({"clip": 7, "kind": "video"}, 422, "wrong_modality"),   # a WAV as a video
    ({"clip": 3, "kind": "audio", "by": "visual"}, 422, "wrong_modality"),
    ({"clip": 3, "filters": ["no equals sign"]}, 400, "bad_filter"),
    ({"clip": 3, "filters": ["../x=1"]}, 400, "bad_filter"),
    ({"clip": 3, "top_k": 51}, 400, "bad_request"),
    ({"clip": 3, "kind": "text"}, 400, "bad_request"),
    ({"media_id": "never-indexed"}, 404, "not_found"),
])
def test_search_errors_are_clear_4xx(index, kwargs, status, code):
    if "clip" in kwargs:
        kwargs["file"] = index.clips[kwargs.pop("clip")]
    got, answer = post_search(index.url, **kwargs)
    assert (got, answer["error"]) == (status, code), answer
    assert answer["message"]


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1]


AUTH = f"Authorization: Bearer {KEY}\r\n".encode()


def test_protocol_errors(index):
    status, body = raw_request(index.url, b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH +
                               b"Content-Type: text/plain\r\nContent-Length: 2\r\n"
                               b"Connection: close\r\n\r\n", b"hi")
    assert status == 415 and json.loads(body)["error"] == "unsupported_media_type"
    status, body = raw_request(index.url, b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH +
                               b"Content-Type: multipart/form-data; boundary=b\r\n"
                               b"Connection: close\r\n\r\n")
    assert status == 411
    status, body = raw_request(index.url, b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH +
                               b"Content-Type: multipart/form-data; boundary=b\r\n"
                               b"Content-Length: 11\r\nConnection: close\r\n\r\n",
                               b"--b\r\njunk\r\n")
    assert status == 400 and "malformed" in json.loads(body)["message"]
    status, body = raw_request(index.url, b"GET /search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Connection: close\r\n\r\n")
    assert status == 405


def test_a_search_beyond_the_concurrency_limit_gets_503_overloaded(index, media_server):
    """search_concurrency=1: a search whose query media come slowly from an allowed host holds
    the only slot; the next search is refused at once, and the slow one still completes.
    Indexing is not involved at all. (A slow *upload* holds no slot: the hardening tests.)"""
    import threading

    from search_helpers import post_json

    slow_query = {"query": {"uri": f"http://{media_server}/slow/3/synthetic/clip003.mp4",
                            "kind": "video"}, "limit": 3}
    answers: list = []
    slow = threading.Thread(target=lambda: answers.append(
        post_json(index.url, "/v1/search", slow_query)))
    slow.start()
    try:
        time.sleep(1.0)
        started = time.monotonic()
        status, answer = post_search(index.url, media_id=media_id(2))
        assert (status, answer["error"]) == (503, "overloaded")
        assert time.monotonic() - started < 1.0  # refused at once, not queued
    finally:
        slow.join(30)
    (status, answer), = answers
    assert status == 200 and answer["results"], answer
    assert post_search(index.url, media_id=media_id(2))[0] == 200
    metrics = index.daemon.daemon.metrics.registry
    assert metrics.get_sample_value("avindex_search_requests_total",
                                    {"status": "503", "code": "overloaded"}) >= 1


def test_collection_of_another_model_version_is_refused(index, tmp_path):
    other = load_model_dir(build_model_dir(tmp_path / "other", seed=5))
    client = index.daemon.daemon.sink.store
    with pytest.raises(SearchError) as info:
        Searcher(client, other, Encoder(other, device="cpu", max_batch=1),
                 index.daemon.daemon.sink.collection)
    assert info.value.code == "model_mismatch" and info.value.status == 409
    own = load_model_dir(index.model_dir)
    searcher = Searcher(client, own, Encoder(own, device="cpu", max_batch=1), "avindex")  # alias
    assert searcher.collection == index.daemon.daemon.sink.collection


# ------------------------------------------------------------------------------- media, docs
def authorized(url: str, **headers: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {KEY}", **headers})


def test_media_endpoint_serves_indexed_files_with_ranges_and_no_escape(index, media_root):
    pid = point_id(media_id(5))
    for path in (f"/v1/media/{pid}", f"/media/{pid}"):  # versioned and unversioned
        with urllib.request.urlopen(authorized(index.url + path), timeout=10) as r:
            assert r.read() == index.clips[5].read_bytes()
            assert r.headers["Content-Type"] == "video/mp4"
    request = authorized(f"{index.url}/media/{pid}", Range="bytes=10-19")
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 206 and r.read() == index.clips[5].read_bytes()[10:20]
    for path in ("/media/" + point_id("never-indexed"), "/media/..%2F..%2Fetc%2Fpasswd",
                 "/media/../../etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(authorized(index.url + path), timeout=10)
        assert info.value.code == 404
    # the allowed roots are checked again on every request: a link re-pointed outside is refused
    link = media_root / "search-link.mp4"
    link.unlink()
    link.symlink_to("/etc/hostname")
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(authorized(f"{index.url}/media/{point_id(media_id(0))}"),
                                   timeout=10)
        assert info.value.code == 403
        assert json.loads(info.value.read())["error"] == "uri_not_allowed"
    finally:
        link.unlink()
        link.symlink_to(index.clips[0])


def test_openapi_document_is_valid_and_lists_the_endpoints(index):
    from openapi_spec_validator import validate

    status, doc = get_json(index.url, "/openapi.json", key=None)  # open, like the page
    assert status == 200
    validate(doc)
    assert doc["openapi"].startswith("3.")
    endpoints = {"/search", "/info", "/media/{id}", "/healthz", "/readyz", "/metrics", "/",
                 "/v1/search", "/v1/search/batch", "/v1/info", "/v1/media/{id}"}
    assert endpoints <= set(doc["paths"])
    form = doc["components"]["schemas"]["SearchForm"]["properties"]
    assert form["top_k"]["maximum"] == 50  # the configured limit, not a copy
    assert doc["components"]["schemas"]["SearchRequest"]["properties"]["limit"]["maximum"] == 50
    assert set(doc["paths"]["/search"]["post"]["responses"]) >= {"200", "400", "413", "422", "503"}


def test_probes_still_answer(index):
    assert get_json(index.url, "/readyz")[0] == 200
    assert get_json(index.url, "/healthz")[0] == 200
    with urllib.request.urlopen(index.url + "/metrics", timeout=10) as r:
        text = r.read()
    assert b"avindex_messages_indexed_total" in text
    assert b"avindex_search_requests_total" in text


# ------------------------------------------------------------------------------------- CLI
def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`avindex search` as a process (the key from --api-key or the --config file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVINDEX_")}
    return subprocess.run([sys.executable, "-m", "avindex.tools.cli", "search", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_search_through_the_daemon(index, tmp_path):
    clip = index.clips[11]
    done = run_cli("--daemon", index.url, "--api-key", KEY, "--audio", str(clip), "--top-k", "5",
                   "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    query = index.embed(decode_media(clip, *index.specs))["audio"]
    assert_same_ranking(answer, index.expected(query, "visual", 5))
    # the daemon's config names its Edge folder, which it holds: the CLI asks the daemon
    import copy

    settings = copy.deepcopy(index.settings)
    settings.http.port = int(index.url.rsplit(":", 1)[1])
    config = settings_file(settings, tmp_path / "daemon.yaml")  # with http.api_keys
    done = run_cli("--config", str(config), "--video", str(clip), "--by", "audio",
                   "--top-k", "3", "--filter", "metadata.parity=even")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("video query by audio -> visual vectors")
    expected = index.expected(query, "visual", 3, keep=lambda i: i % 2 == 0)
    assert [line.split()[2] for line in lines[1:]] == [m for m, _ in expected]
    done = run_cli("--daemon", index.url, "--api-key", KEY, "--audio", str(index.clips[9]))
    assert done.returncode == 1 and "wrong_modality" in done.stderr
    done = run_cli("--daemon", index.url, "--audio", str(clip))  # no key
    assert done.returncode == 1 and "unauthorized" in done.stderr
    done = run_cli("--daemon", "http://127.0.0.1:9", "--audio", str(clip))
    assert done.returncode == 3 and "not reachable" in done.stderr


# ------------------------------------------------------------------------------ web page
def upload_in_page(browser, panel: str, path: Path, player: str) -> list:
    """Choose a file in a panel's input; the results shown: (media id, score, player src)."""
    browser.set_file(f"#{panel}-file", path)
    browser.wait(f"document.body.dataset.{panel}Done", 60)
    browser.wait(f"[...document.querySelectorAll('#{panel}-results {player}')]"
                 ".every(p => p.src.startsWith('blob:'))", 30)  # fetched with the key
    return browser.evaluate(
        f"[...document.querySelectorAll('#{panel}-results li')].map(li => "
        f"[li.dataset.mediaId, Number(li.dataset.score), li.querySelector('{player}')?.src])")


def test_web_page_in_headless_chromium(index, tmp_path):
    """With an API key set: the page asks for the key once and keeps it for the tab
    (sessionStorage, never localStorage). Upload a sound and see the matching videos (playable,
    fetched with the key), upload a video and get sounds, record with a (fake) microphone;
    results equal what POST /search answers."""
    from cdp import Browser

    shots = Path(os.environ.get("AVINDEX_SCREENSHOT_DIR", tmp_path))
    browser = Browser(tmp_path / "profile")
    try:
        browser.goto(index.url + "/")
        browser.wait("!document.getElementById('key-form').hidden")
        assert "API key" in browser.evaluate("document.getElementById('info').textContent")
        browser.screenshot(shots / "web-key.png")
        for attempt in ("wrong-key-0123456789", KEY):  # a refused key asks again
            browser.evaluate(f"document.getElementById('key').value = {json.dumps(attempt)}")
            browser.evaluate("document.getElementById('key-form').requestSubmit()")
            if attempt != KEY:
                browser.wait("document.getElementById('key-message').textContent"
                             ".includes('refused')")
        browser.wait("document.getElementById('info').textContent.includes('40 items')")
        assert browser.evaluate("sessionStorage.getItem('avindex-api-key')") == KEY
        assert browser.evaluate("localStorage.length") == 0
        assert browser.evaluate("document.getElementById('key-form').hidden") is True
        # a sound finds videos (playable), a video's pictures find sounds
        for panel, clip, kind, player in (("sound", index.clips[7], "audio", "video"),
                                          ("video", index.clips[3], "video", "audio")):
            shown = upload_in_page(browser, panel, clip, player)
            _, answer = post_search(index.url, file=clip, kind=kind, top_k=8)
            assert [(m, s) for m, s, _ in shown] == ranked(answer)
            assert all(src.startswith("blob:") for _, _, src in shown)
            ready = 2 if player == "video" else 1  # frames decoded / metadata loaded
            browser.wait(f"document.querySelector('#{panel}-results {player}').readyState "
                         f">= {ready}", 30)
            browser.screenshot(shots / f"web-{panel}-query.png")
        assert browser.evaluate("document.querySelector('#sound-results video').videoWidth") == 64

        # record a second of the fake microphone (a beep) and search with it
        browser.evaluate("delete document.body.dataset.soundDone")
        browser.evaluate("document.getElementById('record').click()")
        browser.wait("document.getElementById('record').textContent.includes('Stop')", 20)
        time.sleep(1.5)
        browser.evaluate("document.getElementById('record').click()")
        browser.wait("document.body.dataset.soundDone", 60)
        status = browser.evaluate("document.getElementById('sound-status').textContent")
        assert "results by audio against visual vectors" in status
        assert browser.evaluate("document.querySelectorAll('#sound-results li').length") == 8
        browser.screenshot(shots / "web-recording.png")
    finally:
        browser.close()


def test_cli_direct_against_an_edge_folder_checks_the_model_version(broker, model_dir, clips,
                                                                    media_root, tmp_path):
    """While the daemon holds its Qdrant Edge folder, `avindex search --qdrant-path` says so and
    asks the daemon; after the daemon has released it, the CLI opens it itself, embeds the query
    with --model and searches; a model of another version is refused."""
    names = {"topic": f"direct-{time.monotonic_ns() % 10**8}", "group": "g-direct",
             "dlq": "direct-dlq"}
    storage = tmp_path / "qdrant"
    settings = settings_for(model_dir, broker.bootstrap, names["topic"], group=names["group"],
                            dlq=names["dlq"], media={"allowed_roots": [str(media_root)]},
                            edge=storage)
    chosen = clips[:12]
    messages = [(f"d-{i}".encode(), json.dumps({"id": f"d-{i}", "uri": f"file://{c}"}).encode(),
                 [("content-type", b"application/json")]) for i, c in enumerate(chosen)]
    daemon = DaemonThread(settings, None).start()
    url = f"http://127.0.0.1:{daemon.daemon.http_port}"
    produce(broker.bootstrap, names["topic"], messages)
    wait_for(lambda: get_json(url, "/info")[1].get("points") == len(chosen), 60, what="points")
    try:
        held = run_cli("--qdrant-path", str(storage), "--model", str(model_dir), "--daemon",
                       url, "--audio", str(chosen[3]), "--top-k", "4", "--json")
    finally:
        assert daemon.stop() == 0
    assert held.returncode == 0, held.stderr
    assert "in use by another process" in held.stderr and "asking that daemon" in held.stderr
    through_daemon = json.loads(held.stdout)
    done = run_cli("--qdrant-path", str(storage), "--model", str(model_dir), "--audio",
                   str(chosen[3]), "--top-k", "4", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    model = load_model_dir(model_dir)
    query = reference_embedding("audio", decode_media(chosen[3], model.visual_spec(),
                                                      model.audio_spec()).audio)[0]
    q = query / np.linalg.norm(query)
    expected = []
    for i, clip in enumerate(chosen):
        frames = decode_media(clip, model.visual_spec(), model.audio_spec()).frames
        if frames is not None:
            v = reference_embedding("visual", frames)[0]
            expected.append((f"d-{i}", float(q @ (v / np.linalg.norm(v)))))
    expected.sort(key=lambda t: -t[1])
    assert_same_ranking(answer, expected[:4])
    assert [h["media_id"] for h in answer["results"]] == [
        h["media_id"] for h in through_daemon["results"]]
    assert answer["collection"] == f"avindex-{model.model_version}"
    other = build_model_dir(tmp_path / "other", seed=3)
    done = run_cli("--qdrant-path", str(storage), "--model", str(other), "--audio",
                   str(chosen[3]))
    assert done.returncode == 1 and "model_mismatch" in done.stderr
