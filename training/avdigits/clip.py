"""Make one clip: draw the frames, mix the sound, write the MP4. Runs in the worker processes.

A job carries everything the clip needs (the MNIST image, the speech samples) plus its own seed,
so the result does not depend on which worker runs it or in which order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATES, TELEPHONE_BAND, mix_track, prepare_speech
from .mux import write_mp4
from .render import render_frames

__all__ = ["DURATION_S", "FPS", "ClipJob", "make_clip"]

FPS = 8
DURATION_S = (1.5, 4.0)  # drawn per clip; longer when the word needs it
EDGE_S = 0.1  # the word starts and ends at least this far from the clip's ends
TELEPHONE_SHARE = 0.25  # of synthetic clips; human recordings are 8 kHz already
SPEED_RANGE = (0.9, 1.1)  # human recordings only


@dataclass(frozen=True)
class ClipJob:
    """One clip to make; `row` holds the manifest fields already known from the plan."""

    path: Path
    seed: tuple[int, ...]
    image: np.ndarray  # (28, 28) uint8
    speech: np.ndarray  # mono float32 at speech_rate
    speech_rate: int
    human: bool
    row: dict


def make_clip(job: ClipJob) -> dict:
    """Render, mix and mux the clip; return its complete manifest row."""
    rng = np.random.default_rng(list(job.seed))
    out_rate = int(rng.choice(SAMPLE_RATES))
    channels = int(rng.choice([1, 2]))
    speed = float(rng.uniform(*SPEED_RANGE)) if job.human else 1.0
    telephone = (not job.human) and bool(rng.uniform() < TELEPHONE_SHARE)
    word = prepare_speech(job.speech, job.speech_rate, out_rate, speed, telephone)
    word_s = len(word) / out_rate

    duration = max(rng.uniform(*DURATION_S), word_s + 2 * EDGE_S + 0.1)
    n_frames = math.ceil(duration * FPS - 1e-9)
    duration = n_frames / FPS
    onset_s = rng.uniform(EDGE_S, max(duration - word_s - EDGE_S, EDGE_S))
    n_samples = round(duration * out_rate)
    onset = round(onset_s * out_rate)
    track, audio_info = mix_track(word, out_rate, n_samples, onset, channels, rng)

    frames, video_info = render_frames(job.image, n_frames, rng)
    job.path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(job.path, frames, FPS, track, out_rate)

    bandwidth = min(job.speech_rate / 2, TELEPHONE_BAND[1] if telephone else math.inf)
    return {
        **job.row,
        "duration_s": round(duration, 4),
        "speech_onset_s": round(onset / out_rate, 4),
        "speech_duration_s": round(min(word_s, duration - onset / out_rate), 4),
        "n_frames": n_frames,
        "fps": FPS,
        **video_info,
        "sample_rate": out_rate,
        "channels": channels,
        "source_rate": job.speech_rate,
        "speed": round(speed, 4),
        "telephone": int(telephone),
        "speech_bandwidth_hz": int(bandwidth),
        **audio_info,
    }
