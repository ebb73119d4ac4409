"""Front-ends: known outputs of pretrained weights, spectrogram maths, padding invariance."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from avindex.daemon.media import VisualSpec, decode_media
from avindex.training.features import pad_audio
from avindex.training.frontends import (
    build_audio_frontend,
    build_visual_frontend,
    default_audio_spec,
    default_visual_spec,
)
from avindex.training.frontends.efficientnet import MissingWeightsError
from avindex.training.frontends.spectrogram import PowerMelSpectrogram, mel_filterbank

GRACE_HOPPER = (
    Path(importlib.util.find_spec("matplotlib").origin).parent
    / "mpl-data" / "sample_data" / "grace_hopper.jpg"
)
MILITARY_UNIFORM = 652  # ImageNet class of the matplotlib sample portrait


@pytest.fixture(scope="module")
def visual():
    return build_visual_frontend(default_visual_spec(size=224))


@pytest.fixture(scope="module")
def visual_head():
    return build_visual_frontend(default_visual_spec(size=224, pooling="head"))


def test_efficientnet_weights_classify_a_real_photo(visual):
    frames = decode_media(GRACE_HOPPER, VisualSpec(fps=1, size=224), None).frames  # (1, 224, ...)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = (x - visual.mean) / visual.std
    with torch.inference_mode():
        logits = visual.net(x)
    assert int(logits.argmax()) == MILITARY_UNIFORM


@pytest.mark.parametrize(("pooling", "dim"), [("stages", 704), ("head", 1280)])
def test_visual_padding_does_not_change_an_item(pooling, dim, visual, visual_head):
    frontend = visual if pooling == "stages" else visual_head
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 4, 224, 224, 3), generator=gen, dtype=torch.uint8)
    counts = torch.tensor([4, 2, 1])
    with torch.inference_mode():
        batch = frontend(frames, counts)
        alone = torch.cat([frontend(frames[i : i + 1, : int(n)], counts[i : i + 1])
                           for i, n in enumerate(counts)])
    assert batch.shape == (3, dim) and frontend.output_dim == dim
    assert torch.allclose(batch, alone, atol=1e-4)


def test_stage_pooling_is_the_maximum_of_stages_4_to_7(visual):
    """Reference: the package's own forward pass, block outputs caught by hooks at each point
    where the channel count changes for the last four times (the ends of stages 4-7)."""
    frames = decode_media(GRACE_HOPPER, VisualSpec(fps=1, size=224), None).frames
    net = visual.net
    widths = [block._bn2.num_features for block in net._blocks]
    ends = [i for i in range(len(widths)) if i == len(widths) - 1 or widths[i + 1] != widths[i]]
    caught = {}
    hooks = [net._blocks[i].register_forward_hook(
        lambda _m, _i, out, i=i: caught.__setitem__(i, out.amax(dim=(2, 3)))) for i in ends[-4:]]
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        net.extract_features((x - visual.mean) / visual.std)
        got = visual(torch.from_numpy(frames)[None], torch.tensor([1]))
    for hook in hooks:
        hook.remove()
    want = torch.cat([caught[i] for i in ends[-4:]], dim=1)
    assert [caught[i].shape[1] for i in ends[-4:]] == [80, 112, 192, 320]
    assert torch.allclose(got, want, atol=1e-5)


def test_a_spec_saved_without_pooling_rebuilds_the_head_features():
    """Feature files and models made before `pooling` existed store {"size": S} only."""
    spec = default_visual_spec(size=128)
    old = type(spec)(spec.modality, spec.name, {"size": 128}, spec.decode)
    assert build_visual_frontend(old).output_dim == 1280
    assert build_visual_frontend(spec).output_dim == 704


def test_mel_filterbank_shapes_and_normalisation():
    peak = mel_filterbank(16000, 512, 40, 0.0, 8000.0)
    assert peak.shape == (40, 257)
    assert (peak.max(axis=1) <= 1.0).all() and (peak.max(axis=1) > 0.5).all()  # triangles
    assert (peak.sum(axis=1) > 0).all()  # no empty band
    unit = mel_filterbank(16000, 512, 40, 0.0, 8000.0, unit_sum=True)
    assert np.allclose(unit.sum(axis=1), 1.0, atol=1e-5)


def test_power_spectrogram_matches_numpy_fft():
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(2000).astype(np.float32)
    spec = PowerMelSpectrogram(16000, 256, 100, 8, 0.0, 8000.0)
    spec.mel = torch.eye(129)[:, :]  # identity "filterbank" to read the raw power spectrum
    power, frames = spec(torch.from_numpy(wave)[None], torch.tensor([2000]))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(256) / 256)
    expected = np.abs(np.fft.rfft(wave[300:556] * window)) ** 2  # frame 3 starts at 3 * hop
    assert int(frames[0]) == (2000 - 256) // 100 + 1
    assert np.allclose(power[0, :, 3].numpy(), expected, rtol=1e-3, atol=1e-2)


def test_logmel_padding_invariance_and_loudness_invariance():
    frontend = build_audio_frontend(default_audio_spec("logmel"))
    gen = torch.Generator().manual_seed(1)
    wave = torch.randn((3, 24000), generator=gen) * 0.1
    counts = torch.tensor([24000, 9000, 300])
    with torch.inference_mode():
        batch = frontend(wave, counts)
        alone = torch.cat([frontend(wave[i : i + 1, : int(n)], counts[i : i + 1])
                           for i, n in enumerate(counts)])
        louder = frontend(wave[:1] * 4.0, counts[:1])
    assert batch.shape == (3, frontend.output_dim)
    assert torch.allclose(batch, alone, atol=1e-4)
    assert torch.allclose(louder, batch[:1], atol=1e-3)  # gain is normalised away


def test_logmel_tells_word_order_apart():
    """Two tones in opposite order share mean/std but differ in the segment means."""
    sr = 16000
    t = np.arange(sr // 2) / sr
    low, high = np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 2000 * t)
    a = torch.tensor(np.concatenate([low, high]), dtype=torch.float32)[None] * 0.3
    b = torch.tensor(np.concatenate([high, low]), dtype=torch.float32)[None] * 0.3
    frontend = build_audio_frontend(default_audio_spec("logmel"))
    n = torch.tensor([sr])
    with torch.inference_mode():
        fa, fb = frontend(a, n), frontend(b, n)
    m = 64
    assert torch.allclose(fa[:, :m], fb[:, :m], atol=0.25)  # same weighted mean spectrum
    assert (fa[:, 2 * m :] - fb[:, 2 * m :]).abs().max() > 1.0  # different order


def _aisfx_or_skip():
    try:
        return build_audio_frontend(default_audio_spec("aisfx"))
    except MissingWeightsError as exc:  # scripts/setup.sh fetches them; say so if it could not
        pytest.skip(f"aiSFX weights unavailable here: {exc}")


def test_aisfx_loads_its_checkpoint_and_ignores_padding():
    frontend = _aisfx_or_skip()
    gen = torch.Generator().manual_seed(2)
    wave = torch.randn((2, 44100 * 3), generator=gen) * 0.1
    counts = torch.tensor([44100 * 3, 44100])
    with torch.inference_mode():
        batch = frontend(wave, counts)
        alone = frontend(wave[1:, :44100], counts[1:])
    assert batch.shape == (2, 512)
    assert torch.allclose(batch[1:], alone, atol=1e-4)
    assert float(batch.abs().sum()) > 0


def test_missing_aisfx_weights_name_what_to_install(monkeypatch, tmp_path):
    from avindex.training.frontends import aisfx

    monkeypatch.setenv("AVINDEX_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("AVINDEX_AISFX_CHECKPOINT", raising=False)
    monkeypatch.setattr(aisfx.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingWeightsError, match="pip download --no-deps aisfx"):
        aisfx.read_aisfx_checkpoint()


@pytest.fixture(scope="module")
def speech():
    return build_audio_frontend(default_audio_spec("speech"))


def _speech_like(seconds: float, seed: int) -> np.ndarray:
    """Noise with a louder voiced burst (a 150 Hz pulse train through noise) in the middle."""
    rng = np.random.default_rng(seed)
    n = int(16000 * seconds)
    wave = rng.standard_normal(n) * 0.003
    t = np.arange(n // 3) / 16000
    burst = np.sign(np.sin(2 * np.pi * 150 * t)) * rng.standard_normal(n // 3) * 0.2
    wave[n // 3 : n // 3 + burst.size] += burst
    return wave.astype(np.float32)


def test_speech_frontend_equals_the_wheels_onnx_graphs(speech):
    """Our torch copy of melspectrogram.onnx + embedding_model.onnx computes what they compute,
    run the way openwakeword runs them (int16 scale, x/10 + 2, 76-frame windows every 8)."""
    import onnxruntime as ort

    from avindex.training.frontends.speech import read_speech_graphs

    graphs = read_speech_graphs()
    mel = ort.InferenceSession(graphs["melspectrogram.onnx"], providers=["CPUExecutionProvider"])
    net = ort.InferenceSession(graphs["embedding_model.onnx"], providers=["CPUExecutionProvider"])
    wave = _speech_like(2.5, 3)
    spec = mel.run(None, {"input": (wave * 32768.0)[None]})[0].squeeze() / 10 + 2  # (F, 32)
    windows = np.stack([spec[i : i + 76] for i in range(0, spec.shape[0] - 75, 8)])
    want = net.run(None, {"input_1": windows[..., None].astype(np.float32)})[0].reshape(-1, 96)
    with torch.inference_mode():
        ours, frames, _ = speech.mel(torch.from_numpy(wave)[None], torch.tensor([wave.size]))
        emb, mask, _ = speech.windows(torch.from_numpy(wave)[None], torch.tensor([wave.size]))
    assert int(frames[0]) == spec.shape[0]
    assert np.abs(ours[0, : spec.shape[0]].numpy() - spec).max() < 1e-4
    assert int(mask.sum()) == len(want)
    assert np.abs(emb[0, : len(want)].numpy() - want).max() < 1e-3 * np.abs(want).max()


def test_speech_frontend_shape_determinism_and_padding(speech):
    waves = [_speech_like(s, i) for i, s in enumerate((3.0, 1.2, 0.4))]  # last < one window
    batch_in, counts = pad_audio(waves)
    with torch.inference_mode():
        batch = speech(batch_in, counts)
        again = speech(batch_in, counts)
        alone = torch.cat([speech(torch.from_numpy(w)[None], torch.tensor([w.size]))
                           for w in waves])
    assert batch.shape == (3, speech.output_dim) == (3, 288)
    assert torch.isfinite(batch).all()
    assert torch.equal(batch, again)
    assert torch.allclose(batch, alone, atol=1e-4)
    assert (batch[0] - batch[1]).abs().max() > 0.1  # different clips, different vectors


def test_speech_frontend_without_the_wheel_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("AVINDEX_WEIGHTS_DIR", str(tmp_path))
    real = importlib.util.find_spec  # hide an installed openwakeword, if any
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openwakeword" else real(name, *a))
    with pytest.raises(MissingWeightsError, match=r"setup\.sh.*--no-deps openwakeword==0\.5\.1"):
        build_audio_frontend(default_audio_spec("speech"))
