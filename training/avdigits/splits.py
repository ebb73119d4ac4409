"""Who speaks and which images are shown in each split.

Splits are disjoint by *person* (a human is one person in every language they recorded; an eSpeak
voice variant such as `m3` is one "person" across the accents it is given) and by MNIST image,
so test scores measure generalisation to unseen voices and unseen handwriting.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .espeak import VoiceVariant
from .sources import ESPEAK_DIALECTS, LANGUAGES, HumanSpeaker

__all__ = ["SPLITS", "Speaker", "apportion", "assign_humans", "espeak_roster",
           "partition_images"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ENGLISH_SHARE = 0.5  # of eSpeak speakers; es, fr and it share the rest equally
SPEAKERS_PER_VARIANT = 2  # each eSpeak timbre speaks with two accents/base pitches
ESPEAK_LICENCE = "GPL-3.0-or-later (eSpeak NG)"
# Human voices kept in one split whatever the seed (a split given with --speaker-dir wins): test
# always holds June (fr) and val Carlo (it), so test scores on a human voice stay comparable
# across seeds and corpus versions, and model selection always sees a human voice.
PINNED_SPLITS = {"June": "test", "Carlo": "val"}


@dataclass(frozen=True)
class Speaker:
    """One voice of the corpus. `person` is the unit kept within one split."""

    name: str
    person: str
    kind: str  # human | espeak
    language: str
    split: str
    files: tuple[Path, ...] = ()  # human: digit d is files[d]
    voice: str = ""  # espeak: "<accent>+<variant>"
    rate: int = 175  # espeak base words per minute
    pitch: int = 50  # espeak base pitch 0-100
    pitch_range: int = 50  # espeak base intonation range 0-100
    licence: str = ""


def apportion(total: int, weights: list[float], minimum: int = 0) -> list[int]:
    """Split `total` into integer parts ∝ `weights` (largest remainder), each >= `minimum`."""
    if total < minimum * len(weights):
        raise ValueError(f"cannot give {len(weights)} parts at least {minimum} from {total}")
    weights_arr = np.asarray(weights, dtype=np.float64)
    free = total - minimum * len(weights)
    exact = free * weights_arr / weights_arr.sum()
    parts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - parts), kind="stable")
    parts[order[: free - parts.sum()]] += 1
    return [int(p) + minimum for p in parts]


def assign_humans(humans: list[HumanSpeaker], sizes: dict[str, int],
                  rng: np.random.Generator,
                  pinned: dict[str, str] = PINNED_SPLITS) -> list[Speaker]:
    """Place each human *person* in one split.

    Forced splits are kept, then `pinned` persons go to their split. The others go, largest
    person first (most recordings), to train, then test, then val until each has one, then to
    the split with the largest shortfall against its share of clips.
    """
    by_person: dict[str, list[HumanSpeaker]] = defaultdict(list)
    for human in humans:
        by_person[human.person].append(human)
    placed: dict[str, str] = {}
    for person, group in by_person.items():
        forced = {h.split for h in group if h.split}
        if len(forced) > 1:
            raise ValueError(f"person {person!r} is forced into several splits: {sorted(forced)}")
        if forced:
            placed[person] = forced.pop()
        elif person in pinned:
            placed[person] = pinned[person]
    free = sorted((p for p in by_person if p not in placed), key=str)
    free = [free[i] for i in rng.permutation(len(free))]
    free.sort(key=lambda p: -len(by_person[p]))  # stable: ties keep the random order
    total = sum(sizes.values())
    for person in free:
        count = {s: sum(1 for p in placed.values() if p == s) for s in SPLITS}
        empty = [s for s in ("train", "test", "val") if count[s] == 0]
        if empty:
            placed[person] = empty[0]
        else:
            n_placed = len(placed) + 1
            placed[person] = max(SPLITS, key=lambda s: sizes[s] / total * n_placed - count[s])
    return [
        Speaker(name=h.name, person=f"human:{h.person}", kind="human", language=h.language,
                split=placed[h.person], files=h.files, licence=h.licence)
        for h in sorted(humans, key=lambda h: h.name)
    ]


def espeak_roster(variants: tuple[VoiceVariant, ...], sizes: dict[str, int],
                  rng: np.random.Generator) -> list[Speaker]:
    """eSpeak speakers per split: voice variants partitioned ∝ split sizes (at least two each),
    each variant speaking with SPEAKERS_PER_VARIANT accents and base pitches. About half of the
    speakers of every split are English; every split has all four languages.
    """
    if len(variants) < 2 * len(SPLITS):
        raise ValueError(f"need at least {2 * len(SPLITS)} eSpeak voice variants, "
                         f"got {len(variants)}")
    order = [variants[i] for i in rng.permutation(len(variants))]
    counts = apportion(len(order), [sizes[s] for s in SPLITS], minimum=2)
    speakers = []
    start = 0
    for split, count in zip(SPLITS, counts, strict=True):
        chosen = order[start : start + count]
        start += count
        n = len(chosen) * SPEAKERS_PER_VARIANT
        other = (1 - ENGLISH_SHARE) / 3
        quota = apportion(n - len(LANGUAGES), [ENGLISH_SHARE, other, other, other])
        languages = list(LANGUAGES) + [lang for lang, q in zip(LANGUAGES, quota, strict=True)
                                       for _ in range(q)]
        languages = [languages[i] for i in rng.permutation(n)]
        for k, lang in enumerate(languages):
            variant = chosen[k // SPEAKERS_PER_VARIANT]
            accent = str(rng.choice(ESPEAK_DIALECTS[lang]))
            voice = f"{accent}+{variant.name}"
            speakers.append(Speaker(
                name=f"espeak:{voice}#{k % SPEAKERS_PER_VARIANT}",
                person=f"espeak:{variant.name}", kind="espeak", language=lang, split=split,
                voice=voice, rate=int(rng.integers(140, 201)), pitch=int(rng.integers(25, 76)),
                pitch_range=int(rng.integers(20, 81)), licence=ESPEAK_LICENCE,
            ))
    return speakers


def partition_images(labels: np.ndarray, sizes: dict[str, int],
                     rng: np.random.Generator) -> dict[str, dict[int, np.ndarray]]:
    """Image indices per split and digit: each digit's images divided ∝ split sizes."""
    out: dict[str, dict[int, np.ndarray]] = {s: {} for s in SPLITS}
    for digit in range(10):
        pool = np.flatnonzero(labels == digit)
        pool = pool[rng.permutation(len(pool))]
        counts = apportion(len(pool), [sizes[s] for s in SPLITS], minimum=1)
        start = 0
        for split, count in zip(SPLITS, counts, strict=True):
            out[split][digit] = np.sort(pool[start : start + count])
            start += count
    return out
