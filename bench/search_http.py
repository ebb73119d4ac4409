"""Search over HTTP: the Starlette/uvicorn stack against the ThreadingHTTPServer stack it
replaced, in one run, at concurrency 1, 4 and 16, query embedding included.

    .venv/bin/python bench/search_http.py [--quick] [--model DIR] [--old-commit REV]

Two models: the default recipe's (`--model`; real front-ends, so decoding and embedding the
query dominate) and the tests' tiny ONNX model (tests/daemon/daemon_helpers.py; the HTTP
stacks dominate). Ratios are per round (new and old run back to back), then the median.

The old stack is not kept in the tree: its `daemon/` is checked out of git (`--old-commit`,
default the last commit before the move) into a temporary folder that shadows `avindex.daemon`
for its server process only. Each side is a server process on loopback with the same model,
the same in-memory Qdrant collection (N points, fixed seed) and 16 search workers; one load
generator (threads with keep-alive httpx clients) sends the same multipart upload
(POST /search: a short h264+aac clip, searched by its pictures) to each, sides alternating
round by round. The new stack's JSON body (POST /v1/search, base64) is measured as a third,
informational side. Reports searches/s and p50/p99 latency per side and concurrency, medians
over rounds, and new/old ratios; writes bench/results/search_http.json and .png.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

sys.path.insert(0, str(common.ROOT / "tests" / "daemon"))
from daemon_helpers import build_model_dir  # the tests' tiny model

OLD_COMMIT = "384ec81"  # main before the HTTP stack moved to daemon/http/ (issue 15)
CONCURRENCY = (1, 4, 16)
POINTS = 2000
WORKERS = 16  # http.search_concurrency of both servers: no 503 at concurrency 16


# --------------------------------------------------------------------------- server side
def serve(side: str, model_path: str, port_file: str) -> None:
    """Run one side's server until stdin closes (this process's parent is the benchmark)."""
    from qdrant_client import QdrantClient, models

    from avindex.daemon.encoder import Encoder
    from avindex.daemon.health import Health
    from avindex.daemon.metrics import Metrics
    from avindex.daemon.model_dir import load_model_dir
    from avindex.daemon.search import Searcher
    from avindex.daemon.settings import Settings

    try:  # the current tree searches a VectorStore; the old one a (serialised) client
        from avindex.daemon.store_server import ServerStore as wrap
    except ImportError:
        from avindex.daemon.search import SerialClient as wrap

    model = load_model_dir(model_path)
    client = QdrantClient(location=":memory:")
    collection = f"avindex-{model.model_version}"
    client.create_collection(collection, vectors_config={
        m: models.VectorParams(size=model.embedding_dim, distance=models.Distance.COSINE)
        for m in model.graphs})
    rng = np.random.default_rng(3)
    for start in range(0, POINTS, 250):
        client.upsert(collection, wait=True, points=[models.PointStruct(
            id=i, vector={m: rng.standard_normal(model.embedding_dim).tolist()
                          for m in model.graphs},
            payload={"media_id": f"m{i}", "model_version": model.model_version,
                     "metadata": {"n": i}}) for i in range(start, min(POINTS, start + 250))])
    settings = Settings()
    settings.model.dir = model_path
    settings.http.host, settings.http.port = "127.0.0.1", 0
    settings.http.search_concurrency = WORKERS
    settings.http.max_upload_bytes = 64 << 20
    encoder = Encoder(model, device="cpu", max_batch=1)
    encoder.warm_up()
    searcher = Searcher(wrap(client), model, encoder, collection)
    health, metrics = Health(), Metrics()
    if side == "old":
        from avindex.daemon.http_api import HttpApi
        from avindex.daemon.probes import ProbeServer

        api = HttpApi(settings, metrics)
        server = ProbeServer("127.0.0.1", 0, health, metrics, routes=api)
        server.start()
        port = server.port
    else:
        from avindex.daemon.http.server import start_api

        api, server = start_api(settings, health, metrics)
        port = server.ports[0]
    api.attach(searcher)
    Path(port_file).write_text(str(port))
    sys.stdin.read()  # until the benchmark closes our stdin
    server.stop()


class Server:
    """One side's server process; `url` once it listens."""

    def __init__(self, side: str, model: Path, work: Path, old_tree: Path | None) -> None:
        port_file = work / f"{side}.port"
        port_file.unlink(missing_ok=True)
        env = dict(os.environ)
        if old_tree is not None:
            env["PYTHONPATH"] = str(old_tree)  # shadows avindex.daemon with the old tree
        self.log = open(work / f"{side}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, __file__, "--serve", side, "--model",
             str(model.resolve()), "--port-file", str(port_file)], stdin=subprocess.PIPE,
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=work)
        deadline = time.monotonic() + 300
        while not (port_file.is_file() and port_file.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {side} server did not start: {work / (side + '.log')}")
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{port_file.read_text()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def old_tree(commit: str, work: Path) -> Path:
    """`daemon/` of `commit` as `<tmp>/avindex/daemon` (shadows the installed one)."""
    root = work / f"old-{commit}"
    target = root / "avindex"
    if not (target / "daemon" / "probes.py").is_file():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(common.ROOT), "archive", commit, "daemon"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return root


# ----------------------------------------------------------------------------- load side
def multipart(clip: bytes) -> tuple[bytes, str]:
    boundary = "benchboundary7d1e"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.mp4"'
            f'\r\nContent-Type: video/mp4\r\n\r\n').encode() + clip + (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n10\r\n'
        f'--{boundary}--\r\n').encode()
    return body, f"multipart/form-data; boundary={boundary}"


def round_of(url: str, path: str, body: bytes, ctype: str, concurrency: int,
             requests: int) -> dict[str, Any]:
    """`requests` searches by `concurrency` threads (keep-alive clients): rate and latencies."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    todo = iter(range(requests))
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                t0 = time.perf_counter()
                r = client.post(path, content=body, headers={"Content-Type": ctype})
                elapsed = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200 and r.json()["results"]:
                        latencies.append(elapsed)
                    else:
                        failures.append(f"{r.status_code} {r.text[:100]}")

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{url}{path}: {len(failures)} failed searches, e.g. {failures[0]}")
    return {"rate": len(latencies) / wall, "latencies": latencies}


def measure(model: Path, work: Path, tree: Path, body: bytes, ctype: str, json_body: bytes,
            quick: bool, load: common.LoadRecorder, scale: int) -> list[dict[str, Any]]:
    """Both servers on one model; rows per side and concurrency (rates per round kept)."""
    servers = {"old": Server("old", model, work, tree), "new": Server("new", model, work, None)}
    rows = []
    try:
        sides = {"old": (servers["old"].url, "/search", body, ctype),
                 "new": (servers["new"].url, "/search", body, ctype),
                 "new-json": (servers["new"].url, "/v1/search", json_body, "application/json")}
        for side in sides.values():  # warm both (first requests allocate)
            round_of(*side, 2, 4)
        rounds = 3 if quick else 7
        per = {c: scale * n for c, n in ({1: 4, 4: 8, 16: 16} if quick
                                         else {1: 8, 4: 16, 16: 32}).items()}
        for c in CONCURRENCY:
            measured: dict[str, list[dict]] = {name: [] for name in sides}

            def side_run(name: str, c=c, measured=measured) -> float:
                result = round_of(*sides[name], c, per[c])
                measured[name].append(result)
                return result["rate"]

            common.alternate({n: (lambda n=n: side_run(n)) for n in sides}, rounds, load)
            for name, results in measured.items():
                lat = [x for r in results for x in r["latencies"]]
                rows.append({"side": name, "concurrency": c,
                             "searches_per_s": common.median([r["rate"] for r in results]),
                             "rates": [round(r["rate"], 3) for r in results],
                             "latency_ms": {k: round(1000 * v, 1) for k, v in
                                            common.percentiles(lat, (50, 99)).items()},
                             "requests": len(lat), "rounds": rounds})
            common.log(" | ".join(f"{r['side']} c={c}: {r['searches_per_s']:.2f}/s p50 "
                                  f"{r['latency_ms']['p50']} ms p99 {r['latency_ms']['p99']}"
                                  for r in rows[-len(sides):]))
    finally:
        for server in servers.values():
            server.stop()
    return rows


def ratios_of(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """new/old per concurrency: the median of per-round rate ratios (each round ran both
    back to back), its range, and the pooled p50/p99 latency ratios."""
    by = {(r["side"], r["concurrency"]): r for r in rows}
    out = {}
    for c in CONCURRENCY:
        old, new = by["old", c], by["new", c]
        paired = [n / o for n, o in zip(new["rates"], old["rates"], strict=True)]
        out[str(c)] = {
            "searches_per_s_new_over_old": round(common.median(paired), 3),
            "per_round_min": round(min(paired), 3), "per_round_max": round(max(paired), 3),
            "p50_new_over_old": round(new["latency_ms"]["p50"] / old["latency_ms"]["p50"], 3),
            "p99_new_over_old": round(new["latency_ms"]["p99"] / old["latency_ms"]["p99"], 3)}
    return out


def run(args) -> None:
    started = time.monotonic()
    work = common.WORK / "search_http"
    work.mkdir(parents=True, exist_ok=True)
    models = {"default": common.model_dir(args.model),
              "tiny": build_model_dir(work / "tiny-model")}
    clip = common.synth_clip(work / "query.mp4", 5, seconds=2.0, width=320, height=240)
    body, ctype = multipart(clip.read_bytes())
    json_body = ('{"query": {"video": "' + base64.b64encode(clip.read_bytes()).decode()
                 + '"}, "limit": 10}').encode()
    load = common.LoadRecorder()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tree = old_tree(args.old_commit, Path(tmp))
        for name, model in models.items():
            common.log(f"{name} model ({model}): old ({args.old_commit}) vs new servers")
            rows = measure(model, work, tree, body, ctype, json_body, args.quick, load,
                           scale=1 if name == "default" else 3)
            results[name] = {"model": str(model), "rows": rows, "ratios": ratios_of(rows)}
            common.log(f"{name}: {results[name]['ratios']}")
    result = {"old_commit": args.old_commit, "points": POINTS, "workers": WORKERS,
              "query": "2 s 320x240 h264+aac clip, by its pictures (multipart upload; "
              "new-json: the same as base64 JSON)",
              "models": results, "load_average_1m": load.summary()}
    path = common.write_result("search_http", args.out, result, started)
    plot(path, result | {"date": time.strftime("%Y-%m-%d"), "machine": common.machine()})
    common.log(f"wrote {path}")


def plot(path: Path, result: dict[str, Any]) -> None:
    plt = common.plot_style()
    models = list(result["models"])
    fig, axes = plt.subplots(len(models), 3, figsize=(14, 3.6 * len(models)), squeeze=False)
    sides, width = ["old", "new", "new-json"], 0.27
    for row_axes, name in zip(axes, models, strict=True):
        rows = result["models"][name]["rows"]
        for i, side in enumerate(sides):
            mine = [r for r in rows if r["side"] == side]
            x = np.arange(len(mine)) + (i - 1) * width
            row_axes[0].bar(x, [r["searches_per_s"] for r in mine], width, label=side)
            row_axes[1].bar(x, [r["latency_ms"]["p50"] for r in mine], width, label=side)
            row_axes[2].bar(x, [r["latency_ms"]["p99"] for r in mine], width, label=side)
        for ax, title in zip(row_axes, ("searches/s (median of rounds)", "p50 latency (ms)",
                                        "p99 latency (ms)"), strict=True):
            ax.set_xticks(range(len(CONCURRENCY)), [f"conc. {c}" for c in CONCURRENCY])
            ax.set_title(f"{name} model: {title}")
            ax.legend(fontsize=8)
    common.save_figure(fig, path.with_suffix(".png"), "Search over HTTP, old vs new stack",
                       result)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--old-commit", default=OLD_COMMIT)
    p.add_argument("--serve", choices=("old", "new"), help=argparse_hidden())
    p.add_argument("--port-file")
    args = p.parse_args()
    if args.serve:
        serve(args.serve, str(args.model), args.port_file)
    else:
        run(args)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
