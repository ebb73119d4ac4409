"""Google's speech_embedding (keyword-spotting backbone) as a clip-level audio front-end.

The weights come from two ONNX files in the `openwakeword` wheel: `melspectrogram.onnx` (a
fixed STFT + 32-band mel filterbank) and `embedding_model.onnx` (Google's speech_embedding CNN,
Apache-2.0, re-exported by openWakeWord). openwakeword is never a dependency (it pulls tflite):
`scripts/setup.sh` fetches the wheel with `pip download --no-deps` and we read only those two
files. Their weights are copied into torch modules here, so the front-end exports with the
VAE-CCA encoder as one graph and runs batched with padding masks; a test checks these modules
against ONNX Runtime running the wheel's own graphs.

Pipeline (as openwakeword's AudioFeatures): 16 kHz audio at int16 scale -> power mel (512-sample
frames, hop 160) -> 10 log10, floored at 80 dB below the clip's loudest value -> x / 10 + 2 ->
windows of 76 frames (0.76 s) every 8 frames -> 96 numbers per window. Windows are then pooled
over the clip (see SpeechEmbedding).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from avindex.training.frontends.efficientnet import MissingWeightsError
from avindex.training.frontends.pooling import length_mask

SAMPLE_RATE = 16000
N_FFT, HOP = 512, 160
WINDOW_FRAMES, WINDOW_STEP = 76, 8
EMBEDDING_DIM = 96
INT16_DB = 20.0 * math.log10(32768.0)  # the graphs expect 16-bit PCM values, we get [-1, 1]
TOP_DB = 80.0
# The network runs on chunks of 16 windows (196 frames, every 128): a static time axis keeps
# the exported graph's shape arithmetic simple, and a chunk computes the 68 frames its windows
# share once, unlike running each window alone.
CHUNK_WINDOWS = 16
CHUNK_FRAMES = WINDOW_FRAMES + WINDOW_STEP * (CHUNK_WINDOWS - 1)
CHUNK_HOP = WINDOW_STEP * CHUNK_WINDOWS
POOLINGS = ("mean", "max", "meanmax", "peak")
PACKAGE_DIR = "openwakeword/resources/models"
# The files of openwakeword 0.5.1 (what setup.sh fetches): other versions re-exported the model.
GRAPHS = {
    "melspectrogram.onnx": "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
    "embedding_model.onnx": "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f",
}
HOW_TO_INSTALL = (
    "speech_embedding weights are missing. Run scripts/setup.sh, or fetch them with "
    "`pip download --no-deps openwakeword==0.5.1 -d ~/.cache/avindex` (only its "
    "melspectrogram.onnx and embedding_model.onnx are read; openwakeword is not installed)"
)


def _weights_dir() -> Path:
    return Path(os.environ.get("AVINDEX_WEIGHTS_DIR", "~/.cache/avindex")).expanduser()


def _candidates() -> Iterator[tuple[str, dict[str, bytes]]]:
    """(where, {file: bytes}) from an installed `openwakeword`, then from cached wheels."""
    spec = importlib.util.find_spec("openwakeword")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations))) / "resources" / "models"
        yield str(root), {g: (root / g).read_bytes() for g in GRAPHS if (root / g).is_file()}
    folder = _weights_dir()
    for wheel in sorted(folder.glob("openwakeword-*.whl")) if folder.is_dir() else []:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            yield str(wheel), {g: zf.read(f"{PACKAGE_DIR}/{g}") for g in GRAPHS
                               if f"{PACKAGE_DIR}/{g}" in names}


def read_speech_graphs() -> dict[str, bytes]:
    """The two ONNX files' bytes, from the first place that has them with the pinned hashes."""
    mismatched = []
    for where, found in _candidates():
        if set(found) != set(GRAPHS):
            continue
        if all(hashlib.sha256(found[g]).hexdigest() == h for g, h in GRAPHS.items()):
            return found
        mismatched.append(where)
    note = f" (found other versions' files, sha256 differs: {mismatched})" if mismatched else ""
    raise MissingWeightsError(HOW_TO_INSTALL + note)


def _initializers(graph_bytes: bytes) -> tuple[object, dict[str, np.ndarray]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model(io.BytesIO(graph_bytes))
    return model.graph, {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


class SpeechMel(nn.Module):
    """(waveform [B, N] in [-1, 1], num_samples [B]) -> features [B, F, 32], valid frames [B]
    and each item's floor value [B, 1, 1] (what its frames past the end are set to).

    The STFT and mel weights are melspectrogram.onnx's; the 80 dB floor is taken per item over
    its valid frames (the original graph takes one maximum over the whole batch).
    """

    def __init__(self, graph_bytes: bytes, min_frames: int = 1) -> None:
        super().__init__()
        self.min_frames = min_frames
        _graph, weights = _initializers(graph_bytes)
        real, imag = weights["0.stft.conv_real.weight"], weights["0.stft.conv_imag.weight"]
        self.register_buffer("dft", torch.from_numpy(np.concatenate([real, imag])))  # (514,1,512)
        self.register_buffer("mel", torch.from_numpy(weights["1.melW"].copy()))  # (257, 32)

    def forward(
        self, waveform: torch.Tensor, num_samples: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        waveform = waveform * length_mask(num_samples, waveform.shape[1])
        # At least min_frames frames (those past an item's end are set to its floor below).
        # sym_max keeps the length symbolic in the exported graph, where an `if` would freeze it.
        need = N_FFT + HOP * (self.min_frames - 1)
        waveform = F.pad(waveform, (0, need))[:, : torch.sym_max(waveform.shape[1], need)]
        spec = F.conv1d(waveform.unsqueeze(1), self.dft, stride=HOP)  # (B, 514, F)
        real, imag = spec.chunk(2, dim=1)
        power = (real * real + imag * imag).transpose(1, 2)  # (B, F, 257)
        # dB at int16 scale, floored at 1e-10 as in the graph. Scaling after the log keeps the
        # powers small enough for fp16; flooring after it keeps silence finite there too.
        db = 10.0 * torch.log10(torch.matmul(power, self.mel)) + INT16_DB  # (B, F, 32)
        db = db.clamp_min(-100.0)
        frames = (num_samples - N_FFT).clamp_min(0) // HOP + 1
        valid = length_mask(frames, db.shape[1]).unsqueeze(2)  # (B, F, 1)
        peak = (db - (1.0 - valid) * 1e4).amax(dim=(1, 2), keepdim=True)
        floor = peak - TOP_DB
        db = torch.maximum(db, floor) * valid + floor * (1.0 - valid)  # padding sits at the floor
        return db / 10.0 + 2.0, frames, floor / 10.0 + 2.0


class SpeechEmbeddingNet(nn.Module):
    """(features [N, F >= 76, 32]) -> [N, W, 96]: embedding_model.onnx's layers in torch.

    The graph is a chain of Conv, LeakyRelu, Max (with a constant, i.e. a floor) and MaxPool
    nodes between two Reshapes; anything else means an unexpected file and is refused. Its
    convolutions are unpadded in time and its pooling strides multiply to 8 in time, so run
    over a whole spectrogram it yields exactly the embeddings of the 76-frame windows every
    8 frames (W = (F - 76) // 8 + 1), without recomputing the 68 frames windows share.
    """

    def __init__(self, graph_bytes: bytes) -> None:
        super().__init__()
        graph, weights = _initializers(graph_bytes)
        from onnx import helper

        self.steps: list[tuple[str, dict]] = []
        self.convs = nn.ModuleList()
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Conv":
                self.convs.append(_conv_from_onnx(node, attrs, weights))
                self.steps.append(("conv", {"index": len(self.convs) - 1}))
            elif node.op_type == "LeakyRelu":
                self.steps.append(("leaky_relu", {"alpha": float(attrs["alpha"])}))
            elif node.op_type == "Max":
                self.steps.append(("floor", {"value": float(weights[node.input[1]].reshape(()))}))
            elif node.op_type == "MaxPool":
                if any(attrs.get("pads", [0])):
                    raise ValueError("embedding_model.onnx: padded MaxPool is not supported")
                self.steps.append(("max_pool", {"kernel": tuple(attrs["kernel_shape"]),
                                                "stride": tuple(attrs["strides"])}))
            elif node.op_type != "Reshape":
                raise ValueError(f"embedding_model.onnx: unexpected operator {node.op_type}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.unsqueeze(1)  # (N, 1, F, 32): time as height, mel bands as width
        for kind, arg in self.steps:
            if kind == "conv":
                x = self.convs[arg["index"]](x)
            elif kind == "leaky_relu":
                x = F.leaky_relu(x, arg["alpha"])
            elif kind == "floor":
                x = x.clamp_min(arg["value"])
            else:
                x = F.max_pool2d(x, arg["kernel"], arg["stride"])
        return x.squeeze(3).transpose(1, 2)  # (N, W, 96)


def _conv_from_onnx(node, attrs: dict, weights: dict[str, np.ndarray]) -> nn.Conv2d:
    weight = weights[node.input[1]]
    bias = weights[node.input[2]] if len(node.input) > 2 else None
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:] or attrs.get("group", 1) != 1 or list(attrs["strides"]) != [1, 1]:
        raise ValueError(f"embedding_model.onnx: unsupported convolution {attrs}")
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]),
                     padding=tuple(pads[:2]), bias=bias is not None)
    conv.weight.data = torch.from_numpy(weight.copy())
    if bias is not None:
        conv.bias.data = torch.from_numpy(bias.copy())
    return conv


class SpeechEmbedding(nn.Module):
    """(waveform [B, N] at 16 kHz, num_samples [B]) -> [B, D] pooled speech_embedding windows.

    Only windows that lie inside an item's valid frames count (a clip shorter than one window
    gets one, filled with the item's own floor value), so padding never changes an item.
    Pooling over windows: `mean`, `max`, `meanmax` (both, 192 numbers) or `peak` (the default:
    mean and standard deviation weighted towards the loudest windows, where the spoken word is,
    and the maximum; 288 numbers). docs/training.md §8 compares them.
    """

    def __init__(self, pooling: str = "peak", peak_db: float = 6.0) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLINGS}")
        graphs = read_speech_graphs()
        self.mel = SpeechMel(graphs["melspectrogram.onnx"], min_frames=WINDOW_FRAMES)
        self.net = SpeechEmbeddingNet(graphs["embedding_model.onnx"]).eval()
        self.pooling, self.peak_db = pooling, peak_db
        self.output_dim = EMBEDDING_DIM * {"mean": 1, "max": 1, "meanmax": 2, "peak": 3}[pooling]

    def windows(
        self, waveform: torch.Tensor, num_samples: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-window embeddings [B, W, 96], valid-window mask [B, W], window loudness [B, W])."""
        feats, frames, floor = self.mel(waveform, num_samples)  # (B, F >= 76, 32)
        b = feats.shape[0]
        # CHUNK_HOP more frames at the floor let the chunks cover every valid window.
        feats = torch.cat([feats, floor.expand(b, CHUNK_HOP, feats.shape[2])], dim=1)
        chunks = feats.unfold(1, CHUNK_FRAMES, CHUNK_HOP)  # (B, C, 32, CHUNK_FRAMES)
        c = chunks.shape[1]
        emb = self.net(chunks.transpose(2, 3).reshape(b * c, CHUNK_FRAMES, feats.shape[2]))
        emb = emb.reshape(b, c * CHUNK_WINDOWS, EMBEDDING_DIM)  # window k starts at frame 8k
        n_windows = (frames - WINDOW_FRAMES).clamp_min(0) // WINDOW_STEP + 1
        mask = length_mask(n_windows, emb.shape[1])
        # window loudness: the loudest band per frame, averaged over the window's 76 frames
        loud = feats.amax(dim=2).unsqueeze(1)  # (B, 1, F)
        loudness = F.avg_pool1d(loud, WINDOW_FRAMES, WINDOW_STEP).squeeze(1)[:, : emb.shape[1]]
        return emb, mask, loudness

    def forward(self, waveform: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        emb, mask, loudness = self.windows(waveform, num_samples)
        valid = mask
        if self.pooling == "peak":  # weights fall off 1/e per peak_db below the loudest window
            rel = (loudness - (loudness - (1.0 - mask) * 1e4).amax(dim=1, keepdim=True)) * 10.0
            mask = torch.exp(rel / self.peak_db) * mask
        weights = (mask / mask.sum(dim=1, keepdim=True)).unsqueeze(2)  # (B, W, 1), sums to 1
        mean = (emb * weights).sum(dim=1)
        parts = [] if self.pooling == "max" else [mean]
        if self.pooling == "peak":
            parts.append(torch.sqrt(((emb - mean.unsqueeze(1)) ** 2 * weights).sum(dim=1) + 1e-6))
        if self.pooling != "mean":
            parts.append((emb - (1.0 - valid).unsqueeze(2) * 1e4).amax(dim=1))
        return torch.cat(parts, dim=1)
