"""Captions: find a media file's caption, fall back to the default, substitute the trigger word.

Lookup order for `clip.mp4` with extension `.txt`:
1. `clip.txt` beside the file;
2. `../captions/clip.txt` when the file sits in an `images/` or `videos/` folder (sibling layout);
3. the dataset's `default_caption`.
A caption file is read as UTF-8, its lines joined with spaces. An empty caption file counts as missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wantune.errors import UserError

SIBLING_MEDIA_DIRS = ("images", "videos")
TRIGGER_TOKEN = "[trigger]"


@dataclass(frozen=True)
class Caption:
    """A resolved caption and where it came from."""

    text: str
    """The caption after trigger substitution."""
    source: str
    """'file' or 'default'."""
    path: Path | None = None
    """The caption file, when source is 'file'."""


def caption_candidates(media: Path, extension: str = ".txt") -> list[Path]:
    """Caption files that may describe `media`, in lookup order."""
    candidates = [media.with_suffix(extension)]
    if media.parent.name in SIBLING_MEDIA_DIRS:
        candidates.append(media.parent.parent / "captions" / (media.stem + extension))
    return candidates


def read_caption_file(path: Path) -> str:
    """A caption file's text with lines joined by spaces; UserError if not UTF-8."""
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: caption is not UTF-8 text; re-save it as UTF-8") from None
    return " ".join(line.strip() for line in raw.splitlines() if line.strip())


def apply_trigger(text: str, trigger: str | None) -> str:
    """`text` with every `[trigger]` replaced by the trigger word (unchanged without one)."""
    return text.replace(TRIGGER_TOKEN, trigger) if trigger else text


def find_caption(media: Path, extension: str = ".txt", default: str | None = None,
                 trigger: str | None = None, inline: str | None = None) -> Caption | None:
    """The caption of `media` (an inline JSONL caption wins), or None when none exists and no default."""
    if inline is not None and inline.strip():
        return Caption(apply_trigger(inline.strip(), trigger), "inline")
    for candidate in caption_candidates(media, extension):
        if candidate.is_file():
            text = read_caption_file(candidate)
            if text:
                return Caption(apply_trigger(text, trigger), "file", candidate)
    if default is not None:
        return Caption(apply_trigger(default, trigger), "default")
    return None


def missing_caption_reason(media: Path, extension: str = ".txt") -> str:
    """Why a file has no caption, naming the files looked for."""
    looked = " or ".join(str(p) for p in caption_candidates(media, extension))
    return f"no caption ({looked} missing or empty) and no default_caption"
