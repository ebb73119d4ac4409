"""Shared fixtures: one tiny real pipeline (corpus -> features -> checkpoint -> model directory),
built once per test session and reused by the feature, export and daemon tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before anything imports onnxruntime


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A small AV-digits corpus (real MP4 files); returns its manifest.csv."""
    from avindex.training.avdigits.build import build_corpus

    out = tmp_path_factory.mktemp("avdigits")
    return build_corpus(out, seed=7, n_train=60, n_val=20, n_test=30, workers=2)


@pytest.fixture(scope="session")
def tiny_features(tiny_corpus, tmp_path_factory) -> Path:
    from avindex.training.features import extract_features
    from avindex.training.frontends import default_audio_spec, default_visual_spec

    out = tmp_path_factory.mktemp("features") / "features.h5"
    extract_features(tiny_corpus, out, default_visual_spec(), default_audio_spec(), workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_features, tmp_path_factory) -> Path:
    from avindex.training.features_h5 import load_features
    from avindex.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    train(load_features(tiny_features), TrainConfig(epochs=30, patience=0, progress=False,
                                                    batch_size=32), out)
    return out / "checkpoint.pt"


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    from avindex.exporters.writer import export_model_dir

    out = tmp_path_factory.mktemp("model") / "model"
    export_model_dir(tiny_checkpoint, out, fp16=True)
    return out
