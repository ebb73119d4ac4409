"""The paper's extractors (VGG19 frames, VGGish sound) from weights files the user supplies.

Weights files are written here in the exact published layouts (torchvision's vgg19, torchvggish)
from seeded, randomly initialised modules: real weights cannot be downloaded on this machine,
and the checks below (layout, preprocessing against VGGish's reference maths, padding, ONNX
parity through the exporter) do not depend on the values.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from avindex.daemon.media import decode_media
from avindex.exporters.chains import AudioChain, VisualChain
from avindex.exporters.writer import export_model_dir, frontend_specs
from avindex.training.features import extract_features, pad_audio, pad_frames
from avindex.training.features_h5 import load_features
from avindex.training.frontends import build_audio_frontend, build_visual_frontend
from avindex.training.frontends.inception import InceptionV3Frames, InceptionV3Net
from avindex.training.frontends.paper import inception_v3_spec, vgg19_spec, vggish_spec
from avindex.training.frontends.user_weights import WeightsFileError
from avindex.training.frontends.vgg19 import VGG19Frames, VGG19Net
from avindex.training.frontends.vggish import VGGishEmbedding, VGGishNet
from avindex.training.media_manifest import read_media_manifest
from avindex.training.model import VAECCA, VAECCAConfig
from avindex.training.onnx_graphs import onnx_session
from avindex.training.train import TrainConfig, load_checkpoint, train

SIZE = 64  # frame size in these tests: VGG19 runs at any size; 224 is the default


@pytest.fixture(autouse=True, scope="module")
def two_torch_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """torchvision's VGG initialisation (He-normal convolutions, N(0, 0.01) linear layers):
    random, but activations keep their scale through the layers as trained weights do."""
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0.0, 0.01)
            torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, as trained ones are
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """{'vgg19': features-only torchvision file, 'vggish': torchvggish file with PCA, ...}."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    vgg = _trained_like(VGG19Net().features).state_dict()  # torchvision's, less the classifier
    torch.save({f"features.{k}": v for k, v in vgg.items()}, root / "vgg19_features.pth")
    vggish = _trained_like(VGGishNet()).state_dict()
    torch.save(vggish, root / "vggish_plain.pth")
    gen = torch.Generator().manual_seed(1)
    pca = {"pproc.pca_matrix": torch.randn((128, 128), generator=gen) * 2.0,
           "pproc.pca_means": torch.randn((128, 1), generator=gen) * 0.01}
    torch.save(vggish | pca, root / "vggish.pth")
    np.savez(root / "pca.npz", pca_eigen_vectors=pca["pproc.pca_matrix"].numpy(),
             pca_means=pca["pproc.pca_means"].numpy().reshape(-1))
    return {"vgg19": root / "vgg19_features.pth", "vggish": root / "vggish.pth",
            "vggish_plain": root / "vggish_plain.pth", "pca": root / "pca.npz", "root": root,
            "vgg_state": {f"features.{k}": v for k, v in vgg.items()}, "vggish_state": vggish}


# ---- layouts: accepted exactly, everything else refused with a message that says why ---------


def test_networks_have_torchvisions_parameter_counts():
    """torchvision's published sizes (weights meta "num_params") of vgg19 and inception_v3."""
    with torch.device("meta"):
        vgg, inception = VGG19Net(), InceptionV3Net(with_heads=True)
    assert sum(p.numel() for p in vgg.parameters()) == 143_667_240
    assert sum(p.numel() for p in inception.parameters()) == 27_161_264


def test_vgg19_layout_errors_name_the_problem(weights):
    root, state = weights["root"], weights["vgg_state"]
    with pytest.raises(WeightsFileError, match=r"missing classifier\.0\.bias, classifier\.0\.w"):
        VGG19Frames(str(weights["vgg19"]), layer="fc7")  # fc7 needs the classifier
    bad_shape = dict(state)
    bad_shape["features.0.weight"] = torch.zeros((64, 1, 3, 3))
    torch.save(bad_shape | {"head.weight": torch.zeros(3)}, root / "bad.pth")
    with pytest.raises(WeightsFileError) as err:
        VGG19Frames(str(root / "bad.pth"), layer="pool5")
    assert "unexpected head.weight" in str(err.value)
    assert "wrong shape features.0.weight (64, 1, 3, 3) (expected (64, 3, 3, 3))" in str(err.value)
    assert "torchvision's vgg19 names" in str(err.value)  # says what the file should be
    (root / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsFileError, match="could not be read as a tensor file"):
        VGG19Frames(str(root / "junk.pth"), layer="pool5")
    with pytest.raises(WeightsFileError, match="does not exist"):
        vgg19_spec(root / "absent.pth")


def test_vgg19_fc7_from_a_full_torchvision_file(weights, tmp_path):
    """The default layer: fc6 and fc7 (with ReLUs) after the 7x7 average pool, 4096 per frame."""
    torch.manual_seed(2)
    net = _trained_like(VGG19Net())
    torch.save(net.state_dict(), tmp_path / "vgg19.pth")
    frontend = VGG19Frames(str(tmp_path / "vgg19.pth"), layer="fc7", size=SIZE)
    frames = torch.randint(0, 256, (2, 2, SIZE, SIZE, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        got = frontend(frames, torch.tensor([2, 1]))
        x = frames.reshape(4, SIZE, SIZE, 3).permute(0, 3, 1, 2).float()
        x = (x - frontend.mean) / frontend.std
        pooled = torch.nn.functional.adaptive_avg_pool2d(net.features(x), 7).flatten(1)
        fc7 = torch.relu(net.classifier[3](torch.relu(net.classifier[0](pooled)))).reshape(2, 2, -1)
    assert got.shape == (2, 4096)
    assert torch.allclose(got[0], fc7[0].mean(0), atol=1e-5)
    assert torch.allclose(got[1], fc7[1, 0], atol=1e-5)  # the padding frame is left out


def test_vggish_layout_errors_and_changed_file(weights, tmp_path):
    state = weights["vggish_state"]
    torch.save({k: v for k, v in state.items() if k != "embeddings.4.bias"}, tmp_path / "a.pth")
    with pytest.raises(WeightsFileError, match=r"missing embeddings\.4\.bias.*torchvggish"):
        VGGishEmbedding(str(tmp_path / "a.pth"))
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # not plain tensors
    with pytest.raises(WeightsFileError, match="could not be read"):
        VGGishEmbedding(str(tmp_path / "pickled.pth"))
    with pytest.raises(WeightsFileError, match="needs PCA parameters"):
        VGGishEmbedding(str(weights["vggish_plain"]), postprocess="pca")
    spec = vggish_spec(weights["vggish_plain"])
    assert spec.params["postprocess"] == "none"  # no PCA in the file, none given
    assert vggish_spec(weights["vggish"]).params["postprocess"] == "pca"
    changed = dict(spec.params, weights=str(tmp_path / "a.pth"))
    with pytest.raises(WeightsFileError, match="sha256"):
        VGGishEmbedding(**changed)


def test_cli_reports_a_bad_weights_file_without_a_traceback(weights, tmp_path, capsys):
    from avindex.tools.cli import main

    (tmp_path / "m.csv").write_text("path,label\nnone.mp4,a\n")
    args = ["data", "features", "--media", str(tmp_path / "m.csv"), "--out", str(tmp_path / "f.h5"),
            "--visual", "vgg19", "--visual-weights", str(tmp_path / "missing.pth")]
    assert main(args) == 2
    assert "VGG19 weights file" in capsys.readouterr().err
    assert main(args[:-2]) == 2  # vgg19 without a weights file
    assert "--visual-weights FILE" in capsys.readouterr().err


# ---- VGGish preprocessing and network against the reference definitions ---------------------


def _reference_examples(wave: np.ndarray) -> np.ndarray:
    """VGGish's vggish_input.waveform_to_examples (mel_features.py), in numpy float64."""
    win, hop, fft = 400, 160, 512
    n = 1 + (len(wave) - win) // hop
    frames = np.stack([wave[i * hop : i * hop + win] for i in range(n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    spectrum = np.abs(np.fft.rfft(frames * window, fft))
    to_mel = lambda hz: 1127.0 * np.log1p(np.asarray(hz) / 700.0)  # noqa: E731
    bins = to_mel(np.linspace(0.0, 8000.0, fft // 2 + 1))
    edges = np.linspace(to_mel(125.0), to_mel(7500.0), 64 + 2)
    matrix = np.zeros((fft // 2 + 1, 64))
    for i in range(64):
        lo, centre, hi = edges[i : i + 3]
        matrix[:, i] = np.maximum(0.0, np.minimum((bins - lo) / (centre - lo),
                                                  (hi - bins) / (hi - centre)))
    matrix[0, :] = 0.0
    logmel = np.log(spectrum @ matrix + 0.01)
    count = 1 + (n - 96) // 96
    return np.stack([logmel[i * 96 : (i + 1) * 96] for i in range(count)])


def test_vggish_matches_the_reference_preprocessing_and_torchvggish_forward(weights):
    frontend = VGGishEmbedding(str(weights["vggish"]), postprocess="pca")
    rng = np.random.default_rng(3)
    wave = (np.sin(2 * np.pi * 440 * np.arange(40000) / 16000) * 0.3
            + rng.normal(0.0, 0.02, 40000)).astype(np.float32)
    ref = _reference_examples(wave.astype(np.float64))  # (2, 96, 64): 2.5 s -> 2 examples
    with torch.inference_mode():
        blocks, n_examples = frontend.examples(torch.from_numpy(wave)[None], torch.tensor([40000]))
        got = frontend(torch.from_numpy(wave)[None], torch.tensor([40000]))
        # torchvggish: features, transpose(1, 3), transpose(1, 2), flatten, embeddings, PCA
        x = torch.from_numpy(ref).float().unsqueeze(1)
        raw = frontend.net.features(x).transpose(1, 3).transpose(1, 2).contiguous()
        raw = frontend.net.embeddings(raw.view(raw.shape[0], -1))
        pca = torch.load(weights["vggish"], weights_only=True)
        whitened = torch.mm(pca["pproc.pca_matrix"], raw.T - pca["pproc.pca_means"]).T
        want = ((whitened.clamp(-2.0, 2.0) + 2.0) * (255.0 / 4.0)).mean(0)
    assert int(n_examples) == 2 and blocks.shape == (1, 2, 96, 64)
    assert np.abs(blocks[0].numpy() - ref).max() < 2e-3  # float32 DFT vs float64 FFT
    assert got.shape == (1, 128)
    assert torch.allclose(got[0], want, atol=0.05)  # 0..255 scale
    assert float(got.std()) > 1.0  # PCA spreads the values (not all clipped to one end)


def test_vggish_pca_file_equals_pca_in_the_weights_file(weights):
    wave = torch.randn((1, 20000), generator=torch.Generator().manual_seed(4)) * 0.1
    n = torch.tensor([20000])
    inside = VGGishEmbedding(str(weights["vggish"]), postprocess="pca")
    separate = VGGishEmbedding(str(weights["vggish_plain"]), pca=str(weights["pca"]),
                               postprocess="pca")
    with torch.inference_mode():
        assert torch.allclose(inside(wave, n), separate(wave, n), atol=1e-4)


def test_padding_does_not_change_an_item(weights):
    audio = VGGishEmbedding(str(weights["vggish"]), postprocess="pca")
    wave = torch.randn((3, 32000), generator=torch.Generator().manual_seed(5)) * 0.1
    counts = torch.tensor([32000, 17000, 4000])  # 2 examples, 1 example, shorter than one
    visual = VGG19Frames(str(weights["vgg19"]), layer="pool5", size=SIZE)
    frames = torch.randint(0, 256, (2, 2, SIZE, SIZE, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(6))
    lengths = torch.tensor([2, 1])
    with torch.inference_mode():
        batch = audio(wave, counts)
        alone = torch.cat([audio(wave[i : i + 1, : int(c)], counts[i : i + 1])
                           for i, c in enumerate(counts)])
        vbatch = visual(frames, lengths)
        valone = torch.cat([visual(frames[i : i + 1, : int(c)], lengths[i : i + 1])
                            for i, c in enumerate(lengths)])
    assert batch.shape == (3, 128) and vbatch.shape == (2, 512)
    assert torch.allclose(batch, alone, atol=1e-3)  # 0..255 scale
    assert torch.allclose(vbatch, valone, atol=1e-4 * float(vbatch.abs().max()))


# ---- features -> checkpoint -> exporter: the manifest and ONNX parity on real clips ----------


@pytest.fixture(scope="module")
def exported(tiny_corpus, weights, tmp_path_factory):
    """A model directory exported from features that VGG19 (pool5) and VGGish made."""
    work = tmp_path_factory.mktemp("paper")
    listed = read_media_manifest(tiny_corpus)
    items = listed.items
    chosen = [i for split, n in (("train", 6), ("val", 2), ("test", 3))
              for i in [i for i in items if i.split == split][:n]]
    with (work / "media.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "id"])
        writer.writerows([str(i.path), listed.class_names[i.label], i.split, i.media_id]
                         for i in chosen)
    visual = vgg19_spec(weights["vgg19"], layer="pool5", size=SIZE, max_frames=2)
    audio = vggish_spec(weights["vggish"], max_seconds=4.0)
    extract_features(work / "media.csv", work / "features.h5", visual, audio, workers=1,
                     batch_size=8)
    cfg = TrainConfig(epochs=2, patience=0, batch_size=4, hidden_dim=32, latent_dim=8,
                      progress=False)
    train(load_features(work / "features.h5"), cfg, work / "run")
    out = work / "model"
    export_model_dir(work / "run" / "checkpoint.pt", out, fp16=False)
    return out, work / "run" / "checkpoint.pt", chosen


def test_manifest_names_the_user_supplied_files(exported, weights):
    from avindex.daemon.model_dir import sha256_file

    manifest = json.loads((exported[0] / "manifest.json").read_text())
    parts = {p["used_for"]: p for p in manifest["pretrained"]}
    assert parts["visual"]["file"] == str(weights["vgg19"].resolve())
    assert parts["visual"]["sha256"] == sha256_file(weights["vgg19"])
    assert parts["audio"]["file"] == str(weights["vggish"].resolve())
    assert parts["audio"]["sha256"] == sha256_file(weights["vggish"])
    assert all("user's responsibility" in p["licence"] for p in parts.values())
    assert manifest["modalities"]["visual"]["preprocessing"]["frontend"] == "vgg19"
    assert manifest["modalities"]["audio"]["preprocessing"]["sample_rate"] == 16000


@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_onnx_equals_pytorch_on_real_clips(modality, exported):
    out, checkpoint, chosen = exported
    model, ckpt = load_checkpoint(checkpoint)
    visual_spec, audio_spec = frontend_specs(ckpt)
    media = [decode_media(i.path, visual_spec.visual_spec(), audio_spec.audio_spec())
             for i in chosen[-3:]]
    if modality == "visual":
        chain = VisualChain(build_visual_frontend(visual_spec), model.eval())
        inputs = pad_frames([m.frames for m in media])
    else:
        chain = AudioChain(build_audio_frontend(audio_spec), model.eval())
        inputs = pad_audio([m.audio for m in media])
    session = onnx_session(out / f"{modality}.onnx")
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
    with torch.inference_mode():
        want = chain(*inputs)
    assert len(set(inputs[1].tolist())) > 1 or modality == "visual"  # real, unequal lengths
    for g, w in zip(got, want, strict=True):
        assert g.shape == tuple(w.shape)
        assert np.abs(g - w.numpy()).max() <= 1e-4


# ---- Inception-v3 --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """torchvision's inception_v3 layout without the unused heads and batch-norm counters."""
    torch.manual_seed(8)
    state = _trained_like(InceptionV3Net()).state_dict()
    path = tmp_path_factory.mktemp("inception") / "inception_v3.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    return path


def test_inception_layout_and_padding(inception_file, tmp_path):
    state = torch.load(inception_file, weights_only=True)
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(WeightsFileError, match=r"missing Mixed_7c\.branch_pool\.conv\.weight"):
        InceptionV3Frames(str(tmp_path / "cut.pth"))
    frontend = InceptionV3Frames(str(inception_file), size=96)
    frames = torch.randint(0, 256, (2, 2, 96, 96, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        batch = frontend(frames, torch.tensor([2, 1]))
        alone = frontend(frames[1:, :1], torch.tensor([1]))
    assert batch.shape == (2, 2048)
    assert torch.allclose(batch[1:], alone, atol=1e-4 * float(alone.abs().max()))


def _visual_chain_parity(spec, visual_dim: int, tiny_corpus, tmp_path) -> None:
    """export_chain of front-end + a small encoder; ONNX == PyTorch on 2 real clips."""
    from avindex.training.onnx_graphs import export_chain

    torch.manual_seed(10)
    model = VAECCA(VAECCAConfig(visual_dim=visual_dim, audio_dim=128, hidden_dim=32, latent_dim=8))
    chain = VisualChain(build_visual_frontend(spec), model.eval())
    path = export_chain(chain, "visual", spec.decode, tmp_path / "visual.onnx")
    items = [i for i in read_media_manifest(tiny_corpus).items if i.split == "test"][:2]
    media = [decode_media(i.path, spec.visual_spec(), None) for i in items]
    inputs = pad_frames([m.frames for m in media])
    session = onnx_session(path)
    got = session.run(None, {"frames": inputs[0].numpy(), "num_frames": inputs[1].numpy()})
    with torch.inference_mode():
        want = chain(*inputs)
    for g, w in zip(got, want, strict=True):
        assert np.abs(g - w.numpy()).max() <= 1e-4


@pytest.mark.slow  # exporting Inception-v3's graph takes about a minute on 2 cores
def test_inception_chain_onnx_equals_pytorch_on_real_clips(inception_file, tiny_corpus, tmp_path):
    spec = inception_v3_spec(inception_file, size=96, max_frames=3)
    _visual_chain_parity(spec, 2048, tiny_corpus, tmp_path)


@pytest.mark.slow  # a 575 MB weights file and a 560 MB graph
def test_vgg19_fc7_chain_at_224_onnx_equals_pytorch_on_real_clips(tiny_corpus, tmp_path):
    torch.manual_seed(11)
    torch.save(_trained_like(VGG19Net()).state_dict(), tmp_path / "vgg19.pth")
    spec = vgg19_spec(tmp_path / "vgg19.pth", layer="fc7", size=224, max_frames=3)
    _visual_chain_parity(spec, 4096, tiny_corpus, tmp_path)
