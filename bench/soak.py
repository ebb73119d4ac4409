"""Memory soak: the daemon as a process indexing >= 10,000 messages; its RSS must stay flat.

    .venv/bin/python bench/soak.py [--quick] [--messages N] [--model DIR]

`avindex run` (a real child process, config file, probes on a free port) consumes N messages
with distinct media ids from a Tansu topic: small h264 + aac clips (1 s, 96x64), cycling over
64 distinct files, so the run exercises Kafka, decoding, batching, the encoder and Qdrant at a
high message rate. By default the model is the tests' tiny ONNX model directory (built with
onnx.helper, tests/daemon/daemon_helpers.py): memory growth in the daemon's own machinery does
not depend on how big the network is, and the soak then takes minutes, not an hour.

RSS (VmRSS from /proc) and indexed count (/metrics) are sampled twice a second. The store is
Qdrant Edge (`qdrant.path`, inside the daemon's process), so the RSS rises by what the store
keeps in memory; a control process upserts the same number of points of the same shape into
Edge alone, and the difference of the two slopes is what the daemon itself adds. (The committed
soak.json was measured on qdrant-client's local mode in memory, the store before Edge.)
Writes bench/results/soak.json and soak.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import common
import numpy as np
import stages

from avindex.daemon.model_dir import load_model_dir
from avindex.daemon.settings import Settings
from avindex.tools.kafka_admin import create_topics, free_port
from avindex.tools.processes import ChildProcess
from avindex.tools.scrape import http_get, metric_total
from avindex.tools.tansu import tansu_broker

sys.path.insert(0, str(common.ROOT / "tests" / "daemon"))
from daemon_harness import settings_file  # the tests' settings -> YAML config file
from daemon_helpers import build_model_dir  # the tests' tiny model

TINY_MODEL = common.WORK / "tiny-model"


def config(model: Path, bootstrap: str, topic: str, port: int, path: Path) -> Path:
    s = Settings()
    s.model.dir = str(model)
    s.kafka.bootstrap_servers, s.kafka.topics = [bootstrap], [topic]
    s.kafka.group_id, s.kafka.dead_letter_topic = f"soak-{uuid.uuid4().hex[:6]}", f"{topic}.dlq"
    s.kafka.session_timeout_ms, s.kafka.heartbeat_interval_ms = 6000, 1000
    s.qdrant.path = str(path.parent / "qdrant")  # Qdrant Edge, the embedded default
    s.http.host, s.http.port = "127.0.0.1", port
    s.log.level = "WARNING"
    s.validate()
    return settings_file(s, path)


def indexed(port: int) -> float | None:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout_s=2)
    return metric_total(body.decode(), "avindex_messages_indexed_total") if status == 200 else None


def soak_daemon(model: Path, bootstrap: str, topic: str, n: int, tmp: Path) -> dict[str, Any]:
    port = free_port()
    cfg = config(model, bootstrap, topic, port, tmp / "soak.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVINDEX_")}
    proc = ChildProcess("daemon", [sys.executable, "-m", "avindex.tools.cli", "run", "--config",
                                   str(cfg)], tmp / "daemon.log", env=env)
    samples: list[tuple[float, float, float]] = []  # (seconds, indexed, rss MiB)
    t0 = time.monotonic()
    try:
        deadline = t0 + 60 + n / 5
        done = 0.0
        while done < n:
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"daemon stopped or too slow at {done} of {n}; see "
                                   f"{tmp / 'daemon.log'}")
            count = indexed(port)
            if count is not None:
                done = count
                samples.append((time.monotonic() - t0, count, common.rss_mb(proc.pid)))
            time.sleep(0.5)
        peak = common.rss_mb(proc.pid, "VmHWM")
    finally:
        code = proc.stop(60.0)
    return {"samples": samples, "peak_rss_mb": peak, "exit_code": code}


def _control_child(model_path: str, n: int, out: str) -> None:
    """Local mode alone: RSS while the same number of same-shaped points is upserted."""
    model = load_model_dir(model_path)
    import tempfile

    from avindex.daemon.sink import QdrantSink
    from avindex.daemon.store_edge import EdgeStore

    sink = QdrantSink(EdgeStore(tempfile.mkdtemp(dir=common.WORK)),
                      model_version=model.model_version, embedding_dim=model.embedding_dim,
                      distance=model.distance, modalities=list(model.graphs))
    sink.connect()
    rng = np.random.default_rng(0)
    rows = [(0, common.rss_mb())]
    for done in range(0, n, 256):
        points = stages.fake_points(model, 256, rng)
        for i in range(0, len(points), 32):
            sink.write_batch(points[i:i + 32])
        rows.append((done + 256, common.rss_mb()))
    Path(out).write_text(json.dumps(rows))


def control(model: Path, n: int, tmp: Path) -> list[tuple[int, float]]:
    out = tmp / "control.json"
    subprocess.run([sys.executable, __file__, "--control-child", str(model), str(n), str(out)],
                   check=True)
    return [tuple(r) for r in json.loads(out.read_text())]


def slope_per_1000(xs: list[float], ys: list[float], n: int) -> float:
    """MiB per 1,000 messages, least squares over the run after its first 20 % (warm-up:
    allocator pools, the ONNX arena and Kafka buffers fill during the first batches)."""
    keep = [(x, y) for x, y in zip(xs, ys, strict=True) if x >= 0.2 * n]
    fx, fy = zip(*keep, strict=True)
    return float(np.polyfit(fx, fy, 1)[0] * 1000)


def rss_at(xs: list[float], ys: list[float], share: float, n: int) -> float:
    """RSS at the first sample with at least `share` of the messages indexed."""
    return next(y for x, y in zip(xs, ys, strict=True) if x >= share * n)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--control-child":
        _control_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    p = common.parser(__doc__)
    p.add_argument("--messages", type=int, default=None, help="quick 2,000; default 10,000")
    args = p.parse_args()
    n = args.messages or (2000 if args.quick else 10_000)
    started = time.monotonic()
    if args.model is None:
        model = TINY_MODEL if (TINY_MODEL / "manifest.json").is_file() else build_model_dir(
            TINY_MODEL)
        model_note = "tests' tiny ONNX model (onnx.helper, 8-d, 32x32 at 2 fps, 8 kHz)"
    else:
        model, model_note = args.model, "given with --model"
    clips = common.synth_clips(common.WORK / "soak-clips", 64, seconds=1.0, width=96,
                               height=64, fps=10, sample_rate=16000)
    data = [c.read_bytes() for c in clips]
    load = common.LoadRecorder()
    load.sample()
    with (tansu_broker(common.WORK / "tansu-soak.log") as bootstrap,
          tempfile.TemporaryDirectory(dir=common.WORK) as tmp_name):
        tmp = Path(tmp_name)
        topic = f"soak-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, [topic], 2)
        common.produce(bootstrap, topic,
                       ((f"soak-{i:06d}", data[i % len(data)]) for i in range(n)))
        common.log(f"produced {n} messages")
        run = soak_daemon(model, bootstrap, topic, n, tmp)
        load.sample()
        ctrl = control(model, n, tmp)
    load.sample()
    t, msgs, rss = (list(x) for x in zip(*run["samples"], strict=True))
    cx, cy = (list(x) for x in zip(*ctrl, strict=True))
    daemon_slope, store_slope = slope_per_1000(msgs, rss, n), slope_per_1000(cx, cy, n)
    result = {
        "quick": args.quick, "messages": n, "kafka_python_pause_fix": True,
        "model": str(model), "model_note": model_note,
        "clips": "64 distinct 1 s 96x64 h264 10 fps + aac 16 kHz, cycled; distinct media ids",
        "daemon": {"exit_code": run["exit_code"], "peak_rss_mb": run["peak_rss_mb"],
                   "rss_first_mb": rss[0], "rss_last_mb": rss[-1],
                   "seconds": t[-1], "messages_per_s": msgs[-1] / t[-1],
                   "rss_mb_at": {f"{p}%": rss_at(msgs, rss, p / 100, n) for p in (20, 50, 100)},
                   "rss_slope_mb_per_1000_msgs": daemon_slope},
        "store_alone": {"rss_slope_mb_per_1000_points": store_slope,
                                    "rss_first_mb": cy[0], "rss_last_mb": cy[-1]},
        "daemon_minus_store_mb_per_1000_msgs": daemon_slope - store_slope,
        "samples": {"seconds": t, "indexed": msgs, "rss_mb": rss},
        "control_samples": {"points": cx, "rss_mb": cy},
        "load_average_1m": load.summary(),
    }
    out = common.write_result("soak", args.out, result, started)
    plot(json.loads(out.read_text()), args.out / "soak.png")
    common.log(f"daemon slope {daemon_slope:.2f} MiB/1000 msgs, store alone {store_slope:.2f}")


def plot(result: dict, path: Path) -> None:
    plt = common.plot_style()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    s, c = result["samples"], result["control_samples"]
    ax.plot(s["indexed"], s["rss_mb"], label="avindex run (daemon process), RSS")
    n = result["messages"]
    base = (rss_at(s["indexed"], s["rss_mb"], 0.2, n)
            - rss_at(c["points"], c["rss_mb"], 0.2, n))
    ax.plot(c["points"], [y + base for y in c["rss_mb"]], "--",
            label="Qdrant Edge alone, same points (shifted to meet the daemon at 20 %)")
    d = result["daemon"]
    ax.set(xlabel="messages indexed", ylabel="RSS (MiB)",
           title=f"soak: {result['messages']} messages, slope "
           f"{d['rss_slope_mb_per_1000_msgs']:.2f} MiB/1000 after 20 % (store alone "
           f"{result['store_alone']['rss_slope_mb_per_1000_points']:.2f})")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    common.save_figure(fig, path, "avindex soak", result)


if __name__ == "__main__":
    main()
