"""Specs and clips for testing the judge: a clip's own spec, specs one attribute off, VAE-like degradation.

Legend: frames_FHWC uint8 RGB clips.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from wantune.toy.judge import SIMILAR, similarity
from wantune.toy.segment import gaussian_blur
from wantune.toy.spec import NAMED_COLORS, ConceptSpec, color_distance, parse_background, parse_color, rgb_to_hex

ATTRIBUTES = ("shape", "color", "motion", "background")
SHAPE_POOL = ("circle", "square", "diamond", "triangle", "cross", "star:5", "star:6", "polygon:5", "ellipse:2",
              "rect:2")
MOTION_POOL = ("still", "linear:1.5,0", "linear:-1.5,0", "linear:0,1.5", "linear:0,-1.5", "linear:1.2,1.2",
               "orbit:14,1", "orbit:14,-1", "zoom:1.04", "zoom:0.96")
BACKGROUND_POOL = ("solid:#f5f5f5", "solid:#808080", "solid:#141414", "solid:#1e2a64", "stripes:#f5f5f5,#141414,4",
                   "stripes:#f5f5f5,#141414,6", "stripes:#f5f5f5,#141414,4,90", "stripes:#808080,#141414,3",
                   "checker:#f5f5f5,#808080,6", "checker:#141414,#808080,8", "gradient:#141414,#f5f5f5",
                   "gradient:#808080,#f5f5f5,0")
COLOR_APART = 0.35
"""A wrong colour is at least this far (RGB, [0, 1] channels) from the true one."""


def instance_spec(spec: ConceptSpec, truth: dict) -> ConceptSpec:
    """The spec of one rendered clip: its own shape, colour, motion and background as the only options."""
    return dataclasses.replace(spec, shape=[truth["shape"]], color=[truth["color"]], motion=[truth["motion"]],
                               background=[truth["background"]])


def _background_colors(value: str) -> list:
    return list(parse_background(value).colors)


def _visible(color: str, background: str) -> bool:
    return all(color_distance(parse_color(color), c) >= COLOR_APART for c in _background_colors(background))


def wrong_value(attr: str, truth: dict, rng: np.random.Generator) -> str:
    """A value of `attr` clearly different from the clip's (the judge must reject it)."""
    if attr == "shape":
        pool = [s for s in SHAPE_POOL if s != truth["shape"] and similarity(truth["shape"], s) <= SIMILAR
                and similarity(s, truth["shape"]) <= SIMILAR]
    elif attr == "color":
        true_rgb = parse_color(truth["color"])
        pool = [rgb_to_hex(c) for c in NAMED_COLORS.values() if color_distance(c, true_rgb) >= COLOR_APART
                and _visible(rgb_to_hex(c), truth["background"])]
    elif attr == "motion":
        pool = [m for m in MOTION_POOL if m != truth["motion"]]
    else:
        pool = [b for b in BACKGROUND_POOL if b != truth["background"] and _visible(truth["color"], b)]
    return pool[int(rng.integers(len(pool)))]


def off_by_one(spec: ConceptSpec, truth: dict, attr: str, rng: np.random.Generator) -> ConceptSpec:
    """The clip's own spec with `attr` replaced by a clearly different value."""
    return dataclasses.replace(instance_spec(spec, truth), **{attr: [wrong_value(attr, truth, rng)]})


def degrade(frames_FHWC: np.ndarray, rng: np.random.Generator, blur: float = 1.0, noise: float = 0.03,
            shift: float = 0.03) -> np.ndarray:
    """VAE-like damage: Gaussian blur (pixels), Gaussian noise and a global colour shift (fractions of 255)."""
    frames = frames_FHWC.astype(np.float64)
    frames = gaussian_blur(frames, blur, (1, 2))
    frames += rng.normal(0.0, noise * 255, frames.shape) + rng.uniform(-shift, shift, 3) * 255
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)
