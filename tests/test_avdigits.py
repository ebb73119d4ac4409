"""AV-digits builder: real MP4 files, the real eSpeak NG library, real asterisk recordings when
installed. Small corpora (10-20 clips per split) keep the module well under a minute."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from avindex.daemon.media import AudioSpec, VisualSpec, decode_media
from avindex.training.avdigits import cli, espeak
from avindex.training.avdigits.build import MANIFEST_COLUMNS, build_corpus
from avindex.training.avdigits.render import render_frames
from avindex.training.avdigits.sources import (
    ESPEAK_DIALECTS,
    LANGUAGES,
    discover_asterisk,
    load_mnist,
    load_recording,
)

SIZES = {"n_train": 20, "n_val": 10, "n_test": 10}
ASTERISK = discover_asterisk()


def _rows(manifest: Path) -> list[dict]:
    with manifest.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file the builder wrote, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("avd"), seed=0, workers=2, **SIZES)


@pytest.fixture(scope="module")
def rows(corpus) -> list[dict]:
    return _rows(corpus)


def test_same_seed_gives_identical_files_whatever_the_worker_count(corpus, tmp_path):
    again = build_corpus(tmp_path / "again", seed=0, workers=1, **SIZES)
    first, second = _digest(corpus.parent), _digest(again.parent)
    assert len(first) == sum(SIZES.values()) + 3  # clips + manifest, card, contact sheet
    assert first == second


def test_other_seed_gives_another_corpus(corpus, tmp_path):
    other = build_corpus(tmp_path / "other", seed=1, workers=2, **SIZES)
    assert other.read_bytes() != corpus.read_bytes()
    a, b = _rows(corpus), _rows(other)
    assert [r["image_index"] for r in a] != [r["image_index"] for r in b]


def test_every_clip_decodes_with_its_manifest_duration_and_speech_where_stated(corpus, rows):
    assert list(rows[0]) == MANIFEST_COLUMNS
    visual, audio = VisualSpec(fps=8, size=64, max_frames=64), AudioSpec(sample_rate=16000)
    for row in rows:
        decoded = decode_media(corpus.parent / row["path"], visual, audio)
        duration = float(row["duration_s"])
        assert decoded.modalities == ["visual", "audio"], row["id"]
        assert abs(decoded.duration_s - duration) < 0.05, row["id"]
        assert len(decoded.frames) == int(row["n_frames"]), row["id"]
        assert abs(len(decoded.audio) / 16000 - duration) < 0.1, row["id"]
        # The word is where the manifest says: louder there than in the rest of the clip.
        start = int(float(row["speech_onset_s"]) * 16000)
        end = start + int(float(row["speech_duration_s"]) * 16000)
        inside = np.mean(decoded.audio[start:end] ** 2)
        outside = np.mean(np.concatenate([decoded.audio[:start], decoded.audio[end:]]) ** 2)
        assert inside > 1.4 * outside, row["id"]


def test_splits_are_disjoint_by_person_and_image_and_complete(corpus, rows):
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in by_split.items()} == {"train": 20, "val": 10, "test": 10}
    persons = {s: {r["person"] for r in v} for s, v in by_split.items()}
    images = {s: {r["image_index"] for r in v} for s, v in by_split.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not persons[a] & persons[b], (a, b)
        assert not images[a] & images[b], (a, b)
    _, labels = load_mnist()
    for split, members in by_split.items():
        assert {int(r["label"]) for r in members} == set(range(10)), split
        assert all(labels[int(r["image_index"])] == int(r["label"]) for r in members)
        spoken = {r["language"] for r in members if r["speaker_kind"] == "espeak"}
        assert spoken == set(LANGUAGES), split
    card = json.loads((corpus.parent / "corpus.json").read_text())
    assert card["seed"] == 0 and set(card["licences"]) >= {"mnist", "asterisk", "espeak"}
    assert set(card["splits"]["test"]["persons"]) >= persons["test"]
    assert (corpus.parent / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(len({s.person for s in ASTERISK}) < 2,
                    reason="needs >= 2 asterisk-core-sounds-*-wav voices in /usr/share/asterisk")
def test_human_persons_are_in_train_and_in_test(rows):
    humans = {(r["split"], r["person"]) for r in rows if r["speaker_kind"] == "human"}
    assert {s for s, _ in humans} >= {"train", "test"}


@pytest.mark.skipif(not ASTERISK, reason="asterisk-core-sounds-*-wav not installed")
def test_asterisk_voices_are_found_and_grouped_by_person():
    persons: dict[str, set[str]] = {}
    for speaker in ASTERISK:
        persons.setdefault(speaker.person, set()).add(speaker.language)
        samples, rate = load_recording(speaker.files[7])
        assert rate == 8000 and 0.2 < len(samples) / rate < 2.0
        assert np.sqrt(np.mean(samples**2)) > 0.01
    names = [s.name for s in ASTERISK]
    assert len(names) == len(set(names))  # the en -> en_US_f_Allison links are not double-counted
    if "Allison" in persons:  # one person, two languages: kept together
        assert persons["Allison"] >= {"en", "es"}


def test_the_shortest_word_at_the_fastest_rate_counts_as_speech():
    """French "un" at the corpus's top rate (200 words/min x 1.1) lasts about 95 ms: a build
    once stopped on it when the floor was 100 ms."""
    from avindex.training.avdigits.build import _speak

    pcm, rate = _speak(("1", "fr+antonio", 220, 80, 50))
    assert 0.05 < len(pcm) / rate < 0.2


def test_espeak_speaks_digits_in_every_language():
    engine = espeak.engine()
    for language in LANGUAGES:
        for accent in ESPEAK_DIALECTS[language]:
            pcm = engine.synth("7", f"{accent}+m3")
            seconds = len(pcm) / engine.sample_rate
            rms = np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) / 32768
            assert 0.2 < seconds < 1.5, accent
            assert rms > 0.02, accent
    # a slower rate gives a longer word
    slow = engine.synth("7", "en-us+f2", rate=90)
    fast = engine.synth("7", "en-us+f2", rate=300)
    assert len(slow) > 1.5 * len(fast)
    assert len(espeak.voice_variants()) >= 20
    with pytest.raises(espeak.EspeakError):  # no silent fallback to the plain voice
        engine.synth("7", "fr+no_such_variant")


def test_digit_stays_inside_the_square_that_decoding_keeps():
    """decode_media centre-crops to a square: no ink may leave it, whatever the motion."""
    images, _ = load_mnist()
    for k in range(60):
        digit = images[(k * 83) % len(images)]
        with_ink, info = render_frames(digit, 12, np.random.default_rng([3, k]))
        without, _ = render_frames(np.zeros_like(digit), 12, np.random.default_rng([3, k]))
        ink = np.abs(with_ink.astype(int) - without.astype(int)).max(axis=-1) > 40
        side = min(info["width"], info["height"])
        top, left = (info["height"] - side) // 2, (info["width"] - side) // 2
        square = ink[:, top : top + side, left : left + side]
        assert ink.any() and square.sum() == ink.sum(), k
        edges = (square[:, 0], square[:, -1], square[:, :, 0], square[:, :, -1])
        assert not any(edge.any() for edge in edges), k


def _write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.astype("<i2").tobytes())


def test_speaker_dir_adds_a_speaker_in_its_forced_split(tmp_path):
    voice = tmp_path / "my_voice"
    voice.mkdir()
    engine = espeak.engine()
    for digit in range(10):
        _write_wav(voice / f"{digit}.wav", engine.synth(str(digit), "en-gb-scotland+f4"),
                   engine.sample_rate)
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["--out", str(tmp_path / "out"), "--train", "10", "--val", "10",
                              "--test", "10", "--speaker-dir", f"{voice}=test",
                              "--workers", "1"])
    assert cli.main(args) == 0
    rows = _rows(tmp_path / "out" / "manifest.csv")
    mine = [r for r in rows if r["speaker"] == "my_voice"]
    assert mine and {r["split"] for r in mine} == {"test"}
    assert {(r["speaker_kind"], r["person"], r["source_rate"]) for r in mine} == {
        ("human", "human:my_voice", str(engine.sample_rate))}
    decoded = decode_media(tmp_path / "out" / mine[0]["path"], None, AudioSpec())
    assert decoded.audio is not None and np.abs(decoded.audio).max() > 0.01


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 10"):
        build_corpus(tmp_path, n_train=5)
    with pytest.raises(ValueError, match="split"):
        cli.parse_speaker_dir(f"{tmp_path}=holdout")
    assert cli.parse_speaker_dir(f"{tmp_path}=val") == (tmp_path, "val")
