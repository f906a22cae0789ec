"""Concept specs of the toy world: what a clip may show, as TOML/JSON (a typed dataclass).

A spec lists, per attribute, the options a clip draws from; each option is a value string, or a table
`{value = "...", words = "..."}` that also names it in captions:

    shape      circle | square | triangle | diamond | cross | polygon:N | star:N[,inner] | ellipse:aspect
               | rect:aspect
    color      #RRGGBB
    motion     still | linear:dx,dy (px/frame) | orbit:radius[,turns] (turns per clip, + = counter-clockwise
               on screen) | zoom:rate (size factor per frame) | rotate:degrees (per frame, spin in place,
               + = counter-clockwise)
    background solid:#RRGGBB | stripes:#A,#B,width[,angle] | checker:#A,#B,size | gradient:#A,#B[,angle]

Captions come from `captions` templates with {shape} {color} {motion} {background} {trigger} fields.
Any new concept is a new spec: no code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from wantune import config as typed
from wantune.errors import UserError

CONCEPTS_DIR = Path(__file__).resolve().parents[3] / "examples" / "concepts"

NAMED_COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 190), "pink": (240, 120, 180), "cyan": (40, 200, 220),
    "white": (245, 245, 245), "black": (20, 20, 20), "grey": (128, 128, 128), "brown": (130, 80, 40),
    "navy": (20, 30, 100), "teal": (20, 130, 130), "lime": (160, 230, 40), "magenta": (220, 40, 200),
}

SHAPE_WORDS = {"circle": "circle", "square": "square", "triangle": "triangle", "diamond": "diamond",
               "cross": "cross"}
POLYGON_WORDS = {3: "triangle", 4: "square", 5: "pentagon", 6: "hexagon", 7: "heptagon", 8: "octagon"}


@dataclass
class Option:
    """One choice of an attribute, with its caption words."""

    value: str
    """The attribute value, e.g. 'star:5', '#e03c31', 'linear:1.5,0', 'stripes:#fff,#000,4'."""
    words: str = ""
    """How captions name it (may contain {trigger}); empty: a default name derived from the value."""


@dataclass
class Recipe:
    """How `wantune bench learn` trains a LoRA of this concept when no flag says otherwise (unset: the bench's
    default). A concept's measured best recipe lives with the concept, so a new concept needs no code."""

    clips: int | None = None
    """Training clips of the concept."""
    steps: int | None = None
    """LoRA training steps."""
    batch_size: int | None = None
    """Clips per step."""
    rank: int | None = None
    """LoRA rank (alpha = rank)."""
    lr: float | None = None
    """AdamW learning rate."""
    prior_clips: int | None = None
    """Base-world clips added as a regularisation dataset."""
    prior_target: str | None = None
    """"data" or "base" (`regularisation.prior_target`)."""
    dop_multiplier: float | None = None
    """Weight of the DOP preservation loss."""
    temporal_weight: float | None = None
    """Weight of the frame-difference (motion) loss (`regularisation.temporal_weight`)."""
    strength: float | None = None
    """The strength the concept's LoRA is used (and judged) at, for the concept's and the base world's prompts."""
    mask_min_weight: float | None = None
    """Masked loss: train on the objects' exact masks with the background weighted this much (unset: off)."""
    ema_decay: float | None = None
    """An EMA of the LoRA weights (`regularisation.ema_decay`), whose weights are then the ones judged (unset: off)."""

    def validate(self) -> None:
        if self.prior_target not in (None, "data", "base"):
            raise UserError(f"recipe.prior_target '{self.prior_target}': must be \"data\" or \"base\"")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise UserError(f"recipe.ema_decay {self.ema_decay}: must be within [0, 1) (e.g. 0.995)")


@dataclass
class ConceptSpec:
    """A concept of the toy world: the options each clip draws from, sizes, speeds and captions."""

    name: str
    """Short name of the concept (used in file names and reports)."""
    shape: str | Option | list[str | Option]
    """Shape options."""
    color: str | Option | list[str | Option]
    """Fill colour options (#RRGGBB)."""
    motion: str | Option | list[str | Option] = field(default_factory=lambda: ["still"])
    """Motion options."""
    background: str | Option | list[str | Option] = field(default_factory=lambda: ["solid:#808080"])
    """Background options."""
    trigger: str = ""
    """Trigger word of a LoRA concept ('' for the base world); templates place it with {trigger}."""
    class_word: str = ""
    """What the trigger is an instance of ('shape', 'pattern'): replaces it in DOP's preservation prompts."""
    captions: list[str] = field(default_factory=lambda: ["a {color} {shape} {motion} on {background}"])
    """Caption templates; one is drawn per clip."""
    size: tuple[float, float] = (9.0, 13.0)
    """Range of the shape's circumradius in pixels (at the spec's width)."""
    speed: tuple[float, float] = (0.8, 1.2)
    """Range of the factor applied to the motion's magnitude."""
    rotation: tuple[float, float] = (0.0, 0.0)
    """Range of the shape's starting orientation in degrees (+ turns clockwise on screen, y pointing down)."""
    width: int = 64
    """Frame width in pixels."""
    height: int = 64
    """Frame height in pixels."""
    frames: int = 17
    """Frames per clip (4n+1 for Wan)."""
    fps: int = 16
    """Frames per second."""
    description: str = ""
    """Free text: what the concept is for."""
    recipe: Recipe = field(default_factory=Recipe)
    """The LoRA recipe `wantune bench learn` uses for this concept (its flags override it)."""

    def validate(self) -> None:
        for attr, parse in (("shape", parse_shape), ("color", parse_color), ("motion", parse_motion),
                            ("background", parse_background)):
            options = self.options(attr)
            if not options:
                raise UserError(f"concept '{self.name}': '{attr}' has no options; give at least one")
            for option in options:
                parse(option.value)
        for key in ("size", "speed"):
            low, high = getattr(self, key)
            if not 0 < low <= high:
                raise UserError(f"concept '{self.name}': '{key}' must be [low, high] with 0 < low <= high")
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise UserError(f"concept '{self.name}': width/height must be even and >= 16")
        if self.frames < 1 or self.fps < 1:
            raise UserError(f"concept '{self.name}': frames and fps must be >= 1")
        self._check_contrast()

    def options(self, attr: str) -> list[Option]:
        """The options of 'shape', 'color', 'motion' or 'background' as Option objects."""
        raw = getattr(self, attr)
        items = [raw] if isinstance(raw, str | Option) else raw
        return [o if isinstance(o, Option) else Option(str(o)) for o in items]

    def _check_contrast(self) -> None:
        for color in self.options("color"):
            rgb = parse_color(color.value)
            for background in self.options("background"):
                for bg_rgb in parse_background(background.value).colors:
                    if color_distance(rgb, bg_rgb) < 0.35:
                        raise UserError(f"concept '{self.name}': colour {color.value} is too close to background "
                                        f"colour {rgb_to_hex(bg_rgb)} of {background.value}; the shape would "
                                        f"not be visible (pick colours at least 0.35 apart in RGB)")


# ------------------------------------------------------------------------------------------- parsed values

@dataclass(frozen=True)
class Shape:
    """A parsed shape: kind plus its integer count (polygons, stars) and ratio (star inner radius, aspect)."""

    kind: str
    n: int = 0
    ratio: float = 0.0


@dataclass(frozen=True)
class Motion:
    """A parsed motion: kind plus numeric parameters."""

    kind: str
    params: tuple[float, ...] = ()


@dataclass(frozen=True)
class Background:
    """A parsed background: kind, its colours (RGB 0..255), a size (stripe width, cell) and an angle."""

    kind: str
    colors: tuple[tuple[int, int, int], ...]
    size: float = 0.0
    angle: float = 0.0


def _numbers(value: str, text: str, count: tuple[int, int]) -> list[float]:
    parts = [p for p in text.split(",") if p.strip()] if text else []
    if not count[0] <= len(parts) <= count[1]:
        raise UserError(f"'{value}': expected {count[0]}..{count[1]} numbers after ':'")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise UserError(f"'{value}': parameters must be numbers") from None


def parse_shape(value: str) -> Shape:
    """'circle', 'polygon:6', 'star:5,0.45', 'ellipse:1.6' ... as a Shape; UserError if unknown."""
    kind, _, rest = value.strip().lower().partition(":")
    if kind in SHAPE_WORDS and not rest:
        return Shape(kind)
    if kind == "polygon":
        (n,) = _numbers(value, rest, (1, 1))
        if n < 3 or n != int(n):
            raise UserError(f"'{value}': a polygon needs an integer N >= 3")
        return Shape("polygon", int(n))
    if kind == "star":
        nums = _numbers(value, rest, (1, 2))
        if nums[0] < 3 or nums[0] != int(nums[0]):
            raise UserError(f"'{value}': a star needs an integer N >= 3 points")
        inner = nums[1] if len(nums) > 1 else 0.45
        if not 0.1 <= inner < 1:
            raise UserError(f"'{value}': star inner radius must be in [0.1, 1)")
        return Shape("star", int(nums[0]), inner)
    if kind in ("ellipse", "rect"):
        (aspect,) = _numbers(value, rest, (1, 1))
        if not 1 <= aspect <= 4:
            raise UserError(f"'{value}': aspect must be in [1, 4]")
        return Shape(kind, 0, aspect)
    raise UserError(f"shape '{value}': unknown; use circle, square, triangle, diamond, cross, polygon:N, star:N, "
                    f"ellipse:aspect or rect:aspect")


def parse_color(value: str) -> tuple[int, int, int]:
    """'#RRGGBB' (or '#RGB') as an RGB tuple; UserError otherwise."""
    text = value.strip()
    if text.startswith("#") and len(text) == 4:
        text = "#" + "".join(c * 2 for c in text[1:])
    try:
        if not text.startswith("#") or len(text) != 7:
            raise ValueError
        return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    except ValueError:
        raise UserError(f"colour '{value}': expected #RRGGBB") from None


def parse_motion(value: str) -> Motion:
    """'still', 'linear:dx,dy', 'orbit:r[,turns]', 'zoom:rate', 'rotate:deg' as a Motion."""
    kind, _, rest = value.strip().lower().partition(":")
    if kind == "still" and not rest:
        return Motion("still")
    if kind == "linear":
        return Motion("linear", tuple(_numbers(value, rest, (2, 2))))
    if kind == "orbit":
        nums = _numbers(value, rest, (1, 2))
        if nums[0] <= 0:
            raise UserError(f"'{value}': orbit radius must be > 0")
        return Motion("orbit", (nums[0], nums[1] if len(nums) > 1 else 1.0))
    if kind == "zoom":
        (rate,) = _numbers(value, rest, (1, 1))
        if rate <= 0 or rate == 1:
            raise UserError(f"'{value}': zoom rate is a size factor per frame, > 0 and != 1")
        return Motion("zoom", (rate,))
    if kind == "rotate":
        return Motion("rotate", tuple(_numbers(value, rest, (1, 1))))
    raise UserError(f"motion '{value}': unknown; use still, linear:dx,dy, orbit:radius[,turns], zoom:rate or "
                    f"rotate:degrees")


def parse_background(value: str) -> Background:
    """'solid:#hex', 'stripes:#A,#B,width[,angle]', 'checker:#A,#B,size', 'gradient:#A,#B[,angle]'."""
    kind, _, rest = value.strip().partition(":")
    kind = kind.lower()
    parts = [p.strip() for p in rest.split(",")] if rest else []
    if kind == "solid" and len(parts) == 1:
        return Background("solid", (parse_color(parts[0]),))
    if kind in ("stripes", "checker", "gradient") and len(parts) >= 2:
        colors = (parse_color(parts[0]), parse_color(parts[1]))
        nums = _numbers(value, ",".join(parts[2:]), {"stripes": (1, 2), "checker": (1, 1),
                                                     "gradient": (0, 1)}[kind])
        if kind == "gradient":
            return Background(kind, colors, 0.0, nums[0] if nums else 90.0)
        if nums[0] < 1:
            raise UserError(f"'{value}': stripe width / checker size must be >= 1 px")
        return Background(kind, colors, nums[0], nums[1] if len(nums) > 1 else 0.0)
    raise UserError(f"background '{value}': unknown; use solid:#RRGGBB, stripes:#A,#B,width[,angle], "
                    f"checker:#A,#B,size or gradient:#A,#B[,angle]")


# ------------------------------------------------------------------------------------------- names

def color_distance(a, b) -> float:
    """Euclidean distance of two RGB colours (0..255) scaled to [0, 1]-channel units."""
    return math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))) / 255.0


def rgb_to_hex(rgb) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def color_name(rgb) -> str:
    """The nearest name in NAMED_COLORS."""
    return min(NAMED_COLORS, key=lambda name: color_distance(NAMED_COLORS[name], rgb))


def default_words(attr: str, value: str) -> str:
    """Caption words for an option without explicit words."""
    if attr == "color":
        return color_name(parse_color(value))
    if attr == "shape":
        shape = parse_shape(value)
        if shape.kind == "polygon":
            return POLYGON_WORDS.get(shape.n, f"{shape.n}-sided polygon")
        if shape.kind == "star":
            return "star" if shape.n == 5 else f"{shape.n}-pointed star"
        return {"ellipse": "oval", "rect": "rectangle"}.get(shape.kind, shape.kind)
    if attr == "motion":
        return _motion_words(parse_motion(value))
    return _background_words(parse_background(value))


def _motion_words(motion: Motion) -> str:
    if motion.kind == "still":
        return "standing still"
    if motion.kind == "linear":
        dx, dy = motion.params
        horizontal = "right" if dx > 0 else "left"
        vertical = "down" if dy > 0 else "up"
        if abs(dy) < 0.4 * abs(dx):
            return f"moving {horizontal}"
        if abs(dx) < 0.4 * abs(dy):
            return f"moving {vertical}"
        return f"moving {vertical} and {horizontal}"
    if motion.kind == "orbit":
        return "circling " + ("counter-clockwise" if motion.params[1] > 0 else "clockwise")
    if motion.kind == "zoom":
        return "growing" if motion.params[0] > 1 else "shrinking"
    return "spinning"


def _background_words(background: Background) -> str:
    names = [color_name(c) for c in background.colors]
    if background.kind == "solid":
        return f"a {names[0]} background"
    if background.kind == "stripes":
        return f"{names[0]} and {names[1]} stripes"
    if background.kind == "checker":
        return f"a {names[0]} and {names[1]} checkerboard"
    return f"a {names[0]} to {names[1]} gradient"


# ------------------------------------------------------------------------------------------- loading

def builtin_concepts() -> list[str]:
    """Names of the concept specs shipped in examples/concepts."""
    return sorted(p.stem for p in CONCEPTS_DIR.glob("*.toml")) if CONCEPTS_DIR.is_dir() else []


def load_concept(source: str | Path | dict) -> ConceptSpec:
    """A ConceptSpec from a TOML/JSON file, a dict, or the name of a built-in concept."""
    if isinstance(source, dict):
        return typed.load(ConceptSpec, source)
    path = Path(source)
    if not path.is_file() and path.suffix == "" and (CONCEPTS_DIR / f"{path.name}.toml").is_file():
        path = CONCEPTS_DIR / f"{path.name}.toml"
    if not path.is_file():
        known = ", ".join(builtin_concepts()) or "none"
        raise UserError(f"{source}: concept spec not found; give a .toml/.json file or a built-in name ({known})")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid JSON ({exc}); fix the file") from None
        return _load_dict(data, str(path))
    return typed.load(ConceptSpec, path)


def _load_dict(data, where: str) -> ConceptSpec:
    if not isinstance(data, dict):
        raise UserError(f"{where}: a concept spec must be an object")
    try:
        return typed.load(ConceptSpec, data)
    except UserError as exc:
        raise UserError(str(exc).replace("config:", f"{where}:", 1)) from None


def concept_to_dict(spec: ConceptSpec) -> dict:
    """The spec as plain data (what `load_concept` reads back)."""
    return typed.to_dict(spec)
