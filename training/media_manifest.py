"""Labelled media lists: a CSV with at least `path,label` (paths relative to the CSV's folder).

Optional columns: `split` (train/val/test), `id` (media id). Labels may be integers or names;
names are mapped to indices in sorted order and kept as class names.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class MediaItem:
    path: Path
    label: int
    split: str | None
    media_id: str


@dataclass(frozen=True)
class MediaList:
    items: list[MediaItem]
    class_names: list[str]


def read_media_manifest(csv_path: str | Path) -> MediaList:
    csv_path = Path(csv_path)
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{csv_path} has no rows")
    missing = {"path", "label"} - set(rows[0])
    if missing:
        raise ValueError(f"{csv_path} lacks column(s) {sorted(missing)}; need at least path,label")
    raw = [r["label"].strip() for r in rows]
    if all(x.lstrip("-").isdigit() for x in raw):
        labels = [int(x) for x in raw]
        class_names = [str(i) for i in range(max(labels) + 1)]
        if "class_name" in rows[0]:
            for r, lab in zip(rows, labels, strict=True):
                class_names[lab] = r["class_name"] or class_names[lab]
    else:
        class_names = sorted(set(raw))
        index = {name: i for i, name in enumerate(class_names)}
        labels = [index[x] for x in raw]
    items = []
    for r, lab in zip(rows, labels, strict=True):
        path = Path(r["path"])
        if not path.is_absolute():
            path = csv_path.parent / path
        media_id = r.get("id") or Path(r["path"]).stem
        items.append(MediaItem(path, lab, (r.get("split") or None), media_id))
    return MediaList(items, class_names)


def assign_splits(labels: np.ndarray, seed: int, fractions=(0.7, 0.1, 0.2)) -> list[str]:
    """Stratified seeded train/val/test assignment for lists without a `split` column."""
    rng = np.random.default_rng(seed)
    out = [""] * len(labels)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_train = round(len(idx) * fractions[0])
        n_val = round(len(idx) * fractions[1])
        for i, j in enumerate(idx):
            out[j] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out
