"""The default model: built by one command from pip-installed weights, no model hub.

AV-digits corpus -> EfficientNet-Lite0 (128 px, 2 frames per clip) + Google's speech_embedding
features -> VAE-CCA -> model directory.
Every step is skipped when its output already exists in the work folder, so a re-run after an
interruption resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from avindex.training.features_h5 import load_features

log = logging.getLogger(__name__)


def build_default_model(
    out: Path,
    work: Path | None = None,
    seed: int = 0,
    n_train: int = 3000,
    n_val: int = 500,
    n_test: int = 1000,
    fp16: bool = True,
    audio_frontend: str = "speech",
    epochs: int = 500,
) -> dict:
    from avindex.exporters.writer import export_model_dir
    from avindex.training.avdigits.build import build_corpus
    from avindex.training.features import extract_features
    from avindex.training.frontends import default_audio_spec, default_visual_spec
    from avindex.training.train import TrainConfig, train

    work = work or out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "avdigits"
    manifest_csv = corpus / "manifest.csv"
    if not manifest_csv.is_file():
        log.info("step 1/4: building AV-digits (%d/%d/%d clips)", n_train, n_val, n_test)
        build_corpus(corpus, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test)
    features_h5 = work / "features.h5"
    if not features_h5.is_file():
        log.info("step 2/4: extracting features")
        extract_features(manifest_csv, features_h5, default_visual_spec(),
                         default_audio_spec(audio_frontend))
    run_dir = work / "train"
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        log.info("step 3/4: training VAE-CCA")
        train(load_features(features_h5), TrainConfig(seed=seed, epochs=epochs), run_dir)
    log.info("step 4/4: exporting to %s", out)
    return export_model_dir(checkpoint, out, fp16=fp16)
