"""Clips per second of each modality's full chain: ONNX Runtime (CPU) vs PyTorch eager.

Same decoded clips, same batch, alternating runs of the two engines inside one process so that
machine noise hits both alike; reports the median of --repeats timings per (modality, engine,
batch size) and the ratio ORT / PyTorch. Goal: ONNX Runtime >= 1.3x PyTorch at batch 32.

    python bench/export_throughput.py --checkpoint RUN/checkpoint.pt --media MANIFEST.csv
    # on a GPU: --provider CUDAExecutionProvider --torch-device cuda

Writes bench/results/export_throughput.json and .png.
"""

from __future__ import annotations

import avindex.daemon  # noqa: F401  (before onnxruntime: it turns ORT's telemetry off)

# isort: split
import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from avindex.daemon.media import decode_media
from avindex.exporters.chains import AudioChain, VisualChain
from avindex.exporters.writer import frontend_specs
from avindex.training.features import pad_audio, pad_frames
from avindex.training.frontends import build_audio_frontend, build_visual_frontend
from avindex.training.media_manifest import read_media_manifest
from avindex.training.onnx_graphs import export_chain
from avindex.training.train import load_checkpoint

RESULTS = Path(__file__).parent / "results"


def decoded_clips(manifest: Path, visual_spec, audio_spec, n: int) -> list:
    items = read_media_manifest(manifest).items[:n]
    return [decode_media(i.path, visual_spec.visual_spec(), audio_spec.audio_spec())
            for i in items]


def batch_inputs(modality: str, clips: list, size: int):
    chosen = [clips[i % len(clips)] for i in range(size)]
    if modality == "visual":
        return pad_frames([c.frames for c in chosen])
    return pad_audio([c.audio for c in chosen])


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up (allocations, kernel selection)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--media", type=Path, required=True, help="manifest CSV of real clips")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--provider", default="CPUExecutionProvider",
                   help="ONNX Runtime execution provider (CUDAExecutionProvider, "
                   "TensorrtExecutionProvider; CPU stays as the fallback)")
    p.add_argument("--torch-device", default="cpu", help="device of the PyTorch side (cuda)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, ckpt = load_checkpoint(args.checkpoint)
    model.eval()
    vspec, aspec = frontend_specs(ckpt)
    chains = {"visual": (VisualChain(build_visual_frontend(vspec), model).eval(), vspec),
              "audio": (AudioChain(build_audio_frontend(aspec), model).eval(), aspec)}
    providers = list(dict.fromkeys([args.provider, "CPUExecutionProvider"]))
    clips = decoded_clips(args.media, vspec, aspec, 32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for modality, (chain, spec) in chains.items():
            path = export_chain(chain, modality, spec.decode, Path(tmp) / f"{modality}.onnx")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.log_severity_level = 3
            session = ort.InferenceSession(str(path), opts, providers=providers)
            names = [i.name for i in session.get_inputs()]
            for b in (int(x) for x in args.batches.split(",")):
                inputs = batch_inputs(modality, clips, b)
                feeds = {n: x.numpy() for n, x in zip(names, inputs, strict=True)}

                chain.to(args.torch_device)
                on_device = [x.to(args.torch_device) for x in inputs]

                def run_torch(chain=chain, inputs=on_device):
                    with torch.inference_mode():
                        chain(*inputs)
                    if args.torch_device.startswith("cuda"):
                        torch.cuda.synchronize()

                def run_ort(session=session, feeds=feeds):
                    session.run(None, feeds)

                t_torch, t_ort = [], []
                for _ in range(args.repeats):  # alternate engines, one timing each per round
                    t_torch += timed(run_torch, 1)
                    t_ort += timed(run_ort, 1)
                row = {
                    "modality": modality, "batch": b, "provider": session.get_providers()[0],
                    "torch_device": args.torch_device,
                    "torch_clips_per_s": b / statistics.median(t_torch),
                    "ort_clips_per_s": b / statistics.median(t_ort),
                }
                row["ratio_ort_over_torch"] = row["ort_clips_per_s"] / row["torch_clips_per_s"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {
        "benchmark": "export_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__,
                    "onnxruntime": ort.__version__},
        "repeats": args.repeats,
        "frontends": {"visual": vspec.to_dict(), "audio": aspec.to_dict()},
        "rows": rows,
        "goal": "ONNX Runtime >= 1.3x PyTorch eager at batch 32",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out / "export_throughput.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, modality in zip(axes, ("visual", "audio"), strict=True):
        sel = [r for r in rows if r["modality"] == modality]
        x = np.arange(len(sel))
        ax.bar(x - 0.2, [r["torch_clips_per_s"] for r in sel], 0.4, label="PyTorch eager")
        ax.bar(x + 0.2, [r["ort_clips_per_s"] for r in sel], 0.4, label="ONNX Runtime CPU")
        for xi, r in zip(x, sel, strict=True):
            ax.text(xi + 0.2, r["ort_clips_per_s"], f"{r['ratio_ort_over_torch']:.2f}x",
                    ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [f"batch {r['batch']}" for r in sel])
        ax.set_title(f"{modality} chain")
        ax.set_ylabel("clips / s (median)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
