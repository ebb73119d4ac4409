"""Exported ONNX graphs equal the PyTorch chains on real decoded clips (issue 3 parity)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from avindex.daemon.media import decode_media
from avindex.exporters.chains import AudioChain, VisualChain
from avindex.exporters.writer import frontend_specs
from avindex.training.features import pad_audio, pad_frames
from avindex.training.frontends import build_audio_frontend, build_visual_frontend
from avindex.training.media_manifest import read_media_manifest
from avindex.training.onnx_graphs import onnx_session
from avindex.training.train import load_checkpoint


@pytest.fixture(scope="module")
def decoded(tiny_corpus, tiny_checkpoint):
    """Six real clips of the test split decoded as the daemon decodes them."""
    _, ckpt = load_checkpoint(tiny_checkpoint)
    visual_spec, audio_spec = frontend_specs(ckpt)
    items = [i for i in read_media_manifest(tiny_corpus).items if i.split == "test"][:6]
    return [decode_media(i.path, visual_spec.visual_spec(), audio_spec.audio_spec())
            for i in items]


@pytest.fixture(scope="module")
def chains(tiny_checkpoint):
    model, ckpt = load_checkpoint(tiny_checkpoint)
    visual_spec, audio_spec = frontend_specs(ckpt)
    return {
        "visual": VisualChain(build_visual_frontend(visual_spec), model.eval()),
        "audio": AudioChain(build_audio_frontend(audio_spec), model.eval()),
    }


def _inputs(modality, media):
    if modality == "visual":
        return pad_frames([m.frames for m in media])
    return pad_audio([m.audio for m in media])


def _run(path, inputs):
    session = onnx_session(path)
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})


@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_fp32_graph_equals_pytorch_on_real_clips(modality, decoded, chains, tiny_model_dir):
    inputs = _inputs(modality, decoded)
    got = _run(tiny_model_dir / f"{modality}.onnx", inputs)
    with torch.inference_mode():
        mu, var = (t.numpy() for t in chains[modality](*inputs))
    assert got[0].shape == mu.shape and got[1].shape == var.shape
    assert np.abs(got[0] - mu).max() <= 1e-4
    # The variance is exp(logvar) and spans orders of magnitude: compare it relatively, in log
    # space, as the exporter's own parity check does.
    assert np.abs(np.log(got[1]) - np.log(var)).max() <= 1e-4


@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_fp16_graph_is_close_in_cosine(modality, decoded, chains, tiny_model_dir):
    inputs = _inputs(modality, decoded)
    got = _run(tiny_model_dir / f"{modality}.fp16.onnx", inputs)[0]
    with torch.inference_mode():
        want = chains[modality](*inputs)[0].numpy()
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.999


@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_batch_equals_items_one_by_one(modality, decoded, tiny_model_dir):
    path = tiny_model_dir / f"{modality}.onnx"
    batch = _run(path, _inputs(modality, decoded))[0]
    alone = np.concatenate([_run(path, _inputs(modality, [m]))[0] for m in decoded])
    assert np.abs(batch - alone).max() <= 1e-4


def test_manifest_describes_the_graphs(tiny_model_dir):
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert manifest["embedding_dim"] == 64
    assert len(manifest["model_version"]) == 16
    visual, audio = manifest["modalities"]["visual"], manifest["modalities"]["audio"]
    assert visual["inputs"] == ["frames", "num_frames"]
    assert audio["inputs"] == ["waveform", "num_samples"]
    assert {"fps", "size", "max_frames"} <= set(visual["preprocessing"])
    assert {"sample_rate", "max_seconds"} <= set(audio["preprocessing"])
    licences = {p["licence"] for p in manifest["pretrained"]}
    assert "Apache-2.0" in licences  # EfficientNet-Lite0
    session = onnx_session(tiny_model_dir / "visual.onnx")
    assert [i.name for i in session.get_inputs()] == ["frames", "num_frames"]
    assert [o.name for o in session.get_outputs()] == ["embedding", "variance"]


def _copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_broken_model_directories_are_refused(tiny_model_dir, tmp_path):
    from avindex.daemon.model_dir import ModelDirError, load_model_dir

    missing = _copy(tiny_model_dir, tmp_path / "a")
    (missing / "audio.onnx").unlink()
    with pytest.raises(ModelDirError, match=r"audio\.onnx"):
        load_model_dir(missing)

    tampered = _copy(tiny_model_dir, tmp_path / "b")
    with (tampered / "visual.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelDirError, match=r"(?i)sha256|hash"):
        load_model_dir(tampered)

    bad = _copy(tiny_model_dir, tmp_path / "c")
    manifest = json.loads((bad / "manifest.json").read_text())
    del manifest["embedding_dim"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="embedding_dim"):
        load_model_dir(bad)
