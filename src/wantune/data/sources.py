"""Dataset sources: list the media files of one `[[datasets]]` entry (folder or JSONL).

Folders: the files directly in `path`, plus those in `path/images` and `path/videos` when present (the
sibling layout with `path/captions`). Hidden files and caption files are ignored; other files that are
neither image nor video are reported; `kind = "images"` / `"videos"` keeps one kind and leaves the
other out. JSONL: one object per line with "path" (relative to the JSONL's
folder), optional "caption" and optional "control".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from wantune.data.config import DatasetEntry
from wantune.data.video import media_kind

Problem = tuple[Path | str, str]
JSONL_KEYS = ("path", "caption", "control")


@dataclass(frozen=True)
class MediaItem:
    """A media file of a dataset with what its listing says about it."""

    path: Path
    """The image or video file."""
    caption: str | None = None
    """Inline caption (JSONL), which wins over caption files."""
    control: Path | None = None
    """Control file (JSONL "control")."""


def list_media(entry: DatasetEntry) -> tuple[list[MediaItem], list[Problem]]:
    """The media items of `entry` and the (path, reason) of what cannot be used."""
    path = entry.path
    if not path.exists():
        return [], [(path, "dataset path does not exist")]
    kind = entry.kind
    if kind == "auto":
        kind = "jsonl" if path.is_file() and path.suffix.lower() == ".jsonl" else "folder"
    if kind == "jsonl":
        if not path.is_file():
            return [], [(path, "kind = \"jsonl\" but the path is not a file")]
        items, problems = _read_jsonl(path)
    else:
        items, problems = _list_folder(path, entry.caption_extension)
    return _filter_kind(items, problems, entry.kind)


def _list_folder(path: Path, caption_extension: str) -> tuple[list[MediaItem], list[Problem]]:
    if path.is_file():
        return ([MediaItem(path)], []) if media_kind(path) else ([], [(path, "not an image or video file")])
    folders = [path] + [path / name for name in ("images", "videos") if (path / name).is_dir()]
    items, problems = [], []
    for folder in folders:
        for file in sorted(folder.iterdir()):
            if file.is_dir() or file.name.startswith("."):
                continue
            if media_kind(file):
                items.append(MediaItem(file))
            elif file.suffix.lower() not in (caption_extension, ".txt", ".json", ".jsonl", ".toml", ".md"):
                problems.append((file, f"not an image or video file (extension {file.suffix or 'none'})"))
    return items, problems


def _read_jsonl(path: Path) -> tuple[list[MediaItem], list[Problem]]:
    items, problems = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [], [(path, f"cannot read the JSONL file ({exc})")]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append((where, f"not valid JSON ({exc.msg})"))
            continue
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            problems.append((where, 'each line must be an object with a "path" string'))
            continue
        unknown = sorted(set(row) - set(JSONL_KEYS))
        if unknown:
            problems.append((where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(JSONL_KEYS)}"))
            continue
        control = row.get("control")
        items.append(MediaItem(_relative(path.parent, row["path"]), row.get("caption"),
                               _relative(path.parent, control) if isinstance(control, str) else None))
    return items, problems


def _relative(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _filter_kind(items: list[MediaItem], problems: list[Problem], kind: str
                 ) -> tuple[list[MediaItem], list[Problem]]:
    """kind = images / videos: keep that kind only; files of the other kind are left out silently, so two
    entries can share one folder (and its captions/), one for its images and one for its videos."""
    if kind not in ("images", "videos"):
        return items, problems
    wanted = kind[:-1]
    return [item for item in items if media_kind(item.path) == wanted], problems
