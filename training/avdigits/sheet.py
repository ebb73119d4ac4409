"""A contact sheet: frames decoded back from a few finished clips, titled with their labels,
so a person can check at a glance that the digits are legible and match the labels.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

__all__ = ["write_contact_sheet"]

PER_SPLIT = 8
COLUMNS = 6


def _frame_at(path: Path, seconds: float) -> np.ndarray:
    """The RGB frame shown at `seconds` (the one with the last pts not after it)."""
    chosen = None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if chosen is None or frame.time is None or frame.time <= seconds + 1e-6:
                chosen = frame.to_ndarray(format="rgb24")
            else:
                break
    if chosen is None:
        raise ValueError(f"no video frame in {path}")
    return chosen


def write_contact_sheet(rows: list[dict], root: Path, path: Path) -> None:
    """PNG of PER_SPLIT clips per split (evenly spaced), each at the middle of its spoken word."""
    from matplotlib.figure import Figure  # imported here: only the parent process draws

    picks = []
    for split in ("train", "val", "test"):
        in_split = [r for r in rows if r["split"] == split]
        for i in np.linspace(0, len(in_split) - 1, min(PER_SPLIT, len(in_split))).round():
            picks.append(in_split[int(i)])
    n_rows = -(-len(picks) // COLUMNS)
    figure = Figure(figsize=(2.2 * COLUMNS, 2.5 * n_rows), dpi=90)
    for k, row in enumerate(picks):
        axes = figure.add_subplot(n_rows, COLUMNS, k + 1)
        middle = float(row["speech_onset_s"]) + float(row["speech_duration_s"]) / 2
        axes.imshow(_frame_at(root / row["path"], middle))
        axes.set_title(f"{row['split']} label {row['label']}\n{row['language']} "
                       f"{row['speaker_kind']} '{row['word']}'", fontsize=8)
        axes.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
