"""Model directory checks and the ONNX Runtime encoder (padding, batching, providers, health)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from daemon_helpers import build_model_dir, reference_embedding

from avindex.daemon.encoder import CPU, CUDA, TRT, EncodeError, Encoder, choose_providers
from avindex.daemon.model_dir import (
    ModelDirError,
    compute_model_version,
    load_model_dir,
)


def _copy(model_dir, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(model_dir, dst)
    return dst


def _edit_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_valid_directory_loads_with_its_specs(model_dir):
    m = load_model_dir(model_dir)
    assert m.embedding_dim == 8 and m.distance == "Cosine" and set(m.graphs) == {"visual", "audio"}
    assert m.visual_spec().fps == 2.0 and m.visual_spec().size == 32
    assert m.audio_spec().sample_rate == 8000 and m.audio_spec().max_seconds == 4.0


def test_model_version_is_a_content_hash(model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    hashes = {v["file"]: v["sha256"] for v in manifest["modalities"].values()}
    version = compute_model_version(manifest, hashes)
    assert version == manifest["model_version"] and len(version) == 16
    changed = json.loads(json.dumps(manifest))
    changed["modalities"]["visual"]["preprocessing"]["fps"] = 4.0
    assert compute_model_version(changed, hashes) != version
    assert compute_model_version(manifest, {**hashes, "audio.onnx": "0" * 64}) != version
    # provenance and metrics do not change what a vector means
    changed = {**manifest, "metrics": {"map_mean": 0.5}, "created_at": "later"}
    assert compute_model_version(changed, hashes) == version


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda p: (p / "audio.onnx").unlink(), "audio: file audio.onnx .* is missing"),
        (lambda p: (p / "visual.onnx").write_bytes(b"tampered"), "visual: sha256 of visual.onnx"),
        (lambda p: (p / "manifest.json").write_text("{"), "not valid JSON"),
        (lambda p: (p / "manifest.json").unlink(), "no manifest.json"),
        (lambda p: _edit_manifest(p, lambda m: m.pop("embedding_dim")),
         "'embedding_dim' is a required property"),
        (lambda p: _edit_manifest(p, lambda m: m["modalities"]["visual"].update(
            file="../visual.onnx")), r"modalities.visual.file: '../visual.onnx' does not match"),
        (lambda p: _edit_manifest(p, lambda m: m["modalities"]["audio"]["preprocessing"].pop(
            "sample_rate")), "modalities.audio.preprocessing: 'sample_rate' is a required"),
        (lambda p: _edit_manifest(p, lambda m: m.update(model_version="0123456789abcdef")),
         "model_version 0123456789abcdef does not match .*recomputed"),
        (lambda p: _edit_manifest(p, lambda m: m["modalities"].update(text={})),
         "Additional properties are not allowed \\('text'"),
    ],
)
def test_broken_directories_are_refused_with_the_reason(model_dir, tmp_path, breakage, message):
    path = _copy(model_dir, tmp_path)
    breakage(path)
    with pytest.raises(ModelDirError, match=message):
        load_model_dir(path)


def test_provider_choice_prefers_tensorrt_then_cuda_then_cpu():
    gpu = [TRT, CUDA, CPU]
    wanted, notes = choose_providers(gpu, "auto", tensorrt=True)
    assert [w if isinstance(w, str) else w[0] for w in wanted] == [TRT, CUDA, CPU] and not notes
    wanted, _ = choose_providers(gpu, "auto", tensorrt=False)
    assert [w if isinstance(w, str) else w[0] for w in wanted] == [CUDA, CPU]
    assert choose_providers(gpu, "cpu", tensorrt=True) == ([CPU], [])
    wanted, notes = choose_providers([CPU], "cuda", tensorrt=True)
    assert wanted == [CPU] and any("TensorRT" in n for n in notes)
    assert any("CUDA" in n for n in notes)


def test_encoder_matches_reference_and_padding_does_not_change_results(model_dir):
    enc = Encoder(load_model_dir(model_dir), device="cpu", max_batch=3)
    assert enc.providers == {"visual": CPU, "audio": CPU}
    timings = enc.warm_up()
    assert set(timings) == {"visual", "audio"}
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (t, 32, 32, 3), dtype=np.uint8) for t in (1, 5, 8, 2, 3)]
    waves = [rng.uniform(-1, 1, n).astype(np.float32) for n in (10, 8000, 32000, 1, 500)]
    for modality, items in (("visual", clips), ("audio", waves)):
        batch = enc.embed(modality, items)  # 5 items at max_batch=3: two padded calls
        assert batch.embedding.shape == (5, 8) and batch.variance.shape == (5, 8)
        for i, item in enumerate(items):
            alone = enc.embed(modality, [item])
            np.testing.assert_allclose(batch.embedding[i], alone.embedding[0], atol=1e-5)
            ref, var = reference_embedding(modality, item)
            np.testing.assert_allclose(alone.embedding[0], ref, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(alone.variance[0], var, rtol=1e-4)


def test_single_modality_model_and_signature_check(tmp_path):
    audio_only = load_model_dir(build_model_dir(tmp_path / "a", modalities=("audio",)))
    enc = Encoder(audio_only, device="cpu")
    assert enc.modalities == ["audio"] and audio_only.visual_spec() is None
    # a graph whose output does not have the manifest's dimension is refused at load
    wrong = build_model_dir(tmp_path / "w", dim=8)
    _edit_manifest(wrong, lambda m: m.update(embedding_dim=16))
    manifest = json.loads((wrong / "manifest.json").read_text())
    manifest["model_version"] = compute_model_version(
        manifest, {v["file"]: v["sha256"] for v in manifest["modalities"].values()})
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EncodeError, match="8 dimensions, manifest says 16"):
        Encoder(load_model_dir(wrong), device="cpu")
