"""Front-end specs for the paper's extractors (VGG19 frames, VGGish sound) from user weights.

The spec records the weights file's absolute path and sha256, so the feature file, the
checkpoint and the exported manifest all say exactly which file produced the numbers, and the
module refuses a different file later (see user_weights.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from avindex.training.frontends.registry import USER_WEIGHTS, FrontendSpec
from avindex.training.frontends.user_weights import checked_path, file_digest


def _file(path: str | Path, what: str, layout: str) -> tuple[str, str]:
    resolved = checked_path(path, what, layout)
    return str(resolved), file_digest(resolved, None, what)


def vgg19_spec(weights: str | Path, layer: str = "fc7", size: int = 224, fps: float = 1.0,
               max_frames: int = 8) -> FrontendSpec:
    from avindex.training.frontends.vgg19 import LAYERS, LAYOUT

    if layer not in LAYERS:
        raise ValueError(f"unknown VGG19 layer {layer!r}; choose from {sorted(LAYERS)}")
    path, digest = _file(weights, "VGG19", LAYOUT)
    return FrontendSpec("visual", "vgg19",
                        {"weights": path, "weights_sha256": digest, "layer": layer, "size": size},
                        {"fps": fps, "size": size, "max_frames": max_frames})


def inception_v3_spec(weights: str | Path, size: int = 299, fps: float = 1.0,
                      max_frames: int = 8) -> FrontendSpec:
    from avindex.training.frontends.inception import LAYOUT

    path, digest = _file(weights, "Inception-v3", LAYOUT)
    return FrontendSpec("visual", "inception-v3",
                        {"weights": path, "weights_sha256": digest, "size": size},
                        {"fps": fps, "size": size, "max_frames": max_frames})


def vggish_spec(weights: str | Path, pca: str | Path | None = None,
                postprocess: str | None = None, max_seconds: float = 10.0) -> FrontendSpec:
    """postprocess None: 'pca' when PCA parameters are available (a PCA file or in weights)."""
    from avindex.training.frontends.vggish import (
        LAYOUT,
        PCA_LAYOUT,
        POSTPROCESS,
        SAMPLE_RATE,
        weights_have_pca,
    )

    path, digest = _file(weights, "VGGish", LAYOUT)
    params = {"weights": path, "weights_sha256": digest, "pca": None, "pca_sha256": None}
    if pca is not None:
        params["pca"], params["pca_sha256"] = _file(pca, "VGGish PCA", PCA_LAYOUT)
    if postprocess is None:
        postprocess = "pca" if pca is not None or weights_have_pca(path) else "none"
    if postprocess not in POSTPROCESS:
        raise ValueError(f"unknown VGGish postprocess {postprocess!r}; choose {POSTPROCESS}")
    return FrontendSpec("audio", "vggish", params | {"postprocess": postprocess},
                        {"sample_rate": SAMPLE_RATE, "max_seconds": max_seconds})


def with_weights(spec: FrontendSpec, weights: str | Path, pca: str | Path | None = None,
                 ) -> FrontendSpec:
    """The same front-end reading its weights from another path (the sha256 must still match)."""
    if spec.name not in USER_WEIGHTS:
        raise ValueError(f"front-end {spec.name!r} does not take a weights file")
    params = dict(spec.params, weights=str(Path(weights).expanduser().resolve()))
    if pca is not None:
        params["pca"] = str(Path(pca).expanduser().resolve())
    return replace(spec, params=params)

