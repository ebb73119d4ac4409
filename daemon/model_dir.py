"""Load and check a model directory (docs/model-directory.md) before anything runs it.

A directory is refused, with an error that names the problem, when manifest.json is missing or
fails daemon/manifest.schema.json, when a listed ONNX file is missing or its sha256 differs, or
when `model_version` is not the hash of what is actually there. The exporter imports
`compute_model_version` so both sides compute the version the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from avindex.daemon.media import AudioSpec, VisualSpec

__all__ = [
    "MODALITIES",
    "ModalityGraph",
    "ModelDir",
    "ModelDirError",
    "compute_model_version",
    "load_model_dir",
    "sha256_file",
]

MODALITIES = ("visual", "audio")
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


class ModelDirError(ValueError):
    """A model directory the daemon refuses to run; the message says why."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (the manifest pins every graph file with it)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def compute_model_version(manifest: Mapping[str, Any], file_hashes: Mapping[str, str]) -> str:
    """The content hash that names a model (and its Qdrant collection).

    `file_hashes` maps the file name of each fp32 ONNX graph (`"visual.onnx"`, as in the
    manifest's `file`) to its sha256 hex digest. The version is the first 16 hex digits of
    SHA-256 over, in this order: one line `"<file>=<sha256>\n"` per file in sorted order, then
    the canonical JSON (sorted keys, no spaces, ASCII) of `{"embedding_dim", "distance",
    "modalities"}` taken from the manifest. Anything that changes what a vector means changes
    the version, so a new model never writes into an old collection.
    """
    digest = hashlib.sha256()
    for name in sorted(file_hashes):
        digest.update(f"{name}={file_hashes[name].lower()}\n".encode())
    core = {k: manifest[k] for k in ("embedding_dim", "distance", "modalities")}
    digest.update(_canonical_json(core).encode("ascii"))
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ModalityGraph:
    """One modality's graph: where its files are and how its input is sampled."""

    name: str
    path: Path
    fp16_path: Path | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    preprocessing: Mapping[str, Any]


@dataclass(frozen=True)
class ModelDir:
    """A checked model directory."""

    path: Path
    manifest: Mapping[str, Any]
    graphs: Mapping[str, ModalityGraph]

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def model_version(self) -> str:
        return self.manifest["model_version"]

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def distance(self) -> str:
        return self.manifest["distance"]

    def visual_spec(self) -> VisualSpec | None:
        """Frame sampling for `decode_media`, or None when the model has no visual graph."""
        graph = self.graphs.get("visual")
        if graph is None:
            return None
        p = graph.preprocessing
        return VisualSpec(fps=float(p["fps"]), size=int(p["size"]), max_frames=int(p["max_frames"]))

    def audio_spec(self) -> AudioSpec | None:
        """Audio resampling for `decode_media`, or None when the model has no audio graph."""
        graph = self.graphs.get("audio")
        if graph is None:
            return None
        p = graph.preprocessing
        return AudioSpec(sample_rate=int(p["sample_rate"]), max_seconds=float(p["max_seconds"]))


@cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_manifest(manifest: Any) -> None:
    """Schema check; every violation is listed with its JSON path."""
    errors = sorted(_validator().iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
                 for e in errors]
        raise ModelDirError("manifest.json does not match the schema: " + "; ".join(lines))


def _check_file(root: Path, name: str, expected: str, what: str) -> Path:
    path = root / name
    if not path.is_file():
        raise ModelDirError(f"{what}: file {name} listed in manifest.json is missing from {root}")
    actual = sha256_file(path)
    if actual != expected:
        raise ModelDirError(f"{what}: sha256 of {name} is {actual}, manifest.json says {expected}"
                            " (file changed or manifest stale)")
    return path


def load_model_dir(path: str | Path) -> ModelDir:
    """Read and check a model directory; raises ModelDirError naming the first problem."""
    root = Path(path)
    if not root.is_dir():
        raise ModelDirError(f"model directory not found: {root}")
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ModelDirError(f"no manifest.json in {root}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{manifest_path} is not valid JSON: {exc}") from exc
    validate_manifest(manifest)

    graphs: dict[str, ModalityGraph] = {}
    file_hashes: dict[str, str] = {}
    for name, entry in manifest["modalities"].items():
        fp32 = _check_file(root, entry["file"], entry["sha256"], name)
        file_hashes[entry["file"]] = entry["sha256"]
        fp16 = None
        if (entry["fp16_file"] is None) != (entry["fp16_sha256"] is None):
            raise ModelDirError(f"{name}: fp16_file and fp16_sha256 must both be set or both null")
        if entry["fp16_file"] is not None:
            fp16 = _check_file(root, entry["fp16_file"], entry["fp16_sha256"], f"{name} (fp16)")
        graphs[name] = ModalityGraph(name=name, path=fp32, fp16_path=fp16,
                                     inputs=tuple(entry["inputs"]),
                                     outputs=tuple(entry["outputs"]),
                                     preprocessing=dict(entry["preprocessing"]))
    expected = compute_model_version(manifest, file_hashes)
    if manifest["model_version"] != expected:
        raise ModelDirError(f"model_version {manifest['model_version']} does not match the "
                            f"directory's content (recomputed {expected}); re-export the model")
    return ModelDir(path=root, manifest=manifest, graphs=graphs)
