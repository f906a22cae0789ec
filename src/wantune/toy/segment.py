"""Foreground/background separation of a toy clip against a spec's background, by measurement.

Legend: frames_FHWC float RGB in [0, 1]; residual_FHW distance (RGB, [0, 1] channels) of each pixel to the
fitted background; alpha_FHW the object's soft coverage; F frames, H x W pixels.

The background model comes from the spec (solid / stripes / checker / gradient with its nominal colours);
only its placement (pattern offset) is fitted, first on the temporal median frame, then refined per frame.
A pixel far from the fitted background (also after a small blur of the model, to forgive codec and VAE
softening) is foreground.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

from wantune.toy.spec import parse_background
from wantune.toy.world import render_background

UNEXPLAINED = 0.2
"""A pixel farther than this (RGB distance, channels in [0, 1]) from the background model is foreground."""
BLUR_SIGMAS = (0.0, 1.0)
"""The background model is compared unblurred and at these Gaussian blurs (pixels)."""


@dataclass
class Segmentation:
    """The fitted background and the foreground of every frame."""

    background: str
    """The background option that was fitted."""
    residual_FHW: np.ndarray
    """Per-pixel distance to the fitted background."""
    mask_FHW: np.ndarray
    """Foreground pixels (residual above UNEXPLAINED, isolated pixels removed)."""
    model_FHWC: np.ndarray
    """The fitted background of each frame, RGB in [0, 1]."""


def gaussian_blur(image: np.ndarray, sigma: float, axes: tuple[int, int]) -> np.ndarray:
    """Separable Gaussian blur over two axes (edge-replicated borders)."""
    if sigma <= 0:
        return image
    radius = max(1, int(round(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = image
    for axis in axes:
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(taps))
    return out


def box_count(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """How many pixels of the (2r+1)^2 neighbourhood are set, over the last two axes (zero padded)."""
    m = mask.astype(np.int32)
    pad = [(0, 0)] * (m.ndim - 2) + [(radius, radius), (radius, radius)]
    p = np.pad(m, pad)
    h, w = m.shape[-2:]
    total = np.zeros_like(m)
    for dy, dx in itertools.product(range(2 * radius + 1), repeat=2):
        total += p[..., dy:dy + h, dx:dx + w]
    return total


@functools.lru_cache(maxsize=512)
def _background(value: str, h: int, w: int, phase: tuple[float, float]) -> np.ndarray:
    model = render_background(value, h, w, phase) / 255.0
    model.flags.writeable = False
    return model


def _distance(frames: np.ndarray, model: np.ndarray) -> np.ndarray:
    return np.sqrt(((frames - model) ** 2).sum(axis=-1))


def _explained_distance(frame_HWC: np.ndarray, model_HWC: np.ndarray) -> np.ndarray:
    """Per-pixel distance to the model, the smallest over the blur levels."""
    return np.min([_distance(frame_HWC, gaussian_blur(model_HWC, s, (0, 1))) for s in BLUR_SIGMAS], axis=0)


def _along(value: str, offsets) -> list[tuple[float, float]]:
    """Stripe offsets measured across the stripes, as (x, y) pattern phases."""
    theta = math.radians(parse_background(value).angle)
    return [(d * math.cos(theta), d * math.sin(theta)) for d in offsets]


def _phase_candidates(value: str) -> list[tuple[float, float]]:
    """Coarse pattern offsets to try (1 px steps over one period)."""
    bg = parse_background(value)
    period = int(np.ceil(2 * bg.size))
    if bg.kind == "stripes":
        return _along(value, range(period))
    if bg.kind == "checker":
        return [(float(x), float(y)) for x in range(period) for y in range(period)]
    return [(0.0, 0.0)]


def _refine(value: str, phase: tuple[float, float], step: float) -> list[tuple[float, float]]:
    """Offsets one step around `phase` (across the stripes; in x and y for a checkerboard)."""
    kind = parse_background(value).kind
    if kind == "stripes":
        return [(phase[0] + dx, phase[1] + dy) for dx, dy in _along(value, (-step, 0.0, step))]
    if kind == "checker":
        return [(phase[0] + dx * step, phase[1] + dy * step) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    return [phase]


def _error(frame_HWC: np.ndarray, value: str, phase: tuple[float, float], blur: bool) -> float:
    h, w = frame_HWC.shape[:2]
    model = _background(value, h, w, phase)
    dist = _explained_distance(frame_HWC, model) if blur else _distance(frame_HWC, model)
    return float(np.mean(np.minimum(dist, UNEXPLAINED * 2)))


def fit_phase(frame_HWC: np.ndarray, value: str) -> tuple[float, float]:
    """The pattern offset that best explains a frame (coarse search, then 0.5 and 0.25 px refinement)."""
    candidates = _phase_candidates(value)
    if len(candidates) == 1:
        return candidates[0]
    small = frame_HWC
    best = min(candidates, key=lambda p: _error(small, value, p, blur=False))
    for step in (0.5, 0.25):
        best = min(_refine(value, best, step), key=lambda p: _error(small, value, p, blur=False))
    return best


def segment(frames_FHWC: np.ndarray, background: str) -> Segmentation:
    """Fit `background` to every frame and mark the pixels it does not explain."""
    h, w = frames_FHWC.shape[1:3]
    global_phase = fit_phase(np.median(frames_FHWC, axis=0), background)
    models, residuals = [], []
    for frame in frames_FHWC:
        phases = _refine(background, global_phase, 0.5)
        phase = min(phases, key=lambda p: _error(frame, background, p, blur=False)) if len(phases) > 1 \
            else global_phase
        model = _background(background, h, w, phase)
        models.append(model)
        residuals.append(_explained_distance(frame, model))
    residual = np.stack(residuals)
    raw = residual > UNEXPLAINED
    mask = raw & (box_count(raw) >= 4)
    return Segmentation(background, residual, mask, np.stack(models))


def unexplained_outside(seg: Segmentation, centers_F2: np.ndarray, radius: float) -> np.ndarray:
    """Per frame, the fraction of pixels outside a disc around the object that the background misses."""
    f, h, w = seg.mask_FHW.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    out = np.empty(f)
    for i in range(f):
        cx, cy = centers_F2[i] if np.all(np.isfinite(centers_F2[i])) else (w / 2, h / 2)
        outside = np.hypot(xs - cx, ys - cy) > radius
        out[i] = (seg.mask_FHW[i] & outside).sum() / max(1, outside.sum())
    return out
