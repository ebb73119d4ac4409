"""Synthetic media files for tests, benchmarks and trials: real containers, real codecs.

Colours, motion and tone depend on `index`, so every file embeds differently; the moving pattern
keeps the video encoder (and so the decoder) doing real work, as a camera's footage would.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["write_clip"]

PCM_FORMATS = {"pcm_s16le": ("s16", np.int16, 32767)}


def write_clip(path: Path, index: int, *, video: bool = True, audio: bool = True,
               seconds: float = 1.0, width: int = 64, height: int = 48, fps: int = 10,
               vcodec: str = "h264", acodec: str = "aac", sample_rate: int = 16000,
               channels: int = 1, pattern: str = "bar", fmt: str | None = None,
               video_options: dict[str, str] | None = None) -> Path:
    """Write one media file and return its path.

    `pattern`: "bar" (a bar growing across a flat colour; tiny, fast to encode) or "checker"
    (a moving checkerboard: realistic decoding cost for benchmarks). `video_options` go to the
    encoder (h264 defaults to ultrafast/zerolatency).
    """
    rng = np.random.default_rng(index)
    colour = rng.integers(0, 256, 3, dtype=np.uint8)
    freq = 200 + 37 * (index % 50)
    amp = 0.1 + 0.8 * rng.random()
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w", format=fmt) as out:
        vs = as_ = None
        if video:
            vs = out.add_stream(vcodec, rate=fps)
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            if video_options is not None:
                vs.options = video_options
            elif vcodec == "h264":
                vs.options = {"preset": "ultrafast", "tune": "zerolatency"}
        if audio:
            as_ = out.add_stream(acodec, rate=sample_rate)
            as_.layout = layout
        if vs is not None:
            yy, xx = np.mgrid[0:height, 0:width] if pattern == "checker" else (None, None)
            for i in range(int(seconds * fps)):
                img = np.empty((height, width, 3), np.uint8)
                img[:] = colour
                if pattern == "checker":
                    img[((xx + 3 * i) // 16 + (yy + 2 * i) // 16) % 2 == 0] = 255 - colour
                else:
                    img[: height // 2, : (i * 7) % width] = 255 - colour
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                for packet in vs.encode(frame):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
        if as_ is not None:
            n = int(seconds * sample_rate)
            wave = (amp * np.sin(2 * math.pi * freq * np.arange(n) / sample_rate))
            sample_fmt, dtype, scale = PCM_FORMATS.get(acodec, ("fltp", np.float32, 1))
            for start in range(0, n, 1024):
                part = (wave[start : start + 1024] * scale).astype(dtype)
                data = np.repeat(part[None, :], channels, axis=0)
                if sample_fmt == "s16" and channels > 1:  # packed: one plane, interleaved
                    data = data.T.reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(data, format=sample_fmt, layout=layout)
                frame.sample_rate, frame.pts = sample_rate, start
                frame.time_base = Fraction(1, sample_rate)
                for packet in as_.encode(frame):
                    out.mux(packet)
            for packet in as_.encode():
                out.mux(packet)
    return path
