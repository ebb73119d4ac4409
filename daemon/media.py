"""Media decoding shared by the daemon and the training pipeline.

Training extracts features from exactly what the daemon decodes, so this module is the single
place where containers become arrays: RGB frames sampled at a fixed rate and resized to a square,
and mono float32 audio resampled to a fixed rate. It needs numpy and PyAV only (no torch).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

__all__ = [
    "AudioSpec",
    "DecodeLimits",
    "DecodedMedia",
    "MediaError",
    "VisualSpec",
    "decode_media",
    "pad_batch",
]


@dataclass(frozen=True)
class VisualSpec:
    """How pictures are sampled: `fps` frames per second, each resized to `size`x`size` RGB."""

    fps: float = 1.0
    size: int = 224
    max_frames: int = 16  # frames kept per item, spread evenly over the clip when it is longer


@dataclass(frozen=True)
class AudioSpec:
    """How sound is sampled: mono float32 in [-1, 1] at `sample_rate`, at most `max_seconds`."""

    sample_rate: int = 16000
    max_seconds: float = 20.0


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds that protect the decoder from oversized or hostile input (decompression bombs)."""

    max_bytes: int = 256 * 1024 * 1024
    max_duration_s: float = 600.0
    max_width: int = 4096
    max_height: int = 4096
    max_decoded_frames: int = 20_000
    # FFmpeg codec names the decoder may run (None: any). Checked before decoding, so untrusted
    # input never reaches a rarely used decoder.
    allowed_codecs: frozenset[str] | None = None


class MediaError(Exception):
    """A media item that cannot be indexed; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class DecodedMedia:
    """Decoded arrays; a modality the item lacks is None."""

    frames: np.ndarray | None  # (T, size, size, 3) uint8
    audio: np.ndarray | None  # (N,) float32 at AudioSpec.sample_rate
    duration_s: float
    info: dict = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        out = []
        if self.frames is not None:
            out.append("visual")
        if self.audio is not None:
            out.append("audio")
        return out


def decode_media(
    source: str | Path | bytes,
    visual: VisualSpec | None = VisualSpec(),  # frozen dataclasses: safe defaults
    audio: AudioSpec | None = AudioSpec(),
    limits: DecodeLimits = DecodeLimits(),
) -> DecodedMedia:
    """Decode a file path or in-memory bytes into sampled frames and resampled mono audio.

    Raises MediaError with a reason code ('empty', 'too_large', 'corrupt', 'no_streams',
    'too_long', 'resolution', 'too_many_frames', 'no_decodable_stream', 'unsupported_codec')
    instead of crashing.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise MediaError("empty", "media is empty (0 bytes)")
        if len(data) > limits.max_bytes:
            raise MediaError("too_large", f"media is {len(data)} bytes > limit {limits.max_bytes}")
        handle: object = io.BytesIO(data)
    else:
        path = Path(source)
        if not path.is_file():
            raise MediaError("not_found", f"no such file: {path}")
        size = path.stat().st_size
        if size == 0:
            raise MediaError("empty", f"media is empty (0 bytes): {path}")
        if size > limits.max_bytes:
            raise MediaError("too_large", f"media is {size} bytes > limit {limits.max_bytes}")
        handle = str(path)
    try:
        container = av.open(handle, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError("corrupt", f"cannot open media: {exc}") from exc
    try:
        return _decode_container(container, visual, audio, limits)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as exc:
        raise MediaError("corrupt", f"decoding failed: {exc}") from exc
    finally:
        container.close()


def _decode_container(container, visual, audio, limits) -> DecodedMedia:
    v_stream = container.streams.video[0] if container.streams.video else None
    a_stream = container.streams.audio[0] if container.streams.audio else None
    if v_stream is None and a_stream is None:
        raise MediaError("no_streams", "media has neither a video nor an audio stream")
    if limits.allowed_codecs is not None:
        for kind, stream, wanted in (("video", v_stream, visual), ("audio", a_stream, audio)):
            if stream is not None and wanted is not None:
                name = stream.codec_context.name
                if name not in limits.allowed_codecs:
                    raise MediaError("unsupported_codec", f"{kind} codec {name!r} is not allowed")
    duration = _container_duration(container)
    if duration is not None and duration > limits.max_duration_s:
        raise MediaError("too_long", f"duration {duration:.1f}s > limit {limits.max_duration_s}s")
    if v_stream is not None:
        w, h = v_stream.codec_context.width, v_stream.codec_context.height
        if w > limits.max_width or h > limits.max_height:
            raise MediaError("resolution", f"resolution {w}x{h} exceeds {limits.max_width}x"
                             f"{limits.max_height}")
    frames = None
    samples = None
    info: dict = {}
    if visual is not None and v_stream is not None:
        frames = _decode_frames(container, v_stream, visual, limits)
        info["video_codec"] = v_stream.codec_context.name
        container.seek(0)
    if audio is not None and a_stream is not None:
        samples = _decode_audio(container, a_stream, audio, limits)
        info["audio_codec"] = a_stream.codec_context.name
    if frames is None and samples is None:
        raise MediaError("no_decodable_stream", "no requested modality could be decoded")
    if duration is None:
        candidates = []
        if samples is not None and audio is not None:
            candidates.append(len(samples) / audio.sample_rate)
        if frames is not None and visual is not None:
            candidates.append(len(frames) / visual.fps)
        duration = max(candidates)
    return DecodedMedia(frames=frames, audio=samples, duration_s=float(duration), info=info)


def _container_duration(container) -> float | None:
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # av.time_base is microseconds
    return None


def _square_rgb(frame, size: int) -> np.ndarray:
    """Resize the shorter side to `size` (swscale, bilinear) and centre-crop to a square."""
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = frame.to_ndarray(format="rgb24", width=nw, height=nh, interpolation="BILINEAR")
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])


def _decode_frames(container, stream, spec: VisualSpec, limits: DecodeLimits) -> np.ndarray | None:
    """Keep the first frame at or after each sampling instant k/fps.

    Frames without a timestamp (pts None) are placed by their index and the stream's rate.
    """
    stream.thread_type = "AUTO"
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    picked: list[np.ndarray] = []
    next_t = 0.0
    step = 1.0 / spec.fps
    t0: float | None = None
    for index, frame in enumerate(container.decode(stream)):
        if index >= limits.max_decoded_frames:
            raise MediaError("too_many_frames", f"more than {limits.max_decoded_frames} frames")
        if frame.pts is not None and frame.time_base is not None:
            t = float(frame.pts * frame.time_base)
        else:
            t = index / rate
        if t0 is None:
            t0 = t
        t -= t0
        if t > limits.max_duration_s:
            raise MediaError("too_long", f"stream runs past {limits.max_duration_s}s")
        if t + 1e-6 >= next_t:
            picked.append(_square_rgb(frame, spec.size))
            next_t = math.floor(t / step + 1e-6) * step + step
    if not picked:
        return None
    if len(picked) > spec.max_frames:
        keep = np.linspace(0, len(picked) - 1, spec.max_frames).round().astype(int)
        picked = [picked[i] for i in keep]
    return np.stack(picked)


def _decode_audio(container, stream, spec: AudioSpec, limits: DecodeLimits) -> np.ndarray | None:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=spec.sample_rate)
    limit = int(spec.max_seconds * spec.sample_rate)
    hard_limit = int(limits.max_duration_s * spec.sample_rate)
    chunks: list[np.ndarray] = []
    total = 0
    for frame in container.decode(stream):
        frame.pts = None  # let the resampler run on sample counts (robust to broken timestamps)
        for out in resampler.resample(frame):
            arr = out.to_ndarray().reshape(-1)
            chunks.append(arr)
            total += arr.size
        if total > hard_limit:
            raise MediaError("too_long", f"audio runs past {limits.max_duration_s}s")
    for out in resampler.resample(None):
        arr = out.to_ndarray().reshape(-1)
        chunks.append(arr)
        total += arr.size
    if total == 0:
        return None
    samples = np.concatenate(chunks).astype(np.float32, copy=False)[:limit]
    np.clip(samples, -1.0, 1.0, out=samples)
    return samples


def pad_batch(items: Sequence[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad items along their first axis: (B, T_max, ...) of `dtype` and lengths (B,) int64.

    The graphs' contract (docs/model-directory.md): padding never changes an item's result.
    Training's feature extraction pads with this too, so both see identical batches.
    """
    lengths = np.array([len(x) for x in items], dtype=np.int64)
    batch = np.zeros((len(items), int(lengths.max()), *items[0].shape[1:]), dtype=dtype)
    for i, x in enumerate(items):
        batch[i, : len(x)] = x
    return batch, lengths
