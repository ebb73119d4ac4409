"""The demo's inputs: the model directory (built by the default recipe when missing) and the
AV-digits clips to stream (the model's own held-out test split when its work folder is there)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from avindex.tools.demo.console import say, step

__all__ = ["NEW_CORPUS_SEED", "corpus_rows", "ensure_model"]

NEW_CORPUS_SEED = 20261201  # a corpus of its own when the model's work folder is gone
BUILD_EXPECTED_S = 420  # the default build on 2 idle CPU cores (README, command 1)


def ensure_model(model: Path) -> Path:
    """`model` resolved; built with `avindex export --default`'s recipe when it is missing."""
    model = model.resolve()
    if (model / "manifest.json").is_file():
        say(f"model: {model}")
        return model
    with step(f"building the default model into {model} (corpus, features, training, "
              f"export; about {BUILD_EXPECTED_S // 60} min on 2 idle CPU cores, resumable)",
              BUILD_EXPECTED_S):
        try:
            from avindex.exporters.default_model import build_default_model
        except ImportError as exc:
            raise SystemExit(f"avindex demo: {model} is missing and building it needs the "
                             f"train extra (pip install 'avindex[cpu,train]'): {exc}") from exc
        logging.basicConfig(level=logging.INFO, format="[demo]   %(message)s")
        build_default_model(model)
    return model


def corpus_rows(model: Path, manifest: Path | None, split: str, state: Path,
                min_clips: int) -> list[dict]:
    """The rows of `split` with absolute paths: from `manifest`, else the model's own corpus,
    else a new small corpus built in `state`."""
    explicit = manifest is not None
    manifest = manifest or model.with_name(model.name + ".work") / "avdigits" / "manifest.csv"
    if not manifest.is_file():
        if explicit:
            raise SystemExit(f"avindex demo: no such manifest: {manifest}")
        manifest = _build_corpus(state, min_clips)
    with open(manifest, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == split]
    if not rows:
        raise SystemExit(f"avindex demo: no {split!r} clips in {manifest}")
    for row in rows:
        row["path"] = str((manifest.parent / row["path"]).resolve())
    say(f"corpus: {manifest} ({len(rows)} {split} clips)")
    return rows


def _build_corpus(state: Path, n_test: int) -> Path:
    with step(f"building a new AV-digits corpus ({n_test} clips, seed {NEW_CORPUS_SEED}; "
              "its speakers may include the model's training speakers)", 5 + n_test * 0.5):
        from avindex.training.avdigits.build import build_corpus

        return build_corpus(state / "avdigits", seed=NEW_CORPUS_SEED, n_train=10, n_val=10,
                            n_test=n_test)
