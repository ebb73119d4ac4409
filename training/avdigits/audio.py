"""Build the sound track: one spoken digit placed in a clip with the acoustics of real footage.

Varied per clip: where the word starts, speed (human recordings only: there are just ten per
person), telephone band-limiting, room reverberation, loudness, background noise (coloured noise
or mains hum) at a random SNR, and the container's sample rate and channel count.
"""

from __future__ import annotations

import av
import numpy as np

__all__ = ["SAMPLE_RATES", "mix_track", "prepare_speech", "resample", "trim_silence"]

SAMPLE_RATES = (22050, 44100, 48000)
TELEPHONE_BAND = (300.0, 3400.0)


def _fft_size(n: int) -> int:
    """The power of two >= n."""
    return 1 << max(n - 1, 1).bit_length()


def resample(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Mono float32 `samples` at `rate` -> `new_rate` with FFmpeg's swresample (deterministic)."""
    if rate == new_rate:
        return samples.astype(np.float32, copy=True)
    frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="flt",
                                       layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=new_rate)
    chunks = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def trim_silence(samples: np.ndarray, rate: int, floor_db: float = -35.0) -> np.ndarray:
    """Cut leading/trailing parts quieter than `floor_db` below the loudest 10 ms (keep 20 ms).

    Recordings and eSpeak output carry silence of varying length; trimming makes the manifest's
    speech onset and duration mean the word itself.
    """
    hop = max(rate // 100, 1)
    n = len(samples) // hop
    if n == 0:
        return samples
    energy = (samples[: n * hop].reshape(n, hop) ** 2).mean(axis=1)
    loud = np.nonzero(energy > energy.max() * 10 ** (floor_db / 10))[0]
    margin = 2 * hop
    start = max(int(loud[0]) * hop - margin, 0)
    end = min((int(loud[-1]) + 1) * hop + margin, len(samples))
    return samples[start:end]


def _band_pass(x: np.ndarray, rate: int, low: float, high: float) -> np.ndarray:
    """Zero-phase band-pass by an FFT mask with 100 Hz raised-cosine edges."""
    size = _fft_size(len(x))  # zero padding: no wrap-around, and a fast FFT length
    spectrum = np.fft.rfft(x, size)
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    edge = 100.0
    gain = np.clip((freqs - (low - edge)) / edge, 0, 1) * np.clip(((high + edge) - freqs) / edge,
                                                                    0, 1)
    gain = 0.5 - 0.5 * np.cos(np.pi * gain)
    return np.fft.irfft(spectrum * gain, size)[: len(x)].astype(np.float32)


def _reverb(x: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Convolve with a synthetic room response (decaying noise) of random RT60."""
    rt60 = rng.uniform(0.15, 0.6)
    length = int(rt60 * rate)
    t = np.arange(length, dtype=np.float32) / rate
    response = rng.normal(0, 1, length).astype(np.float32) * np.exp(-6.9 * t / rt60)
    response[0] = 0.0
    response *= rng.uniform(0.1, 0.4) / np.sqrt(np.sum(response**2))
    response[0] = 1.0  # direct path
    size = _fft_size(len(x) + length - 1)
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(response, size), size)[: len(x)]
    return wet.astype(np.float32), round(float(rt60), 3)


def prepare_speech(samples: np.ndarray, rate: int, out_rate: int, speed: float,
                   telephone: bool) -> np.ndarray:
    """The trimmed word at `out_rate`, `speed` times faster (pitch moves with it, as in Kaldi's
    speed perturbation), band-limited to the telephone band when asked.
    """
    word = trim_silence(samples, rate)
    # Declaring the source rate as rate*speed and resampling plays it `speed` times faster.
    word = resample(word, round(rate * speed), out_rate)
    if telephone:
        word = _band_pass(word, out_rate, *TELEPHONE_BAND)
    return word


def _coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power ∝ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    if exponent == 0:
        return rng.standard_normal(n, dtype=np.float32)
    size = _fft_size(n)
    spectrum = np.fft.rfft(rng.standard_normal(size, dtype=np.float32))
    freqs = np.arange(len(spectrum), dtype=np.float32)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), size)[:n]
    return (noise / max(float(np.sqrt(np.mean(noise**2))), 1e-9)).astype(np.float32)


def _hum(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Mains hum: 50 or 60 Hz and a few harmonics, plus a little hiss; unit RMS."""
    mains = float(rng.choice([50.0, 60.0]))
    # One period of the waveform, tiled (the mains period is a whole number of samples or
    # close to it: 48000/50, 44100/60, 22050/50 are exact; others drift by < 1 sample/period).
    period = round(rate / mains)
    t = np.arange(period, dtype=np.float64) / period
    cycle = sum(rng.uniform(0.1, 1.0) / k * np.sin(2 * np.pi * k * t + rng.uniform(0, 6.3))
                for k in range(1, 6))
    hum = np.tile(cycle.astype(np.float32), n // period + 1)[:n]
    hum = hum / max(float(np.sqrt(np.mean(hum**2))), 1e-9)
    return hum + 0.1 * rng.standard_normal(n, dtype=np.float32)


_NOISES = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def mix_track(word: np.ndarray, rate: int, n_samples: int, onset: int, channels: int,
              rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Place `word` at sample `onset` of an `n_samples` clip and add room, noise and level.

    Returns (channels, n_samples) float32 in [-1, 1] and a record of what was applied.
    """
    info: dict = {"reverb_rt60_s": 0.0}
    if rng.uniform() < 0.3:
        word, info["reverb_rt60_s"] = _reverb(word, rate, rng)
    speech = np.zeros(n_samples, np.float32)
    end = min(onset + len(word), n_samples)
    speech[onset:end] = word[: end - onset]

    # Level of the word itself (its loud part), then the clip's loudness.
    active = word[np.abs(word) > 0.05 * np.abs(word).max()] if word.size else word
    rms = float(np.sqrt(np.mean(active**2))) if active.size else 1.0
    level_db = rng.uniform(-32.0, -14.0)
    speech *= 10 ** (level_db / 20) / max(rms, 1e-9)

    kind = str(rng.choice(["white", "pink", "brown", "hum", "pink+hum"]))
    snr_db = rng.uniform(5.0, 35.0)
    noise_rms = 10 ** ((level_db - snr_db) / 20)

    def noise() -> np.ndarray:
        if kind == "hum":
            return _hum(rng, n_samples, rate)
        if kind == "pink+hum":
            return (0.7 * _coloured_noise(rng, n_samples, 1.0) + 0.7 * _hum(rng, n_samples, rate))
        return _coloured_noise(rng, n_samples, _NOISES[kind])

    if channels == 1:
        track = (speech + noise_rms * noise())[None, :]
    else:
        pan = rng.uniform(-0.5, 0.5)  # -1 left .. 1 right
        shared = noise()
        gains = (np.sqrt((1 - pan) / 2) * np.sqrt(2), np.sqrt((1 + pan) / 2) * np.sqrt(2))
        track = np.stack([g * speech + noise_rms * (0.7 * shared + 0.7 * noise())
                          for g in gains])
    peak = float(np.abs(track).max())
    if peak > 0.95:  # limit rather than clip: keep the waveform clean
        track *= 0.95 / peak
    info.update({"level_dbfs": round(level_db, 2), "noise": kind, "snr_db": round(snr_db, 2)})
    return track.astype(np.float32), info
