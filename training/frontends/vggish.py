"""VGGish (AudioSet; the paper's audio extractor) from a weights file the user supplies.

Defined here in plain torch with the module names of the common PyTorch port (harritaylor's
torchvggish), so its state dict loads as it is. Preprocessing follows VGGish's
`vggish_input.waveform_to_examples` and runs inside the module (exports to ONNX): 16 kHz mono,
25 ms periodic-Hann frames (400 samples, DFT of 512) every 10 ms, magnitude spectrum, 64 mel
bands from 125 to 7500 Hz (triangles linear in mel), log(mel + 0.01), non-overlapping examples
of 96 frames (0.96 s). The network maps each example to 128 numbers; with the PCA parameters
they are whitened and clipped like AudioSet's released embeddings (without the final rounding to
8-bit integers, a step function that ONNX and PyTorch may resolve differently at ties). Example
embeddings are averaged over the clip; a clip shorter than one example is padded with silence.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from avindex.training.frontends.pooling import length_mask, masked_mean
from avindex.training.frontends.spectrogram import PowerMelSpectrogram, mel_filterbank
from avindex.training.frontends.user_weights import WeightsFileError, load_weights

SAMPLE_RATE = 16000
WIN, N_FFT, HOP = 400, 512, 160
N_MELS, FMIN, FMAX = 64, 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96
EMBEDDING_DIM = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0  # AudioSet's clipping range before 8-bit scaling
POSTPROCESS = ("pca", "none")
PCA_IN_WEIGHTS = {"pproc.pca_matrix": (128, 128), "pproc.pca_means": (128, 1)}
PCA_FILE = {"pca_eigen_vectors": (128, 128), "pca_means": (128,)}
LAYOUT = (
    "a torch state dict with torchvggish's names (features.0/3/6/8/11/13.weight and .bias, "
    "embeddings.0/2/4.weight and .bias, optionally pproc.pca_matrix [128, 128] and "
    "pproc.pca_means [128, 1]), e.g. torch.save(torch.hub.load('harritaylor/torchvggish', "
    "'vggish').state_dict(), 'vggish.pth') on a machine that can download it"
)
PCA_LAYOUT = (
    "AudioSet's vggish_pca_params.npz or torchvggish's vggish_pca_params .pth: "
    "pca_eigen_vectors [128, 128] and pca_means [128]"
)


class VGGishNet(nn.Module):
    """(examples [N, 1, 96 frames, 64 mels]) -> [N, 128], torchvggish's module tree."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 512, 6, 4)
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))  # TF's (time, mel, channel)


def network_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in VGGishNet().state_dict().items()}


def weights_have_pca(weights: str | Path) -> bool:
    """Whether the weights file carries torchvggish's PCA parameters (memory-mapped if it can)."""
    path = Path(weights).expanduser()
    for mmap in (True, False):  # files in torch's legacy (non-zip) format cannot be mapped
        try:
            names = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap).keys()
        except Exception:  # unreadable: VGGishEmbedding reports it with the expected layout
            continue
        return set(PCA_IN_WEIGHTS) <= set(names)
    return False


def load_vggish(weights: str | Path, pca: str | Path | None = None,
                weights_sha256: str | None = None, pca_sha256: str | None = None,
                ) -> tuple[VGGishNet, tuple[torch.Tensor, torch.Tensor] | None, dict]:
    """(network, (pca_matrix [128, 128], pca_means [128]) or None, {file: sha256})."""
    tensors, digest = load_weights(weights, network_shapes(), PCA_IN_WEIGHTS, "VGGish", LAYOUT,
                                   weights_sha256)
    digests = {"weights_sha256": digest}
    params = None
    if pca is not None:
        pca_tensors, digests["pca_sha256"] = load_weights(pca, PCA_FILE, {}, "VGGish PCA",
                                                          PCA_LAYOUT, pca_sha256)
        params = pca_tensors["pca_eigen_vectors"], pca_tensors["pca_means"]
    elif set(PCA_IN_WEIGHTS) <= set(tensors):
        params = tensors["pproc.pca_matrix"], tensors["pproc.pca_means"].reshape(-1)
    with torch.device("meta"):  # every weight comes from the file: skip random initialisation
        net = VGGishNet()
    net.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("pproc.")},
                        assign=True)
    return net.eval(), params, digests


class VGGishEmbedding(nn.Module):
    """(waveform [B, N] at 16 kHz, num_samples [B]) -> [B, 128] mean of example embeddings."""

    output_dim = EMBEDDING_DIM

    def __init__(self, weights: str, weights_sha256: str | None = None, pca: str | None = None,
                 pca_sha256: str | None = None, postprocess: str = "none") -> None:
        super().__init__()
        if postprocess not in POSTPROCESS:
            raise ValueError(f"unknown VGGish postprocess {postprocess!r}; choose {POSTPROCESS}")
        self.net, params, self.digests = load_vggish(weights, pca, weights_sha256, pca_sha256)
        self.postprocess = postprocess
        if postprocess == "pca":
            if params is None:
                raise WeightsFileError(
                    f"VGGish postprocess 'pca' needs PCA parameters: {weights} has no "
                    f"pproc.pca_matrix/pproc.pca_means and no PCA file was given ({PCA_LAYOUT})"
                )
            self.register_buffer("pca_matrix", params[0].contiguous())
            self.register_buffer("pca_means", params[1].contiguous())
        self.spectrogram = PowerMelSpectrogram(
            SAMPLE_RATE, N_FFT, HOP, N_MELS, FMIN, FMAX, win_length=WIN, magnitude=True,
            bank=mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, FMIN, FMAX, mel_domain=True),
        )

    def examples(self, waveform: torch.Tensor, num_samples: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-mel examples [B, E, 96, 64], valid examples [B]); frames past the end = silence."""
        mel, frames = self.spectrogram(waveform, num_samples)  # (B, 64, F)
        floor = math.log(LOG_OFFSET)  # what a silent frame gives
        valid = length_mask(frames, mel.shape[2]).unsqueeze(1)
        logmel = torch.log(mel + LOG_OFFSET) * valid + floor * (1.0 - valid)
        short = max(0, EXAMPLE_FRAMES - logmel.shape[2])
        if short:
            logmel = F.pad(logmel, (0, short), value=floor)
        blocks = logmel.unfold(2, EXAMPLE_FRAMES, EXAMPLE_FRAMES)  # (B, 64, E, 96)
        n_examples = (frames - EXAMPLE_FRAMES).clamp_min(0) // EXAMPLE_FRAMES + 1
        return blocks.permute(0, 2, 3, 1), n_examples

    def forward(self, waveform: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        blocks, n_examples = self.examples(waveform, num_samples)
        b, e, t, m = blocks.shape
        emb = self.net(blocks.reshape(b * e, 1, t, m))  # (B*E, 128)
        if self.postprocess == "pca":
            emb = torch.matmul(emb - self.pca_means, self.pca_matrix.T)
            emb = (emb.clamp(QUANTIZE_MIN, QUANTIZE_MAX) - QUANTIZE_MIN) * (
                255.0 / (QUANTIZE_MAX - QUANTIZE_MIN))
        return masked_mean(emb.reshape(b, e, EMBEDDING_DIM), length_mask(n_examples, e))
