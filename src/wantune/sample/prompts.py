"""Prompt files: one prompt per line with musubi-style per-prompt flags.

    a red fox running through snow --w 832 --h 480 --f 81 --d 42 --s 30 --g 5.0 --n blurry, static --i fox.png

Flags (each optional; unset ones fall back to the command line / variant defaults): `--w` width, `--h` height,
`--f` frames, `--d` seed, `--s` steps, `--g` guidance, `--gl` low-noise guidance (A14B), `--fs` flow shift,
`--n` negative prompt, `--i` image (I2V/TI2V), `--li` last image (FLF2V). Blank lines and lines starting with
`#` are skipped. A flag value runs to the next ` --`, so negative prompts may contain spaces and commas.
Relative image paths are taken from the current folder, or else from the prompt file's folder.
Generation and the training previews both read this format.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from wantune.errors import UserError


@dataclass
class PromptSpec:
    """One generation request; None fields take the run's defaults."""

    prompt: str
    """The text prompt."""
    width: int | None = None
    """Width in pixels (`--w`)."""
    height: int | None = None
    """Height in pixels (`--h`)."""
    frames: int | None = None
    """Number of frames, 4n+1 (`--f`)."""
    seed: int | None = None
    """Noise seed (`--d`)."""
    steps: int | None = None
    """Sampling steps (`--s`)."""
    guidance: float | None = None
    """Guidance scale; the high-noise expert's for A14B (`--g`)."""
    guidance_low: float | None = None
    """A14B low-noise expert guidance (`--gl`)."""
    shift: float | None = None
    """Flow shift (`--fs`)."""
    negative_prompt: str | None = None
    """Negative prompt (`--n`)."""
    image: str | None = None
    """First-frame image path (`--i`)."""
    last_image: str | None = None
    """Last-frame image path, FLF2V (`--li`)."""

    def with_defaults(self, **defaults) -> PromptSpec:
        """A copy where every None field is replaced by the given default."""
        values = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **values)


_FLAGS: dict[str, tuple[str, type]] = {
    "w": ("width", int), "h": ("height", int), "f": ("frames", int), "d": ("seed", int),
    "s": ("steps", int), "g": ("guidance", float), "gl": ("guidance_low", float), "fs": ("shift", float),
    "n": ("negative_prompt", str), "i": ("image", str), "li": ("last_image", str),
}


def parse_prompt_line(line: str, where: str = "prompt") -> PromptSpec:
    """Parse `text --flag value ...` into a PromptSpec; `where` names the line in errors."""
    parts = (" " + line.strip()).split(" --")
    text = parts[0].strip()
    if not text:
        raise UserError(f"{where}: empty prompt before the flags; write the prompt first")
    values: dict = {}
    for part in parts[1:]:
        flag, _, raw = part.strip().partition(" ")
        raw = raw.strip()
        if flag not in _FLAGS:
            raise UserError(f"{where}: unknown flag --{flag}; known: {', '.join('--' + f for f in _FLAGS)}")
        field, kind = _FLAGS[flag]
        if not raw:
            raise UserError(f"{where}: --{flag} needs a value")
        try:
            values[field] = kind(raw)
        except ValueError:
            raise UserError(f"{where}: --{flag} {raw!r} is not a valid {kind.__name__}") from None
    return PromptSpec(prompt=text, **values)


def _beside(image: str | None, prompt_file: Path) -> str | None:
    """A relative image path that does not exist from here, taken from the prompt file's folder."""
    if image is None or Path(image).is_absolute() or Path(image).exists():
        return image
    candidate = prompt_file.parent / image
    return str(candidate) if candidate.exists() else image


def read_prompt_file(path: str | Path) -> list[PromptSpec]:
    """Every prompt of a prompt file (see the module docstring for the syntax)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: prompt file not found")
    specs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            spec = parse_prompt_line(line, where=f"{path}:{number}")
            specs.append(dataclasses.replace(spec, image=_beside(spec.image, path),
                                             last_image=_beside(spec.last_image, path)))
    if not specs:
        raise UserError(f"{path}: no prompts (one per line; '#' starts a comment)")
    return specs
