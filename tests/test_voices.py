"""The Debian voices of AV-digits: discovery, fetching, and where each human voice goes."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest

from avindex.training.avdigits import voices as voices_mod
from avindex.training.avdigits.sources import HumanSpeaker, load_recording
from avindex.training.avdigits.splits import PINNED_SPLITS, assign_humans
from avindex.training.avdigits.voices import VOICES, discover_voices, fetch_voices

SIZES = {"train": 3000, "val": 500, "test": 1000}


def _write_digits(folder: Path, rate: int = 8000) -> None:
    folder.mkdir(parents=True)
    t = np.arange(rate // 4) / rate
    for digit in range(10):
        tone = (0.3 * np.sin(2 * np.pi * (300 + 50 * digit) * t) * 32767).astype(np.int16)
        with wave.open(str(folder / f"{digit}.wav"), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(rate)
            handle.writeframes(tone.tobytes())


def test_discover_reads_known_voice_folders_only(tmp_path):
    _write_digits(tmp_path / "fr_FR_f_Armelle" / "digits")
    _write_digits(tmp_path / "xx_XX_m_Stranger" / "digits")  # not one of VOICES: ignored
    (tmp_path / "es_CO_f_July" / "digits").mkdir(parents=True)  # incomplete: skipped
    found = discover_voices(tmp_path)
    assert [(s.name, s.person, s.language) for s in found] == [
        ("fr_FR_f_Armelle", "Armelle", "fr")]
    assert "GPL-2.0-or-later" in found[0].licence
    assert "asterisk-prompt-fr-armelle" in found[0].licence
    samples, rate = load_recording(found[0].files[3])
    assert rate == 8000 and len(samples) == 2000


def test_fetch_without_debian_tools_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(voices_mod.shutil, "which", lambda _name: None)
    _write_digits(tmp_path / "ru_RU_f_IvrvoiceRU" / "digits")
    status = fetch_voices(tmp_path)
    assert status["ru_RU_f_IvrvoiceRU"] == "present"
    assert {status[v.name] for v in VOICES if v.name != "ru_RU_f_IvrvoiceRU"} == {
        "no apt-get/dpkg-deb (not Debian)"}


def _human(person: str, language: str = "en", split: str | None = None) -> HumanSpeaker:
    return HumanSpeaker(f"{language}_XX_f_{person}", person, language, (), split)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pinned_voices_keep_their_split_whatever_the_seed(seed):
    humans = [_human("Allison"), _human("Allison", "es"), _human("June", "fr"),
              _human("Carlo", "it"), _human("Armelle", "fr"), _human("July", "es")]
    placed = {s.person: s.split for s in assign_humans(humans, SIZES,
                                                       np.random.default_rng(seed))}
    assert placed["human:June"] == PINNED_SPLITS["June"] == "test"
    assert placed["human:Carlo"] == PINNED_SPLITS["Carlo"] == "val"
    assert placed["human:Allison"] == "train"  # the free voices fill train first


def test_a_forced_split_overrides_a_pin():
    placed = assign_humans([_human("June", "fr", split="train"), _human("Allison")], SIZES,
                           np.random.default_rng(0))
    assert {s.person: s.split for s in placed}["human:June"] == "train"


FETCHED = discover_voices()


@pytest.mark.skipif(len(FETCHED) < len(VOICES) and not os.environ.get("CI"),
                    reason="scripts/setup.sh has not fetched the Debian voices (avindex data "
                    "voices); in CI this fails")
def test_the_fetched_debian_voices_are_real_speech():
    assert sorted(s.name for s in FETCHED) == sorted(v.name for v in VOICES)
    for speaker in FETCHED:
        for path in speaker.files:
            samples, rate = load_recording(path)
            assert rate == 8000 and 0.2 < len(samples) / rate < 2.5, path
            assert np.sqrt(np.mean(samples**2)) > 0.01, path
        assert (Path(speaker.files[0]).parent.parent / "copyright").is_file()
