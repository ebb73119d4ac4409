"""More human voices for AV-digits: digit prompts from Debian packages, extracted, not installed.

asterisk-core-sounds gives four recorded voices (Allison in English and Spanish, June, Carlo).
With one human voice in training, retrieval of an unseen human voice lagged far behind eSpeak
voices (docs/training.md §8), so four more voices from Debian are used when present. Three of
them install their prompts through asterisk's language folders (`sounds/fr`, `sounds/es`),
where they would take over the links to the core voices; so all four are unpacked with
`dpkg-deb -x` into VOICES_DIR/<name>/digits instead (`avindex data voices`, run by
scripts/setup.sh). Nothing here needs root once the package lists exist.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .sources import HumanSpeaker, human_speaker

__all__ = ["VOICES", "DebianVoice", "discover_voices", "fetch_voices", "voices_dir"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DebianVoice:
    name: str  # asterisk-style folder name: <lang>_<REGION>_<sex>_<person>
    package: str
    folder: str  # inside the package: the folder holding digits/
    licence: str  # from the package's debian/copyright


VOICES = (
    DebianVoice("fr_FR_f_Armelle", "asterisk-prompt-fr-armelle", "usr/share/asterisk/sounds/fr",
                "GPL-2.0-or-later (Armelle Desjardins)"),
    DebianVoice("es_CO_f_July", "asterisk-prompt-es-co", "usr/share/asterisk/sounds/es",
                "GPL-2.0-only (Avatar Ltda. / July E. Jiménez)"),
    DebianVoice("it_IT_f_Menardi", "asterisk-prompt-it-menardi-wav",
                "usr/share/asterisk/sounds/it_IT_f_Menardi",
                "CC-BY-SA-3.0-IT (Marco Menardi and Paola Dal Zot)"),
    DebianVoice("ru_RU_f_IvrvoiceRU", "asterisk-core-sounds-ru-wav",
                "usr/share/asterisk/sounds/ru_RU_f_IvrvoiceRU", "CC-BY-3.0 (asterisk-core-sounds)"),
)


def voices_dir() -> Path:
    """Where extracted voices live: $AVINDEX_WEIGHTS_DIR/voices (default ~/.cache/avindex)."""
    return Path(os.environ.get("AVINDEX_WEIGHTS_DIR", "~/.cache/avindex")).expanduser() / "voices"


def discover_voices(root: Path | None = None) -> list[HumanSpeaker]:
    """The extracted voices of VOICES found under `root` (default voices_dir()), with licences."""
    root = voices_dir() if root is None else Path(root)
    found = []
    for voice in VOICES:
        folder = root / voice.name
        if (folder / "digits").is_dir():
            try:
                speaker = human_speaker(folder)
            except FileNotFoundError as exc:
                log.warning("skipping voice %s: %s", voice.name, exc)
                continue
            found.append(dataclasses.replace(
                speaker, licence=f"{voice.licence}, Debian {voice.package}"))
    return found


def _run(cmd: list[str], cwd: Path) -> bool:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        log.debug("%s failed: %s", " ".join(cmd), result.stderr.strip()[-300:])
    return result.returncode == 0


def fetch_voices(root: Path | None = None, update_lists: bool = True) -> dict[str, str]:
    """Download each missing voice's package with `apt-get download` and unpack its digits.

    Returns {voice name: "present" | "fetched" | reason it is missing}. When a download fails
    and we are root, the package lists are refreshed once (a fresh Debian image has none).
    """
    root = voices_dir() if root is None else Path(root)
    status: dict[str, str] = {}
    missing = [v for v in VOICES if not (root / v.name / "digits").is_dir()]
    status.update({v.name: "present" for v in VOICES if v not in missing})
    if not missing:
        return status
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return status | {v.name: "no apt-get/dpkg-deb (not Debian)" for v in missing}
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="avindex-voices-") as tmp:
        work = Path(tmp)
        packages = [v.package for v in missing]
        if not _run(["apt-get", "download", *packages], work) and update_lists \
                and os.geteuid() == 0:
            _run(["apt-get", "update", "-qq"], work)
        for voice in missing:
            if not any(work.glob(f"{voice.package}_*.deb")) \
                    and not _run(["apt-get", "download", voice.package], work):
                status[voice.name] = f"apt-get download {voice.package} failed"
                continue
            debs = sorted(work.glob(f"{voice.package}_*.deb"))
            unpacked = work / voice.name
            if not debs or not _run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], work):
                status[voice.name] = f"could not unpack {voice.package}"
                continue
            source = unpacked / voice.folder / "digits"
            if not source.is_dir():
                status[voice.name] = f"{voice.package} has no {voice.folder}/digits"
                continue
            target = root / voice.name
            partial = root / f".{voice.name}.part"
            shutil.rmtree(partial, ignore_errors=True)
            (partial / "digits").mkdir(parents=True)
            for item in source.iterdir():  # digits only: the rest of the prompts is not used
                if item.is_file() and item.stem.isdigit() and int(item.stem) < 10:
                    shutil.copy2(item, partial / "digits" / item.name)
            copyright_files = list(unpacked.glob("usr/share/doc/*/copyright"))
            if copyright_files:
                shutil.copy2(copyright_files[0], partial / "copyright")
            partial.replace(target)
            status[voice.name] = "fetched"
    return status
