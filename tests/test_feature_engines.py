"""The two feature engines agree: ONNX Runtime in the workers (default) and PyTorch in batches."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from avindex.training.features import extract_features
from avindex.training.features_h5 import load_features
from avindex.training.frontends import default_audio_spec, default_visual_spec
from avindex.training.media_manifest import read_media_manifest


def test_onnx_engine_features_equal_torch_engine(tiny_corpus, tiny_features, tmp_path):
    """The default build's features (onnx engine) match PyTorch's on the same clips."""
    listed = read_media_manifest(tiny_corpus)
    chosen = [i for split in ("train", "test") for i in
              [i for i in listed.items if i.split == split][:4]]
    manifest = tmp_path / "media.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "id"])
        writer.writerows([str(i.path), listed.class_names[i.label], i.split, i.media_id]
                         for i in chosen)
    torch_fs = extract_features(manifest, tmp_path / "torch.h5", default_visual_spec(),
                                default_audio_spec("speech"), workers=1, engine="torch")
    onnx_fs = load_features(tiny_features)
    assert onnx_fs.attrs["engine"] == "onnx" and torch_fs.attrs["engine"] == "torch"
    for split in ("train", "test"):
        want, got = getattr(torch_fs, split), getattr(onnx_fs, split)
        rows = [got.ids.index(i) for i in want.ids]
        for modality in ("visual", "audio"):
            a, b = getattr(want, modality), getattr(got, modality)[rows]
            scale = float(np.abs(a).max())
            assert np.abs(a - b).max() <= 1e-4 * scale, (split, modality)


def test_unknown_engine_is_refused(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="unknown engine"):
        extract_features(tiny_corpus, tmp_path / "x.h5", default_visual_spec(),
                         default_audio_spec("speech"), engine="tensorflow")
