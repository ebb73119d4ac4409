"""Each stage of the daemon in isolation: decode, embed, upsert, consume.

    .venv/bin/python bench/stages.py [--quick] [--device cpu|cuda|auto] [--tensorrt] [--fp16]

- decode: `decode_media` (the daemon's decoder, the model's sampling) on a thread pool like the
  daemon's, clips/s by resolution x duration x worker count, on synthetic h264 + aac MP4s with
  moving content; and the peak memory each decode worker adds (child processes, VmHWM).
- embed: the daemon's `Encoder` (ONNX Runtime, chosen execution provider) on decoded AV-digits
  clips, clips/s per modality and batch size. ONNX Runtime vs PyTorch eager on the same chains
  is bench/export_throughput.py.
- upsert: the daemon's `QdrantSink.write_batch` (wait=true) into local mode, `:memory:` and
  `path=`, points/s by batch size, with the daemon's named vectors and payload shape.
- consume: the daemon's `KafkaSource` (kafka-python, crc32c) reading a Tansu topic, MB/s by
  message size.

Sides of each comparison alternate round by round; figures are medians of the repeats.
Writes bench/results/stages.json and stages.png. Functions here also serve end_to_end.py.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common
import numpy as np

from avindex.daemon.encoder import Encoder
from avindex.daemon.media import DecodedMedia, decode_media
from avindex.daemon.model_dir import ModelDir, load_model_dir
from avindex.daemon.sink import Point, QdrantSink
from avindex.tools.kafka_admin import create_topics
from avindex.tools.tansu import tansu_broker

RESOLUTIONS = {"240p": (426, 240), "360p": (640, 360), "720p": (1280, 720)}


# ---------------------------------------------------------------------------------- decode
def decode_all(model: ModelDir, items: list[bytes], workers: int) -> list[DecodedMedia]:
    """Decode every item on `workers` threads, as the daemon's decode pool does."""
    v, a = model.visual_spec(), model.audio_spec()
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda b: decode_media(b, v, a), items))


def decode_rate(model: ModelDir, items: list[bytes], workers: int) -> float:
    start = time.perf_counter()
    decode_all(model, items, workers)
    return len(items) / (time.perf_counter() - start)


def bench_decode(model: ModelDir, quick: bool, load: common.LoadRecorder) -> list[dict]:
    shapes = [("360p", 2.0), ("360p", 10.0)] if quick else [
        (r, d) for r in RESOLUTIONS for d in (2.0, 10.0)]
    worker_counts = (1, 2) if quick else (1, 2, 4)
    rounds = 2 if quick else 3
    rows = []
    for res, seconds in shapes:
        w, h = RESOLUTIONS[res]
        files = common.synth_clips(common.WORK / "clips", 4, seconds=seconds, width=w, height=h)
        data = [p.read_bytes() for p in files]
        per_run = max(4, int(8 * 2.0 / seconds)) * 2  # about the same work per timing
        items = [data[i % len(data)] for i in range(per_run)]
        decode_all(model, items[:2], 1)  # warm-up
        sides = {f"w{n}": (lambda n=n, items=items: decode_rate(model, items, n))
                 for n in worker_counts}
        timings = common.alternate(sides, rounds, load)
        for n in worker_counts:
            rows.append({"resolution": res, "width": w, "height": h, "duration_s": seconds,
                         "workers": n, "clips_per_s": common.median(timings[f"w{n}"]),
                         "runs": timings[f"w{n}"],
                         "mean_bytes": int(np.mean([len(d) for d in data]))})
            common.log(f"decode {res} {seconds:.0f}s workers={n}: "
                       f"{rows[-1]['clips_per_s']:.1f} clips/s")
    return rows


def _memory_child(model_path: str, clip: str, workers: int, items: int, queue) -> None:
    """Peak resident memory that decoding adds, per worker (run in a fresh process)."""
    model = load_model_dir(model_path)
    data = Path(clip).read_bytes()
    decode_all(model, [data], 1)  # import-time allocations and codec set-up out of the way
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = common.rss_mb()
    decode_all(model, [data] * items, workers)
    queue.put({"workers": workers, "baseline_mb": base,
               "peak_mb": common.rss_mb(field="VmHWM")})


def bench_decode_memory(model_path: Path, quick: bool) -> dict[str, Any]:
    """Peak memory per decode worker on 10 s 360p clips: the slope of peak RSS over workers."""
    clip = common.synth_clips(common.WORK / "clips", 1, seconds=10.0, width=640, height=360)[0]
    ctx = mp.get_context("spawn")
    rows = []
    for workers in (1, 2, 4) if quick else (1, 2, 4, 8):
        q = ctx.Queue()
        proc = ctx.Process(target=_memory_child,
                           args=(str(model_path), str(clip), workers, 2 * workers, q))
        proc.start()
        row = q.get(timeout=600)
        proc.join(60)
        row["added_mb"] = row["peak_mb"] - row["baseline_mb"]
        rows.append(row)
        common.log(f"decode memory workers={workers}: +{row['added_mb']:.1f} MiB peak")
    slope = float(np.polyfit([r["workers"] for r in rows], [r["added_mb"] for r in rows], 1)[0])
    return {"clip": "10 s 640x360 h264 25 fps + aac 44.1 kHz stereo", "rows": rows,
            "mb_per_worker": slope}


def _encoder_memory_child(model_path: str, device: str, max_batch: int, queue) -> None:
    """Resident memory of the ONNX sessions before and after the warm-up at max_batch."""
    model = load_model_dir(model_path)
    base = common.rss_mb()
    encoder = Encoder(model, device=device, max_batch=max_batch)
    loaded = common.rss_mb()
    encoder.warm_up()
    queue.put({"max_batch": max_batch, "before_mb": base, "sessions_mb": loaded - base,
               "peak_after_warm_up_mb": common.rss_mb(field="VmHWM") - base,
               "resident_after_warm_up_mb": common.rss_mb() - base})


def bench_encoder_memory(model_path: Path, device: str, quick: bool) -> list[dict]:
    """What the encoder holds once warmed up (the warm-up runs the longest input at the
    largest batch, so ONNX Runtime's arena reaches its working size before the first message)."""
    ctx = mp.get_context("spawn")
    rows = []
    for max_batch in (8, 32) if quick else (1, 8, 32):
        q = ctx.Queue()
        proc = ctx.Process(target=_encoder_memory_child,
                           args=(str(model_path), device, max_batch, q))
        proc.start()
        rows.append(q.get(timeout=600))
        proc.join(60)
        common.log(f"encoder memory max_batch={max_batch}: "
                   f"+{rows[-1]['peak_after_warm_up_mb']:.0f} MiB peak")
    return rows


# ----------------------------------------------------------------------------------- embed
def make_encoder(model: ModelDir, args, max_batch: int = 32,
                 intra_op_threads: int | None = None) -> Encoder:
    threads = getattr(args, "intra_op_threads", 0) if intra_op_threads is None else intra_op_threads
    return Encoder(model, device=args.device, tensorrt=args.tensorrt, fp16=args.fp16,
                   max_batch=max_batch, intra_op_threads=threads)


def embed_rate(encoder: Encoder, modality: str, inputs: list[np.ndarray], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(inputs), batch):
        encoder.embed(modality, inputs[i:i + batch])
    return len(inputs) / (time.perf_counter() - start)


def modality_inputs(decoded: list[DecodedMedia], modality: str) -> list[np.ndarray]:
    return [d.frames if modality == "visual" else d.audio for d in decoded
            if (d.frames if modality == "visual" else d.audio) is not None]


def bench_embed(model: ModelDir, args, decoded: list[DecodedMedia], quick: bool,
                load: common.LoadRecorder) -> list[dict]:
    batches = (1, 32) if quick else (1, 8, 32)
    encoder = make_encoder(model, args, max(batches))
    encoder.warm_up()
    rows = []
    for modality in encoder.modalities:
        inputs = modality_inputs(decoded, modality)
        sides = {f"b{b}": (lambda b=b, m=modality, x=inputs: embed_rate(encoder, m, x, b))
                 for b in batches}
        timings = common.alternate(sides, 3 if quick else 4, load)
        for b in batches:
            rows.append({"modality": modality, "batch": b, "provider": encoder.providers[modality],
                         "clips_per_s": common.median(timings[f"b{b}"]),
                         "runs": timings[f"b{b}"], "items": len(inputs)})
            common.log(f"embed {modality} batch {b}: {rows[-1]['clips_per_s']:.1f} clips/s")
    return rows


def bench_embed_threads(model: ModelDir, args, decoded: list[DecodedMedia], quick: bool,
                        load: common.LoadRecorder, b: int = 32) -> list[dict]:
    """ONNX Runtime's intra-op threads: its default (one per core) against one thread, at the
    largest batch; on a shared, oversubscribed CPU waiting threads can cost more than they give."""
    encoder = make_encoder(model, args, b, intra_op_threads=0)
    single = make_encoder(model, args, b, intra_op_threads=1)
    encoder.warm_up()
    single.warm_up()
    rows = []
    for modality in encoder.modalities:
        inputs = modality_inputs(decoded, modality)
        sides = {str(t): (lambda e=e, m=modality, x=inputs: embed_rate(e, m, x, b))
                 for t, e in ((0, encoder), (1, single))}
        timings = common.alternate(sides, 3 if quick else 4, load)
        for t in ("0", "1"):
            rows.append({"modality": modality, "batch": b, "intra_op_threads": int(t),
                         "provider": encoder.providers[modality],
                         "clips_per_s": common.median(timings[t]), "runs": timings[t],
                         "items": len(inputs)})
            common.log(f"embed {modality} batch {b} intra_op_threads={t}: "
                       f"{rows[-1]['clips_per_s']:.1f} clips/s")
    return rows


def corpus_decoded(model: ModelDir, path: Path, n: int) -> list[DecodedMedia]:
    clips = common.corpus_clips(path)[:n]
    return decode_all(model, [p.read_bytes() for p in clips], 2)


# ---------------------------------------------------------------------------------- upsert
def make_sink(model: ModelDir, location: str | None = None, path: str | None = None,
              client: Any = None) -> QdrantSink:
    from qdrant_client import QdrantClient

    from avindex.daemon.store_server import ServerStore

    client = client or (QdrantClient(path=path) if path else QdrantClient(location=location))
    sink = QdrantSink(ServerStore(client), model_version=model.model_version,
                      embedding_dim=model.embedding_dim, distance=model.distance,
                      modalities=list(model.graphs))
    sink.connect()
    return sink


def fake_points(model: ModelDir, n: int, rng: np.random.Generator) -> list[Point]:
    """Points shaped like the daemon's (named vectors, payload fields) with fresh media ids."""
    out = []
    for _ in range(n):
        media_id = uuid.uuid4().hex
        vectors = {m: rng.standard_normal(model.embedding_dim).tolist() for m in model.graphs}
        out.append(Point(media_id=media_id, vectors=vectors, payload={
            "media_id": media_id, "uri": None, "topic": "avindex.media", "partition": 0,
            "offset": 0, "duration_s": 3.0, "modalities": sorted(vectors),
            "model_id": model.model_id, "model_version": model.model_version,
            "indexed_at": "2026-01-01T00:00:00.000Z",
            "uncertainty": dict.fromkeys(vectors, 0.01), "metadata": {"source": "bench"}}))
    return out


def upsert_rate(sink: QdrantSink, points: list[Point], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(points), batch):
        sink.write_batch(points[i:i + batch])
    return len(points) / (time.perf_counter() - start)


def bench_upsert(model: ModelDir, quick: bool, load: common.LoadRecorder) -> list[dict]:
    batches = (1, 8, 32, 128)
    # points per timing: local mode on disk manages only tens of points per second
    per_run = {"memory": 256 if quick else 1024, "path": 32 if quick else 128}
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(dir=common.WORK) as tmp:
        sinks = {"memory": make_sink(model, location=":memory:"),
                 "path": make_sink(model, path=str(Path(tmp) / "qdrant"))}
        sides = {}
        for mode, sink in sinks.items():
            for b in batches:
                sides[f"{mode}/{b}"] = (lambda s=sink, b=b, m=mode: upsert_rate(
                    s, fake_points(model, max(b, per_run[m] // (1 if b > 1 else 4)), rng), b))
        timings = common.alternate(sides, 3, load)
        for key, runs in timings.items():
            mode, b = key.split("/")
            rows.append({"mode": mode, "batch": int(b), "points_per_s": common.median(runs),
                         "runs": runs, "dim": model.embedding_dim,
                         "vectors": list(model.graphs)})
            common.log(f"upsert {mode} batch {b}: {rows[-1]['points_per_s']:.0f} points/s")
        for sink in sinks.values():
            sink.close()
    return rows


# --------------------------------------------------------------------------------- consume
def consume_all(bootstrap: str, topic: str, expected: int) -> tuple[float, int]:
    """Read `expected` messages with the daemon's consumer; (seconds from the partition
    assignment to the last record, bytes): the group join is not counted."""
    from avindex.daemon.settings import KafkaSettings
    from avindex.daemon.source import KafkaSource

    s = KafkaSettings()
    s.bootstrap_servers, s.topics = [bootstrap], [topic]
    s.group_id = f"bench-{uuid.uuid4().hex[:8]}"
    s.session_timeout_ms, s.heartbeat_interval_ms = 6000, 1000
    s.max_poll_records = 500
    source = KafkaSource(s)
    assigned: list[float] = []
    source.connect(lambda tps: {}, lambda tps: assigned.append(time.perf_counter()),
                   lambda offsets, error: None)
    n = nbytes = 0
    deadline = time.monotonic() + 120
    try:
        while n < expected and time.monotonic() < deadline:
            records = source.poll(0.2, s.max_poll_records)
            n += len(records)
            nbytes += sum(len(r.value or b"") for r in records)
        if n < expected or not assigned:
            raise RuntimeError(f"consumed {n} of {expected} messages from {topic}")
        return time.perf_counter() - assigned[0], nbytes
    finally:
        source.close()


def bench_consume(quick: bool, load: common.LoadRecorder) -> list[dict]:
    sizes = (16 * 1024, 256 * 1024, 1024 * 1024)
    total = (16 if quick else 64) * 1024 * 1024
    rng = np.random.default_rng(1)
    rows = []
    with tansu_broker(common.WORK / "tansu-stages.log") as bootstrap:
        topics = {}
        for size in sizes:
            topic = f"consume-{size}-{uuid.uuid4().hex[:6]}"
            create_topics(bootstrap, [topic], 1)
            n = max(64, total // size)
            payload = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            common.produce(bootstrap, topic, ((f"m{i}", payload) for i in range(n)))
            topics[size] = (topic, n)

        def side(size: int) -> float:
            topic, n = topics[size]
            seconds, nbytes = consume_all(bootstrap, topic, n)
            return nbytes / seconds / 2**20

        timings = common.alternate({str(s): (lambda s=s: side(s)) for s in sizes},
                                   2 if quick else 3, load)
        for size in sizes:
            runs = timings[str(size)]
            mbps = common.median(runs)
            rows.append({"message_bytes": size, "messages": topics[size][1], "mb_per_s": mbps,
                         "messages_per_s": mbps * 2**20 / size, "runs": runs})
            common.log(f"consume {size // 1024} KiB messages: {mbps:.0f} MiB/s")
    return rows


def crc_backend() -> str:
    from kafka.record import util

    return "crc32c (C)" if getattr(util, "crc32c_c", None) is not None else "pure Python"


# ------------------------------------------------------------------------------------ main
def main() -> None:
    args = common.parser(__doc__).parse_args()
    started = time.monotonic()
    load = common.LoadRecorder()
    path = common.model_dir(args.model)
    model = load_model_dir(path)
    result: dict[str, Any] = {"quick": args.quick, "model": _model_info(path, model),
                              "execution": {"device": args.device, "tensorrt": args.tensorrt,
                                            "fp16": args.fp16}}
    result["decode"] = bench_decode(model, args.quick, load)
    result["decode_memory"] = bench_decode_memory(path, args.quick)
    result["encoder_memory"] = bench_encoder_memory(path, args.device, args.quick)
    decoded = corpus_decoded(model, path, 32 if args.quick else 96)
    result["embed"] = bench_embed(model, args, decoded, args.quick, load)
    result["embed_threads"] = bench_embed_threads(model, args, decoded, args.quick, load)
    result["upsert"] = bench_upsert(model, args.quick, load)
    result["consume"] = bench_consume(args.quick, load)
    result["consume_crc"] = crc_backend()
    result["load_average_1m"] = load.summary()
    out = common.write_result("stages", args.out, result, started)
    plot(json.loads(out.read_text()), args.out / "stages.png")
    common.log(f"wrote {out}")


def _model_info(path: Path, model: ModelDir) -> dict[str, Any]:
    return {"dir": str(path.relative_to(common.ROOT) if path.is_relative_to(common.ROOT)
                       else path),
            "model_id": model.model_id, "model_version": model.model_version,
            "embedding_dim": model.embedding_dim,
            "preprocessing": {m: model.manifest["modalities"][m].get("preprocessing")
                              for m in model.graphs},
            "recipe": common.MODEL_RECIPE if common.work_dir(path).is_dir() else None,
            "created_at": model.manifest.get("created_at")}


def plot(result: dict, path: Path) -> None:
    plt = common.plot_style()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    ax = axes[0]
    for res, dur in sorted({(r["resolution"], r["duration_s"]) for r in result["decode"]}):
        sel = [r for r in result["decode"] if r["resolution"] == res and r["duration_s"] == dur]
        ax.plot([r["workers"] for r in sel], [r["clips_per_s"] for r in sel], "o-",
                label=f"{res} {dur:.0f} s")
    ax.set(xlabel="decode workers (threads)", ylabel="clips / s", title="decode", yscale="log")
    ax.legend(fontsize=7)
    ax = axes[1]
    for modality in ("visual", "audio"):
        sel = [r for r in result["embed"] if r["modality"] == modality]
        ax.plot([r["batch"] for r in sel], [r["clips_per_s"] for r in sel], "o-", label=modality)
    ax.set(xlabel="batch", ylabel="clips / s", xscale="log", yscale="log",
           title=f"embed ({result['embed'][0]['provider']})")
    ax.legend()
    ax = axes[2]
    for mode in ("memory", "path"):
        sel = [r for r in result["upsert"] if r["mode"] == mode]
        ax.plot([r["batch"] for r in sel], [r["points_per_s"] for r in sel], "o-", label=mode)
    ax.set(xlabel="points per upsert", ylabel="points / s", xscale="log", yscale="log",
           title="Qdrant local mode upsert (wait=true)")
    ax.legend()
    ax = axes[3]
    sel = result["consume"]
    ax.bar([f"{r['message_bytes'] // 1024} KiB" for r in sel], [r["mb_per_s"] for r in sel])
    ax.set(ylabel="MiB / s", title=f"Kafka consume from Tansu ({result['consume_crc']})")
    common.save_figure(fig, path, "avindex stages", result)


if __name__ == "__main__":
    main()
