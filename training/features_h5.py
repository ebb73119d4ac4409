"""Feature files in the paper's HDF5 layout.

The public VEGAS/AVE files hold `visual_train`, `audio_train`, `lab_train`, `visual_test`,
`audio_test`, `lab_test` (labels as class indices, shape (N,) or (N, 1); one-hot is accepted too).
avindex writes the same layout, plus optional `*_val` arrays (a validation split), `id_*` (media
ids, for tracing a vector back to its clip) and a JSON attribute `avindex` with provenance
(front-ends, class names, corpus). Files written by other tools are read unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    visual: np.ndarray  # (N, Dv) float32
    audio: np.ndarray  # (N, Da) float32
    labels: np.ndarray  # (N,) int64 class indices
    ids: list[str] | None = None

    def __post_init__(self) -> None:
        self.visual = np.asarray(self.visual, dtype=np.float32)
        self.audio = np.asarray(self.audio, dtype=np.float32)
        self.labels = _as_class_indices(np.asarray(self.labels))
        n = len(self.labels)
        if len(self.visual) != n or len(self.audio) != n:
            raise ValueError(
                f"split sizes differ: visual {len(self.visual)}, audio {len(self.audio)}, "
                f"labels {n}"
            )
        if self.ids is not None and len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} items")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        ids = [self.ids[i] for i in index] if self.ids is not None else None
        return Split(self.visual[index], self.audio[index], self.labels[index], ids)


@dataclass
class FeatureSet:
    train: Split
    test: Split
    val: Split | None = None
    attrs: dict = field(default_factory=dict)

    @property
    def visual_dim(self) -> int:
        return int(self.train.visual.shape[1])

    @property
    def audio_dim(self) -> int:
        return int(self.train.audio.shape[1])

    @property
    def num_classes(self) -> int:
        labels = [self.train.labels, self.test.labels]
        if self.val is not None:
            labels.append(self.val.labels)
        return int(max(int(x.max()) for x in labels if len(x)) + 1)


def _as_class_indices(labels: np.ndarray) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot
        return labels.argmax(axis=1).astype(np.int64)
    return labels.reshape(-1).astype(np.int64)


def save_features(path: str | Path, features: FeatureSet) -> None:
    """Write a FeatureSet in the paper's layout (plus optional val split, ids and attrs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with h5py.File(tmp, "w") as f:
        for name in SPLITS:
            split = getattr(features, name)
            if split is None:
                continue
            f.create_dataset(f"visual_{name}", data=split.visual)
            f.create_dataset(f"audio_{name}", data=split.audio)
            f.create_dataset(f"lab_{name}", data=split.labels)
            if split.ids is not None:
                f.create_dataset(f"id_{name}", data=np.array(split.ids, dtype=h5py.string_dtype()))
        f.attrs["avindex"] = json.dumps(features.attrs)
    tmp.replace(path)  # never leave a half-written file under the real name


def load_features(path: str | Path) -> FeatureSet:
    """Read a paper-layout HDF5 file; raises ValueError naming what is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no feature file at {path}")
    with h5py.File(path, "r") as f:
        missing = [
            f"{kind}_{name}"
            for name in ("train", "test")
            for kind in ("visual", "audio", "lab")
            if f"{kind}_{name}" not in f
        ]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)} (paper layout expected)")
        splits: dict[str, Split | None] = {}
        for name in SPLITS:
            if f"visual_{name}" not in f:
                splits[name] = None
                continue
            ids = None
            if f"id_{name}" in f:
                ids = [x.decode() if isinstance(x, bytes) else str(x) for x in f[f"id_{name}"][()]]
            splits[name] = Split(
                f[f"visual_{name}"][()], f[f"audio_{name}"][()], f[f"lab_{name}"][()], ids
            )
        attrs = json.loads(f.attrs["avindex"]) if "avindex" in f.attrs else {}
    return FeatureSet(train=splits["train"], test=splits["test"], val=splits["val"], attrs=attrs)
