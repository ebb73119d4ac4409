"""A small ctypes wrapper around eSpeak NG from the `espeakng-loader` wheel.

The wheel ships the shared library and its voice data but no Python API, and the corpus builder
needs only "speak this word with this voice into an int16 array". eSpeak keeps its state in
process globals, so there is one engine per process (`engine()`), created lazily in each worker.
"""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Espeak", "EspeakError", "VoiceVariant", "available", "data_dir", "engine",
           "voice_variants"]

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_INITIALIZE_DONT_EXIT = 0x8000
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
    """eSpeak NG is missing or refused a request."""


class _Voice(ctypes.Structure):
    """`espeak_VOICE` from speak_lib.h; read back to check which voice really got loaded."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def _paths() -> tuple[Path, Path] | None:
    try:
        import espeakng_loader
    except ImportError:
        return None
    lib = Path(espeakng_loader.get_library_path())
    try:
        data = Path(espeakng_loader.get_data_path())
    except RuntimeError:
        return None
    return (lib, data) if lib.is_file() and data.is_dir() else None


def available() -> bool:
    """True when the `espeakng-loader` wheel with its library and voice data is installed."""
    return _paths() is not None


def data_dir() -> Path:
    """The `espeak-ng-data` folder of the installed wheel."""
    paths = _paths()
    if paths is None:
        raise EspeakError("eSpeak NG not available: install the `espeakng-loader` wheel")
    return paths[1]


@dataclass(frozen=True)
class VoiceVariant:
    """A timbre file under `voices/!v` (m3, f2, klatt4, ...), applied as `<language>+<name>`."""

    name: str
    gender: str  # male | female | unknown


# Variants that do not sound like a person (robots, monsters, deliberately distorted effects).
_NOT_HUMAN = re.compile(r"robo|robot|demonic|tweaky|croak|whisper|storm|anxious|kaukovalta|"
                        r"^max$|^fast$", re.IGNORECASE)


@functools.cache
def voice_variants() -> tuple[VoiceVariant, ...]:
    """Human-sounding voice variants shipped with the data, sorted by name (a stable order)."""
    folder = data_dir() / "voices" / "!v"
    out = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if not path.is_file() or _NOT_HUMAN.search(path.name):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        match = re.search(r"^\s*gender\s+(male|female)", text, re.MULTILINE)
        out.append(VoiceVariant(path.name, match.group(1) if match else "unknown"))
    return tuple(out)


class Espeak:
    """eSpeak NG in synchronous retrieval mode: `synth()` returns the samples, nothing plays."""

    def __init__(self) -> None:
        paths = _paths()
        if paths is None:
            raise EspeakError("eSpeak NG not available: install the `espeakng-loader` wheel")
        lib_path, data = paths
        self._lib = ctypes.CDLL(str(lib_path))
        self._libc = ctypes.CDLL(None)
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # keep a reference: C holds the pointer
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        if hasattr(lib, "espeak_ng_SetRandSeed"):
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        # `path` is the folder that *contains* espeak-ng-data.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data.parent).encode(),
                                     _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate}) with data in {data}")
        self.sample_rate = int(rate)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n: int, _events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = go on synthesising

    def synth(self, text: str, voice: str, rate: int = 175, pitch: int = 50,
              pitch_range: int = 50) -> np.ndarray:
        """Speak `text` with `voice` ("es-419+f2"); int16 mono at `self.sample_rate`.

        rate is in words per minute (80-450), pitch and pitch_range are 0-100 (default 50).
        Random state is reset first, so the same request gives the same samples in any process.
        """
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"unknown eSpeak voice {voice!r}")
        variant = voice.partition("+")[2]
        if variant and not self.current_voice()[1].endswith(f"+{variant}"):
            # eSpeak falls back to the plain language without a word when a variant is missing.
            raise EspeakError(f"unknown eSpeak voice variant {variant!r} in {voice!r}")
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range),
                             (_VOLUME, 100)):
            self._lib.espeak_SetParameter(param, int(value), 0)
        if hasattr(self._lib, "espeak_ng_SetRandSeed"):
            self._lib.espeak_ng_SetRandSeed(1)
        self._libc.srand(1)  # older eSpeak builds call libc rand() for noise sources
        self._chunks = []
        data = text.encode("utf-8")
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                        None, None)
        if status != 0:
            raise EspeakError(f"espeak_Synth failed ({status}) for {text!r} with {voice!r}")
        self._lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks).astype(np.int16, copy=False)

    def current_voice(self) -> tuple[str, str]:
        """(name, identifier) of the voice eSpeak actually loaded."""
        voice = self._lib.espeak_GetCurrentVoice().contents
        return (voice.name or b"").decode(), (voice.identifier or b"").decode()


@functools.cache
def engine() -> Espeak:
    """The process-wide engine (eSpeak state is global, so there can be only one)."""
    return Espeak()
