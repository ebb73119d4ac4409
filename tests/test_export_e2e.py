"""End-to-end parity: the daemon's path (decode -> ONNX Runtime) reproduces training's numbers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np

from avindex.training.features_h5 import load_features
from avindex.training.media_eval import embed_media, evaluate_model_on_media
from avindex.training.metrics import retrieval_metrics
from avindex.training.train import load_checkpoint


def test_model_dir_embeddings_equal_the_training_pipeline(tiny_corpus, tiny_features,
                                                          tiny_checkpoint, tiny_model_dir):
    served = embed_media(tiny_model_dir, tiny_corpus, split="test", workers=2)
    test = load_features(tiny_features).test
    model, _ = load_checkpoint(tiny_checkpoint)
    visual, audio = model.embed(test.visual, test.audio)
    order = [test.ids.index(i) for i in served.ids]
    assert len(order) == len(test.ids)
    assert np.abs(served.visual - visual[order]).max() <= 1e-4
    assert np.abs(served.audio - audio[order]).max() <= 1e-4


def test_exported_map_equals_checkpoint_map(tiny_corpus, tiny_features, tiny_checkpoint,
                                            tiny_model_dir):
    test = load_features(tiny_features).test
    model, _ = load_checkpoint(tiny_checkpoint)
    want = retrieval_metrics(*model.embed(test.visual, test.audio), test.labels)
    got = evaluate_model_on_media(tiny_model_dir, tiny_corpus, split="test", workers=2)
    assert got["n"] == len(test)
    for key in ("map_a2v", "map_v2a", "map_mean"):
        assert abs(got[key] - want[key]) <= 0.005


def test_evaluate_cli_reports_undecodable_clips_and_goes_on(tiny_corpus, tiny_model_dir,
                                                            tmp_path):
    rows = list(csv.DictReader(tiny_corpus.open()))
    test_rows = [r for r in rows if r["split"] == "test"][:12]
    for r in test_rows:
        r["path"] = str(tiny_corpus.parent / r["path"])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    test_rows.append(dict(test_rows[0], path=str(broken), id="broken"))
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(test_rows)
    proc = subprocess.run(
        [sys.executable, "-m", "avindex.tools.cli", "evaluate", "--model", str(tiny_model_dir),
         "--media", str(manifest), "--json", "--workers", "2"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["n"] == 12
    assert {"map_a2v", "map_v2a", "map_mean"} <= set(result)
    assert [f["path"] for f in result["failed"]] == [str(broken)]
    assert "broken.mp4" in proc.stderr
