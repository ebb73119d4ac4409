"""Write a model directory from a training checkpoint (docs/model-directory.md)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch

from avindex.daemon.model_dir import compute_model_version, load_model_dir, sha256_file
from avindex.exporters.chains import AudioChain, VisualChain
from avindex.exporters.fp16 import convert_fp16
from avindex.training.frontends import FrontendSpec, build_audio_frontend, build_visual_frontend
from avindex.training.frontends.paper import with_weights
from avindex.training.onnx_graphs import (
    INPUT_NAMES,
    OPSET,
    OUTPUT_NAMES,
    example_inputs,
    export_chain,
    parity,
)
from avindex.training.train import load_checkpoint

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
PARITY_TOLERANCE = 1e-4


def frontend_specs(ckpt: dict) -> tuple[FrontendSpec, FrontendSpec]:
    """The front-ends the checkpoint's features came from (stored by `avindex data features`)."""
    frontends = (ckpt.get("feature_attrs") or {}).get("frontends")
    if not frontends:
        raise ValueError(
            "checkpoint has no front-end record: it was trained on features that avindex did not "
            "extract (e.g. VEGAS/AVE files). Export needs the front-ends that produced the "
            "features; for the paper's extractors see `avindex export --help`."
        )
    return FrontendSpec.from_dict(frontends["visual"]), FrontendSpec.from_dict(frontends["audio"])


def export_model_dir(checkpoint: Path, out: Path, fp16: bool = True,
                     model_id: str = "avindex-vaecca", weights: dict | None = None) -> dict:
    """Export both chains of `checkpoint` into `out` (replaced atomically); returns the manifest.

    `weights` ({"visual": FILE, "audio": FILE, "audio_pca": FILE}, all optional) says where the
    user-supplied weights of the paper's extractors are now, if they moved since the features
    were extracted; each must still have the sha256 recorded then.
    """
    if out.exists() and not (out / "manifest.json").is_file():
        raise ValueError(f"{out} exists and is not a model directory; refusing to replace it")
    model, ckpt = load_checkpoint(checkpoint)
    model.eval()
    visual_spec, audio_spec = frontend_specs(ckpt)
    weights = weights or {}
    if weights.get("visual"):
        visual_spec = with_weights(visual_spec, weights["visual"])
    if weights.get("audio") or weights.get("audio_pca"):
        audio_spec = with_weights(audio_spec, weights.get("audio") or audio_spec.params["weights"],
                                  weights.get("audio_pca"))
    chains = {
        "visual": (VisualChain(build_visual_frontend(visual_spec), model), visual_spec),
        "audio": (AudioChain(build_audio_frontend(audio_spec), model), audio_spec),
    }
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        modalities = {}
        for name, (chain, spec) in chains.items():
            log.info("exporting %s chain (%s front-end)", name, spec.name)
            path = export_chain(chain, name, spec.decode, tmp / f"{name}.onnx")
            diff = parity(chain, path, example_inputs(name, spec.decode))
            if max(diff.values()) > PARITY_TOLERANCE:
                raise RuntimeError(f"{name}: ONNX differs from PyTorch: {diff}")
            entry = {
                "file": path.name,
                "sha256": sha256_file(path),
                "fp16_file": None,
                "fp16_sha256": None,
                "inputs": INPUT_NAMES[name],
                "outputs": OUTPUT_NAMES,
                "preprocessing": dict(spec.decode) | {"frontend": spec.name} | spec.params,
                "parity_max_abs_diff": diff,  # on the export example batch
            }
            if fp16:
                half = convert_fp16(path, tmp / f"{name}.fp16.onnx")
                entry["fp16_file"], entry["fp16_sha256"] = half.name, sha256_file(half)
            modalities[name] = entry
        manifest = _manifest(ckpt, model, modalities, model_id)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        load_model_dir(tmp)  # the daemon's own validation must accept what we wrote
        tmp.chmod(0o755)  # mkdtemp makes 0700; a service user must be able to read the model
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _manifest(ckpt: dict, model: torch.nn.Module, modalities: dict, model_id: str) -> dict:
    attrs = ckpt.get("feature_attrs") or {}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model_id": model_id,
        "model_version": "",
        "embedding_dim": int(model.config.latent_dim),
        "distance": "Cosine",
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "opset": OPSET,
        "modalities": modalities,
        "pretrained": attrs.get("pretrained", []),
        "training_data": {
            "class_names": attrs.get("class_names", []),
            "source_manifest": attrs.get("source_manifest"),
            "sizes": ckpt.get("data_sizes", {}),
            "method": ckpt.get("method"),
        },
        "metrics": ckpt.get("metrics", {}),
    }
    file_hashes = {m["file"]: m["sha256"] for m in modalities.values()}
    manifest["model_version"] = compute_model_version(manifest, file_hashes)
    return manifest
