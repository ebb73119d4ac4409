"""HDF5 feature files in the paper's layout: round trip, label forms, clear errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from avindex.training.features_h5 import FeatureSet, Split, load_features, save_features


def _split(rng, n: int, with_ids: bool = True) -> Split:
    ids = [f"clip-{i:03d}" for i in range(n)] if with_ids else None
    return Split(rng.normal(size=(n, 6)), rng.normal(size=(n, 3)), rng.integers(0, 4, n), ids)


def test_round_trip_with_val_split_ids_and_attrs(tmp_path):
    rng = np.random.default_rng(0)
    fs = FeatureSet(_split(rng, 12), _split(rng, 5), val=_split(rng, 4),
                    attrs={"corpus": "test", "class_names": ["a", "b", "c", "d"]})
    save_features(tmp_path / "f.h5", fs)
    back = load_features(tmp_path / "f.h5")
    for name in ("train", "val", "test"):
        a, b = getattr(fs, name), getattr(back, name)
        np.testing.assert_array_equal(a.visual, b.visual)
        np.testing.assert_array_equal(a.audio, b.audio)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert b.ids == a.ids
        assert b.visual.dtype == np.float32 and b.labels.dtype == np.int64
    assert back.attrs == fs.attrs
    assert (back.visual_dim, back.audio_dim) == (6, 3)
    assert not (tmp_path / "f.h5.tmp").exists()


def test_file_without_val_ids_or_attrs(tmp_path):
    rng = np.random.default_rng(1)
    save_features(tmp_path / "f.h5", FeatureSet(_split(rng, 8, False), _split(rng, 4, False)))
    back = load_features(tmp_path / "f.h5")
    assert back.val is None and back.train.ids is None and back.attrs == {}


def _write_paper_file(path, labels_train, labels_test) -> None:
    """A file as the authors' tools write it (no avindex attributes)."""
    rng = np.random.default_rng(2)
    with h5py.File(path, "w") as f:
        f["visual_train"] = rng.normal(size=(len(labels_train), 8))
        f["audio_train"] = rng.normal(size=(len(labels_train), 4))
        f["lab_train"] = labels_train
        f["visual_test"] = rng.normal(size=(len(labels_test), 8))
        f["audio_test"] = rng.normal(size=(len(labels_test), 4))
        f["lab_test"] = labels_test


def test_one_hot_labels_become_class_indices(tmp_path):
    idx = np.array([2, 0, 1, 2])
    _write_paper_file(tmp_path / "p.h5", np.eye(3)[idx], np.eye(3)[idx[:2]])
    fs = load_features(tmp_path / "p.h5")
    np.testing.assert_array_equal(fs.train.labels, idx)
    np.testing.assert_array_equal(fs.test.labels, idx[:2])
    assert fs.num_classes == 3


def test_column_labels_become_flat(tmp_path):
    _write_paper_file(tmp_path / "p.h5", np.array([[1], [0], [4]]), np.array([[3], [1]]))
    fs = load_features(tmp_path / "p.h5")
    assert fs.train.labels.shape == (3,) and fs.train.labels.tolist() == [1, 0, 4]
    assert fs.num_classes == 5


def test_missing_datasets_are_named(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["visual_train"] = np.zeros((2, 3))
        f["lab_train"] = np.zeros(2)
    with pytest.raises(ValueError, match=r"audio_train.*visual_test.*audio_test.*lab_test"):
        load_features(tmp_path / "bad.h5")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature file"):
        load_features(tmp_path / "nothing.h5")


def test_mismatched_split_sizes_are_rejected():
    with pytest.raises(ValueError, match="split sizes differ"):
        Split(np.zeros((3, 2)), np.zeros((2, 2)), np.zeros(3))
