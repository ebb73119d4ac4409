"""The embedded engines side by side: Qdrant Edge vs qdrant-client's local mode.

    .venv/bin/python bench/stores.py [--quick] [--model DIR] [--clips N]

1. Upserts, points per second at batch 1, 8, 32 and 128 (two 64-d named vectors and the
   daemon's payload of 13 fields): Qdrant Edge on disk, made durable as the daemon does it
   (`flush()` every `qdrant.flush_interval_s`, 5 s by default, and at the end of the run);
   the same with a one-field payload (Edge's Python binding converts payload values slowly,
   so this row separates the engine from that conversion); Edge flushed after every
   batch (what durability per upsert would cost); local mode on disk (`path=`, the embedded
   default before Qdrant Edge); local mode in memory. Sides alternate, medians of three rounds.
2. Search latency, p50/p99 of a top-10 query with payload, at 10,000 and 100,000 points, with
   and without a keyword filter: Edge as the daemon leaves it (exact search over its appendable
   segment), Edge after `avindex optimize` (HNSW), local mode in memory. Query blocks alternate.
3. End to end: the real daemon (a thread, Tansu, claim-check messages for the recipe's AV-digits
   clips) on Edge vs on local mode on disk, alternating, clips per second from the first to the
   last confirmed point.

Writes bench/results/stores.json and .png (`--name` for another name, e.g. one part alone:
`--skip upserts search --name stores_end_to_end`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import common
import numpy as np
from qdrant_client import QdrantClient, models

from avindex.daemon.app import Daemon
from avindex.daemon.ports import Point
from avindex.daemon.settings import Settings
from avindex.daemon.store import CollectionSpec, VectorStore
from avindex.daemon.store_edge import EdgeStore
from avindex.daemon.store_server import ServerStore
from avindex.tools.kafka_admin import create_topics
from avindex.tools.tansu import tansu_broker

DIM = 64
SPEC = CollectionSpec(vectors=("visual", "audio"), dim=DIM, distance="Cosine",
                      payload_indexes={"metadata.language": "keyword"})
LANGUAGES = ("en", "fr", "es", "it")


def points(n: int, rng: np.random.Generator, small: bool = False) -> list[Point]:
    """Points shaped like the daemon's (or with only `media_id` as payload), fresh ids."""
    vis = rng.standard_normal((n, DIM)).astype(np.float32)
    aud = rng.standard_normal((n, DIM)).astype(np.float32)
    out = []
    for i in range(n):
        media_id = uuid.uuid4().hex
        vectors = {"visual": vis[i].tolist(), "audio": aud[i].tolist()}
        if small:
            out.append(Point(media_id, vectors, {"media_id": media_id}))
            continue
        out.append(Point(media_id, vectors, {
            "media_id": media_id, "uri": None, "topic": "avindex.media", "partition": 0,
            "offset": i, "duration_s": 3.0, "modalities": ["audio", "visual"],
            "model_id": "bench", "model_version": "0000000000000000",
            "indexed_at": "2026-12-02T00:00:00.000Z",
            "uncertainty": {"audio": 0.01, "visual": 0.01},
            "metadata": {"language": LANGUAGES[i % 4], "speaker": f"s{i % 13}"}}))
    return out


class Engines:
    """Fresh stores of each kind under one temporary folder."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def make(self, kind: str) -> VectorStore:
        path = self.tmp / f"{kind}-{uuid.uuid4().hex[:6]}"
        if kind.startswith("edge"):  # flushed as often as the daemon flushes by default
            return EdgeStore(path, flush_interval_s=Settings().qdrant.flush_interval_s)
        if kind == "local_path":
            return ServerStore(QdrantClient(path=str(path)))
        return ServerStore(QdrantClient(location=":memory:"))


# ---------------------------------------------------------------------------------- upserts
PER_RUN = {"edge": 4096, "edge_small_payload": 8192, "edge_flush_each": 32, "local_path": 96,
           "local_memory": 2048}


def upsert_rate(engines: Engines, kind: str, batch: int, rng) -> float:
    """Points per second into a fresh collection, durability included for Edge."""
    n = max(batch * (4 if kind == "edge_flush_each" else 1),
            PER_RUN[kind] // (4 if batch == 1 else 1))
    data = points(n, rng, small=kind == "edge_small_payload")
    store = engines.make(kind)
    store.ensure_collection("c", SPEC)
    every = Settings().qdrant.flush_interval_s
    try:
        start = last_flush = time.perf_counter()
        for i in range(0, n, batch):
            store.upsert("c", data[i:i + batch])
            now = time.perf_counter()
            if kind == "edge_flush_each" or (kind.startswith("edge")
                                             and now - last_flush >= every):
                store.flush()
                last_flush = now
        store.flush()
        rate = n / (time.perf_counter() - start)
        assert store.count("c") == n
        return rate
    finally:
        store.close()


def bench_upserts(engines: Engines, quick: bool, load: common.LoadRecorder) -> list[dict]:
    rng = np.random.default_rng(0)
    batches = (1, 8, 32, 128)
    kinds = ("edge", "edge_small_payload", "edge_flush_each", "local_path", "local_memory")
    sides = {f"{k}/{b}": (lambda k=k, b=b: upsert_rate(engines, k, b, rng))
             for k in kinds for b in batches}
    timings = common.alternate(sides, 1 if quick else 3, load)
    rows = []
    for key, runs in timings.items():
        kind, b = key.split("/")
        rows.append({"engine": kind, "batch": int(b), "points_per_s": common.median(runs),
                     "runs": runs})
        common.log(f"upsert {kind} batch {b}: {rows[-1]['points_per_s']:.0f} points/s")
    return rows


# ----------------------------------------------------------------------------------- search
def fill(store: VectorStore, n: int, rng) -> None:
    store.ensure_collection("c", SPEC)
    for i in range(0, n, 1024):
        store.upsert("c", points(min(1024, n - i), rng))
    store.flush()


def latencies(store: VectorStore, queries: np.ndarray, filtered: bool) -> list[float]:
    f = models.Filter(must=[models.FieldCondition(
        key="metadata.language", match=models.MatchValue(value="fr"))]) if filtered else None
    out = []
    for q in queries:
        start = time.perf_counter()
        found = store.query("c", q.tolist(), using="visual", limit=10, filter=f)
        out.append((time.perf_counter() - start) * 1000)
        assert len(found) == 10
    return out


def bench_search(engines: Engines, sizes: list[int], quick: bool,
                 load: common.LoadRecorder) -> list[dict]:
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        stores: dict[str, VectorStore] = {}
        built: dict[str, float] = {}
        for kind in ("edge", "edge_hnsw", "local_memory"):
            start = time.perf_counter()
            stores[kind] = store = engines.make(kind)
            fill(store, n, np.random.default_rng(n))  # the same points in every engine
            built[kind] = time.perf_counter() - start
            if kind == "edge_hnsw":
                start = time.perf_counter()
                store.optimize_one("c")  # what `avindex optimize` runs
                built["edge_hnsw_optimize"] = time.perf_counter() - start
            common.log(f"search: {kind} filled with {n} points in {built[kind]:.0f}s")
        queries = rng.standard_normal((50 if quick else 100, DIM)).astype(np.float32)
        for filtered in (False, True):
            got: dict[str, list[float]] = {k: [] for k in stores}
            for r in range(1 if quick else 3):
                for kind in list(stores) if r % 2 == 0 else list(stores)[::-1]:
                    load.sample()
                    # local mode takes seconds per filtered query at 100k: fewer of them
                    few = kind == "local_memory" and (filtered or n > 10_000)
                    got[kind] += latencies(stores[kind], queries[:10] if few else queries,
                                           filtered)
            for kind, ms in got.items():
                p = common.percentiles(ms)
                rows.append({"engine": kind, "points": n, "filtered": filtered,
                             "p50_ms": p["p50"], "p99_ms": p["p99"], "max_ms": p["max"],
                             "queries": len(ms)})
                common.log(f"search {kind} {n} points{' filtered' if filtered else ''}: "
                           f"p50 {p['p50']:.2f} ms, p99 {p['p99']:.2f} ms")
        rows.append({"engine": "build_seconds", "points": n, **built})
        for store in stores.values():
            store.close()
    return rows


# ------------------------------------------------------------------------------- end to end
def daemon_settings(model: Path, bootstrap: str, topic: str, roots: list[str]) -> Settings:
    s = Settings()
    s.model.dir, s.model.device, s.model.max_batch = str(model), "cpu", 32
    k = s.kafka
    k.bootstrap_servers, k.topics = [bootstrap], [topic]
    k.group_id, k.dead_letter_topic = f"bench-{uuid.uuid4().hex[:8]}", f"{topic}.dlq"
    k.session_timeout_ms, k.heartbeat_interval_ms = 6000, 1000
    s.media.allowed_roots = roots
    s.qdrant.url = "http://injected.invalid:6333"  # never used: the store passed in is
    s.http.host, s.http.port = "127.0.0.1", 0
    s.log.level, s.log.format = "WARNING", "text"
    s.validate()
    return s


def indexed(daemon: Daemon) -> float:
    return daemon.metrics.registry.get_sample_value(
        "avindex_messages_indexed_total", {"topic": daemon.settings.kafka.topics[0]}) or 0.0


def e2e_run(engines: Engines, kind: str, model: Path, bootstrap: str, topic: str,
            roots: list[str], n: int) -> float:
    """Clips per second from the first to the last indexed message (group join excluded)."""
    store = engines.make(kind)
    daemon = Daemon(daemon_settings(model, bootstrap, topic, roots), store=store)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 600
        first = None
        while (done := indexed(daemon)) < n:
            if done and first is None:
                first = (time.monotonic(), done)
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"{kind}: {done} of {n} indexed")
            time.sleep(0.02)
        assert first is not None
        return (n - first[1]) / (time.monotonic() - first[0])
    finally:
        daemon.request_stop()
        thread.join(60)
        store.close()


def bench_end_to_end(engines: Engines, model: Path, n: int, quick: bool,
                     load: common.LoadRecorder) -> list[dict]:
    from kafka import KafkaProducer

    clips = common.corpus_clips(model)
    if not clips:
        raise SystemExit(f"no AV-digits clips next to {model} (build it with the recipe)")
    roots = sorted({str(c.parent) for c in clips})
    with tansu_broker(engines.tmp / "tansu.log") as bootstrap:
        topic = "bench-stores"
        create_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=2)
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
        for i in range(n):
            clip = clips[i % len(clips)]
            body = {"id": f"clip-{i:05d}", "uri": clip.as_uri()}
            producer.send(topic, key=body["id"].encode(), value=json.dumps(body).encode(),
                          headers=[("content-type", b"application/json")])
        producer.flush(60)
        producer.close()
        sides = {kind: (lambda k=kind: e2e_run(engines, k, model, bootstrap, topic, roots, n))
                 for kind in ("edge", "local_path")}
        timings = common.alternate(sides, 1 if quick else 2, load)
    rows = []
    for kind, runs in timings.items():
        rows.append({"engine": kind, "clips": n, "clips_per_s": common.median(runs),
                     "runs": runs})
        common.log(f"end to end {kind}: {rows[-1]['clips_per_s']:.1f} clips/s")
    return rows


# --------------------------------------------------------------------------------------- main
def plot(result: dict[str, Any], path: Path) -> None:
    plt = common.plot_style()
    parts = [k for k in ("upserts", "search", "end_to_end") if result.get(k)]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.4 * len(parts), 4.8), squeeze=False)
    axes = dict(zip(parts, axes[0], strict=True))
    if "upserts" in axes:
        _plot_upserts(axes["upserts"], result)
    if "search" in axes:
        _plot_search(axes["search"], result)
    if "end_to_end" in axes:
        ax = axes["end_to_end"]
        rows = result["end_to_end"]
        ax.bar([r["engine"] for r in rows], [r["clips_per_s"] for r in rows])
        ax.set(ylabel="clips/s", title="daemon end to end (AV-digits)")
    common.save_figure(fig, path, "Qdrant Edge vs local mode", result)


def _plot_upserts(ax, result: dict[str, Any]) -> None:
    for kind in ("edge", "edge_small_payload", "edge_flush_each", "local_path", "local_memory"):
        rows = sorted((r for r in result["upserts"] if r["engine"] == kind),
                      key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in rows], [r["points_per_s"] for r in rows], marker="o",
                label=kind)
    ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="points/s",
           title="upserts (Edge: durable before each commit)")
    ax.axhline(10000, ls=":", c="grey")
    ax.legend(fontsize=8)


def _plot_search(ax, result: dict[str, Any]) -> None:
    rows = [r for r in result["search"] if "p99_ms" in r]
    labels = [f"{r['engine']}\n{r['points'] // 1000}k{' f' if r['filtered'] else ''}"
              for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["p50_ms"] for r in rows], 0.4, label="p50")
    ax.bar(x + 0.2, [r["p99_ms"] for r in rows], 0.4, label="p99")
    ax.axhline(5, ls=":", c="grey")
    ax.set_xticks(x, labels, fontsize=6, rotation=90)
    ax.set(yscale="log", ylabel="ms", title="top-10 query latency (f = keyword filter)")
    ax.legend(fontsize=8)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--clips", type=int, default=220, help="end-to-end messages (220)")
    p.add_argument("--skip", nargs="*", default=[], choices=("upserts", "search", "e2e"))
    p.add_argument("--name", default="stores", help="result file name (stores)")
    args = p.parse_args()
    started = time.monotonic()
    load = common.LoadRecorder()
    result: dict[str, Any] = {}
    common.WORK.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=common.WORK, prefix="stores-"))
    try:
        engines = Engines(tmp)
        if "upserts" not in args.skip:
            result["upserts"] = bench_upserts(engines, args.quick, load)
        if "search" not in args.skip:
            sizes = [10_000] if args.quick else [10_000, 100_000]
            result["search"] = bench_search(engines, sizes, args.quick, load)
        if "e2e" not in args.skip:
            model = common.model_dir(args.model)
            result["end_to_end"] = bench_end_to_end(engines, model, args.clips, args.quick,
                                                    load)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_average_1m"] = load.summary()
    path = common.write_result(args.name, args.out, result, started)
    plot(json.loads(path.read_text()), args.out / f"{args.name}.png")
    common.log(f"wrote {path}")


if __name__ == "__main__":
    main()
