"""Shared fixtures: one tiny real pipeline (corpus -> features -> checkpoint -> model directory),
built once per test session and reused by the feature, export and daemon tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import avindex.daemon  # noqa: F401  (first: it turns ONNX Runtime's telemetry off)


@pytest.fixture(scope="session")
def tiny_default(tmp_path_factory) -> tuple[Path, Path]:
    """The README's `avindex export --default` recipe at a tiny size: (model dir, work dir)."""
    from avindex.exporters.default_model import build_default_model

    root = tmp_path_factory.mktemp("default")
    out, work = root / "model", root / "work"
    build_default_model(out, work=work, seed=7, n_train=60, n_val=20, n_test=30, epochs=40)
    return out, work


@pytest.fixture(scope="session")
def tiny_corpus(tiny_default) -> Path:
    """A small AV-digits corpus (real MP4 files); returns its manifest.csv."""
    return tiny_default[1] / "avdigits" / "manifest.csv"


@pytest.fixture(scope="session")
def tiny_features(tiny_default) -> Path:
    return tiny_default[1] / "features.h5"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_default) -> Path:
    return tiny_default[1] / "train" / "checkpoint.pt"


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_default) -> Path:
    return tiny_default[0]
