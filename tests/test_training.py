"""Training loop, checkpoints, baselines and the train/evaluate command lines (small and fast)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from avindex.tools.cli import main as cli_main
from avindex.training.compare import compare, format_table
from avindex.training.features_h5 import FeatureSet, Split, save_features
from avindex.training.linear_cca import LinearCCA
from avindex.training.model import VAECCA, VAECCAConfig
from avindex.training.train import (
    TrainConfig,
    batches,
    load_checkpoint,
    stratified_split,
    train,
)

CLASSES = 4


def synthetic(seed: int = 0, n_train: int = 240, n_test: int = 120, noise: float = 0.6,
              with_val: bool = False) -> FeatureSet:
    """Separable two-view data: class means mixed into each modality by a random map, with
    features on different scales (standardisation must cope) and Gaussian noise."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(CLASSES, 6)) * 2.0
    pv, pa = rng.normal(size=(6, 24)), rng.normal(size=(6, 12))
    scale_v = rng.uniform(0.1, 50, 24)

    def split(n: int) -> Split:
        y = np.arange(n) % CLASSES
        s = means[y] + 0.3 * rng.normal(size=(n, 6))
        v = (np.tanh(s @ pv) + noise * rng.normal(size=(n, 24))) * scale_v + 7.0
        a = s @ pa + noise * rng.normal(size=(n, 12))
        return Split(v, a, y, [f"c{i}" for i in range(n)])

    val = split(60) if with_val else None
    return FeatureSet(split(n_train), split(n_test), val=val, attrs={"corpus": "synthetic"})


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models: with 2+ OpenMP threads on a busy machine each step can take 100x longer
    (threads spin-wait for cores other processes hold)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


FAST = TrainConfig(epochs=25, patience=8, batch_size=32, lr=1e-3, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    features = synthetic()
    return features, train(features, FAST, out), out


# ---- data handling -------------------------------------------------------------------------


def test_stratified_split_is_seeded_disjoint_and_per_class():
    split = synthetic(n_train=200).train
    tr, val = stratified_split(split, 0.1, seed=3)
    tr2, val2 = stratified_split(split, 0.1, seed=3)
    assert val.ids == val2.ids and tr.ids == tr2.ids
    assert set(tr.ids).isdisjoint(val.ids) and len(tr) + len(val) == 200
    assert np.bincount(val.labels).tolist() == [5] * CLASSES  # 10% of 50 per class
    _, val3 = stratified_split(split, 0.1, seed=4)
    assert val3.ids != val.ids


def test_batches_are_shuffled_and_cover_the_data():
    gen = torch.Generator().manual_seed(0)
    first, second = batches(100, 32, gen), batches(100, 32, gen)
    assert [len(b) for b in first] == [32, 32, 32]  # partial last batch dropped
    assert torch.cat(first).tolist() != torch.cat(second).tolist()
    assert torch.cat(first).tolist() != list(range(96))
    assert len(set(torch.cat(first).tolist())) == 96
    assert [len(b) for b in batches(20, 32, gen)] == [20]  # fewer items than a batch: one batch


def test_file_validation_split_is_used_when_present():
    features = synthetic(with_val=True)
    result = train(features, replace(FAST, epochs=2, patience=0), None)
    assert result.checkpoint["data_sizes"] == {"train": 240, "val": 60, "test": 120}


# ---- model ---------------------------------------------------------------------------------


def test_model_structure_follows_the_authors():
    m = VAECCA(VAECCAConfig(visual_dim=1024, audio_dim=128, num_classes=10))
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters() if n.endswith("weight")}
    assert shapes == {
        "visual_in.weight": (512, 1024), "audio_in.weight": (512, 128),
        "shared.weight": (64, 512), "mu.weight": (64, 64), "logvar.weight": (64, 64),
        "classifier.weight": (10, 64), "decoder.weight": (512, 64),
        "visual_out.weight": (1024, 512), "audio_out.weight": (128, 512),
    }
    ae = VAECCA(VAECCAConfig(variational=False))
    assert ae.logvar is None
    mu, logvar = ae.encode_audio(torch.randn(3, 128))
    assert mu.shape == (3, 64) and torch.equal(logvar, torch.zeros(3, 64))


def test_inference_uses_mu_and_training_samples():
    torch.manual_seed(0)
    m = VAECCA(VAECCAConfig(visual_dim=5, audio_dim=3, num_classes=2))
    xv, xa = torch.randn(4, 5), torch.randn(4, 3)
    m.eval()
    v, _ = m(xv, xa)
    torch.testing.assert_close(v.z, m.encode_visual(xv)[0])
    m.train()
    v, _ = m(xv, xa)
    assert not torch.allclose(v.z, v.mu)


def test_standardisation_buffers_are_part_of_the_state():
    m = VAECCA(VAECCAConfig(visual_dim=2, audio_dim=2, num_classes=2))
    m.set_standardisation(np.array([[1.0, 5.0], [3.0, 5.0]]), np.array([[0.0, 0.0], [2.0, 4.0]]))
    sd = m.state_dict()
    np.testing.assert_allclose(sd["visual_mean"], [2.0, 5.0])
    # a constant feature's std is floored at 1% of the median std (here median(1, 0) = 0.5)
    np.testing.assert_allclose(sd["visual_std"], [1.0, 0.005], rtol=1e-6)
    np.testing.assert_allclose(sd["audio_std"], [1.0, 2.0])


# ---- training ------------------------------------------------------------------------------


def test_training_reaches_high_map_and_beats_chance(trained):
    features, result, _ = trained
    chance = np.mean(np.bincount(features.test.labels) / len(features.test)) * 1.0
    assert result.metrics["map_mean"] > 0.9
    assert result.metrics["map_mean"] > 3 * chance
    assert 1 <= result.best_epoch <= result.epochs_run <= FAST.epochs


def test_training_is_deterministic_with_a_seed():
    features = synthetic(seed=1, n_train=120, n_test=40)
    cfg = replace(FAST, epochs=4, patience=0)
    a, b = train(features, cfg, None), train(features, cfg, None)
    assert [h["val_map_mean"] for h in a.history] == [h["val_map_mean"] for h in b.history]
    assert [h["total"] for h in a.history] == [h["total"] for h in b.history]
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    c = train(features, replace(cfg, seed=1), None)
    assert [h["total"] for h in c.history] != [h["total"] for h in a.history]


def test_run_directory_contents(trained):
    _, result, out = trained
    for name in ("checkpoint.pt", "metrics.json", "history.json", "curves.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["map_mean"] == pytest.approx(result.metrics["map_mean"])
    history = json.loads((out / "history.json").read_text())
    assert len(history) == result.epochs_run
    assert {"vae", "label", "corr", "pair", "centre", "total", "val_map_mean"} <= set(history[0])


def test_checkpoint_round_trip_gives_the_same_embeddings(trained):
    features, result, out = trained
    model, ckpt = load_checkpoint(out / "checkpoint.pt")
    for key in ("config", "train_config", "state_dict", "centres", "feature_attrs", "metrics",
                "epoch", "history"):
        assert key in ckpt, key
    assert ckpt["epoch"] == result.best_epoch and ckpt["feature_attrs"] == {"corpus": "synthetic"}
    assert TrainConfig(**ckpt["train_config"]) == FAST
    ev, ea = model.embed(features.test.visual, features.test.audio)
    ev0, ea0 = result.model.embed(features.test.visual, features.test.audio)
    np.testing.assert_array_equal(ev, ev0)
    np.testing.assert_array_equal(ea, ea0)
    assert not model.training


@pytest.mark.parametrize("method", ["ae", "vae-cca-dcca", "dcca"])
def test_variants_train(method):
    features = synthetic(seed=2, n_train=160, n_test=40)
    result = train(features, replace(FAST, method=method, epochs=3, patience=0), None)
    assert result.model.config.variational == (method == "vae-cca-dcca")
    assert ("dcca" in result.history[0]) == ("dcca" in method)
    assert ("vae" in result.history[0]) == (method != "dcca")
    assert np.isfinite(result.metrics["map_mean"])


# ---- baselines -----------------------------------------------------------------------------


def test_linear_cca_recovers_a_shared_signal():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2000, 2))
    x = np.hstack([s, rng.normal(size=(2000, 3))]) @ rng.normal(size=(5, 5))
    y = np.hstack([s, rng.normal(size=(2000, 2))]) @ rng.normal(size=(4, 4))
    cca = LinearCCA(k=3, reg=1e-6).fit(x, y)
    np.testing.assert_allclose(cca.correlations[:2], [1.0, 1.0], atol=1e-3)
    assert cca.correlations[2] < 0.2
    px, py = cca.transform_x(x), cca.transform_y(y)
    np.testing.assert_allclose(px[:, :2], py[:, :2], atol=1e-2)  # paired projections coincide


def test_compare_returns_every_method():
    features = synthetic(seed=3, n_train=160, n_test=60)
    result = compare(features, replace(FAST, epochs=3, patience=0))
    assert list(result["methods"]) == ["linear-cca", "ae", "vae-cca", "vae-cca-dcca"]
    for m in result["methods"].values():
        assert {"map_a2v", "map_v2a", "map_mean", "p@1", "epochs", "train_seconds"} <= set(m)
    table = format_table(result)
    assert table.splitlines()[0].startswith("method") and "vae-cca-dcca" in table


# ---- command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "features.h5"
    save_features(path, synthetic(seed=4, n_train=160, n_test=60))
    return path


def test_cli_train_then_evaluate_checkpoint_json(feature_file, tmp_path, capsys):
    rc = cli_main(["train", "--data", str(feature_file), "--out", str(tmp_path / "run"),
                   "--epochs", "3", "--batch-size", "32", "--no-progress", "--json"])
    assert rc == 0
    trained = json.loads(capsys.readouterr().out)
    rc = cli_main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"),
                   "--data", str(feature_file), "--json", "--plot-dir", str(tmp_path / "plots")])
    assert rc == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["map_mean"] == pytest.approx(trained["map_mean"])
    assert {"map_a2v", "map_v2a", "p@1_a2v", "pr"} <= set(evaluated)
    assert (tmp_path / "plots" / "pr_curve.png").is_file()


def test_cli_compare_json_is_one_object(feature_file, tmp_path, capsys):
    rc = cli_main(["evaluate", "--data", str(feature_file), "--compare", "--json",
                   "--epochs", "2", "--batch-size", "32", "--no-progress",
                   "--out", str(tmp_path / "cmp")])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)  # fails on any extra stdout line
    assert set(result["methods"]) == {"linear-cca", "ae", "vae-cca", "vae-cca-dcca"}
    for m in result["methods"].values():
        assert {"map_a2v", "map_v2a", "map_mean"} <= set(m)
    assert (tmp_path / "cmp" / "comparison.json").is_file()


@pytest.mark.parametrize("argv", [
    ["evaluate"],
    ["evaluate", "--compare"],
    ["evaluate", "--checkpoint", "x.pt"],
    ["evaluate", "--compare", "--checkpoint", "x.pt", "--data", "x.h5"],
])
def test_cli_evaluate_usage_errors(argv, capsys):
    assert cli_main(argv) == 2
    assert "avindex evaluate:" in capsys.readouterr().err
