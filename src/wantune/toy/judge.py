"""Score a clip against a concept spec by measurement (no trained classifier).

Legend: frames_FHWC RGB clip (uint8, or float in [0, 1]); alpha_FHW the object's soft coverage;
centers_F2 per-frame object centroid (x, y) in pixels; F frames, H x W pixels.

Steps: fit the spec's background to every frame (segment.py); the pixels it does not explain are the object.
Its colour is the median of its interior pixels; its silhouette (soft coverage) is compared by IoU with
templates of the claimed shape and of other shapes at the measured centroid and area; its centroid and
size trajectory are fitted to the claimed motion; the background is judged by how many pixels away from
the object it fails to explain. Each attribute gets a score in [0, 1] (>= 0.5 passes); `adherence` is 1
when shape, colour, motion and background all pass. A spec with several options per attribute passes an
attribute when any option does (the best one is reported).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wantune.errors import UserError
from wantune.toy.motionfit import motion_score, size_range
from wantune.toy.segment import Segmentation, box_count, segment, unexplained_outside
from wantune.toy.spec import ConceptSpec, Shape, color_distance, parse_color, parse_motion, parse_shape, rgb_to_hex
from wantune.toy.world import shape_coverage, shape_polygon

ADHERENCE_ATTRS = ("shape", "color", "motion", "background")
"""The attributes that must all pass for a clip to adhere to a spec (size is reported, not required)."""
COMPARE_SHAPES = ("circle", "square", "diamond", "triangle", "cross", "polygon:5", "polygon:6", "star:4",
                  "star:5", "star:6", "ellipse:2", "rect:2")
"""Alternatives a claimed shape must beat; those too similar to it (SIMILAR) are left out."""
SIMILAR = 0.9
"""Shapes whose equal-area silhouettes overlap more than this cannot be told apart at toy sizes."""
COLOR_TOLERANCE = 0.2
"""Colour distance (RGB, channels in [0, 1]) at which the colour score reaches 0.5."""
BACKGROUND_TOLERANCE = 0.05
"""Fraction of unexplained pixels away from the object at which the background score reaches 0.5."""
MIN_SHAPE_IOU = 0.6
"""Below this silhouette IoU the claimed shape fails even when it is the best candidate."""
SHAPE_FRAMES = 3
"""Frames used for the silhouette test."""
ANGLE_SLACK = 10.0
"""Degrees a silhouette may turn beyond the spec's rotation range (searched in 5 degree steps)."""


@dataclass
class Judgement:
    """Per-attribute scores of a clip against a spec."""

    concept: str
    """Name of the spec."""
    scores: dict[str, float]
    """Attribute -> score in [0, 1] (>= 0.5 passes)."""
    matched: dict[str, str] = field(default_factory=dict)
    """Attribute -> the spec option that scored best."""
    measured: dict = field(default_factory=dict)
    """What was measured (colour, centroids, sizes, IoUs, background error)."""

    @property
    def passed(self) -> dict[str, bool]:
        return {k: v >= 0.5 for k, v in self.scores.items()}

    @property
    def adherence(self) -> float:
        """1.0 when shape, colour, motion and background all pass, else 0.0."""
        return float(all(self.passed[a] for a in ADHERENCE_ATTRS))

    def to_dict(self) -> dict:
        return {"concept": self.concept, "adherence": self.adherence, "scores": self.scores,
                "passed": self.passed, "matched": self.matched, "measured": self.measured}


@dataclass
class ObjectTrack:
    """The object measured in every frame."""

    color: tuple[float, float, float]
    """Median RGB (0..255) of the object's interior pixels."""
    alpha_FHW: np.ndarray
    """Soft coverage of the object."""
    area_F: np.ndarray
    """Sum of coverage per frame (pixels)."""
    centers_F2: np.ndarray
    """Coverage-weighted centroid per frame (NaN where no object)."""
    clipped_F: np.ndarray
    """Whether the object touches the frame border."""


# ------------------------------------------------------------------------------------------- entry points

def judge_video(path: str | Path, spec: ConceptSpec) -> Judgement:
    """Decode a video with PyAV and judge it against `spec`."""
    from wantune.data.video import read_frames

    if not Path(path).is_file():
        raise UserError(f"{path}: video not found")
    return judge(read_frames(path), spec)


def judge(frames_FHWC: np.ndarray, spec: ConceptSpec) -> Judgement:
    """Score a clip (F, H, W, 3) against a concept spec."""
    frames = _as_float(frames_FHWC)
    region = 1.3 * size_range(spec)[1] + 3.0
    best = None
    for option in spec.options("background"):
        seg = segment(frames, option.value)
        track = track_object(frames, seg, region)
        errors = unexplained_outside(seg, track.centers_F2, region)
        error = float(np.mean(errors))
        if best is None or error < best[0]:
            best = (error, option.value, seg, track)
    error, background, seg, track = best
    scores = {"background": float(np.clip(1 - 0.5 * error / BACKGROUND_TOLERANCE, 0, 1))}
    matched = {"background": background}
    measured = {"background_error": round(error, 4)}
    if track.area_F.max() < 4:
        for attr in ("shape", "color", "motion", "size"):
            scores[attr] = 0.0
        measured["object"] = "none found"
        return Judgement(spec.name, scores, matched, measured)
    _score_color(spec, track, scores, matched, measured)
    _score_shape(spec, track, scores, matched, measured)
    _score_motion(spec, track, scores, matched, measured)
    return Judgement(spec.name, {k: round(v, 4) for k, v in scores.items()}, matched, measured)


def _as_float(frames_FHWC: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames_FHWC)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserError(f"judge: expected frames (F, H, W, 3), got shape {tuple(frames.shape)}")
    if frames.dtype == np.uint8:
        return frames.astype(np.float64) / 255.0
    return np.clip(frames.astype(np.float64), 0.0, 1.0)


# ------------------------------------------------------------------------------------------- the object

def track_object(frames: np.ndarray, seg: Segmentation, region: float) -> ObjectTrack:
    """Colour, soft coverage and centroid of the (single) object in every frame."""
    f, h, w = seg.mask_FHW.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    near = np.zeros_like(seg.mask_FHW)
    for i in range(f):
        m = seg.mask_FHW[i]
        if m.sum() == 0:
            continue
        cx, cy = np.median(xs[m]), np.median(ys[m])
        near[i] = m & (np.hypot(xs - cx, ys - cy) <= region)
    core = near & (box_count(near) == 9)
    pixels = frames[core] if core.sum() >= 3 else frames[near]
    color = np.median(pixels, axis=0) if len(pixels) else np.full(3, np.nan)
    alpha = _coverage(frames, seg.model_FHWC, color, box_count(near, 2) > 0)
    area = alpha.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        centers = np.stack([(alpha * xs).sum(axis=(1, 2)) / area, (alpha * ys).sum(axis=(1, 2)) / area], axis=1)
    centers[area < 2] = np.nan
    edge = near[:, [0, -1], :].any(axis=(1, 2)) | near[:, :, [0, -1]].any(axis=(1, 2))
    return ObjectTrack(tuple(float(c) * 255 for c in color), alpha, area, centers, edge)


def _coverage(frames, model, color, allowed) -> np.ndarray:
    """Soft coverage: how far each pixel lies from the background toward the object colour."""
    if not np.all(np.isfinite(color)):
        return np.zeros(frames.shape[:3])
    direction = color[None, None, None, :] - model
    denom = np.maximum((direction ** 2).sum(-1), 1e-4)
    alpha = np.clip(((frames - model) * direction).sum(-1) / denom, 0.0, 1.0)
    return alpha * allowed


def _score_color(spec, track, scores, matched, measured) -> None:
    measured["color"] = rgb_to_hex(np.round(track.color).astype(int))
    best = max(spec.options("color"), key=lambda o: -color_distance(parse_color(o.value), track.color))
    dist = color_distance(parse_color(best.value), track.color)
    scores["color"] = float(np.clip(1 - 0.5 * dist / COLOR_TOLERANCE, 0, 1))
    matched["color"] = best.value
    measured["color_distance"] = round(dist, 4)


# ------------------------------------------------------------------------------------------- shape

def _symmetry(value: str) -> float:
    shape = parse_shape(value)
    if shape.kind == "circle":
        return 0.0
    return {"square": 90.0, "diamond": 90.0, "cross": 90.0, "triangle": 120.0, "ellipse": 180.0,
            "rect": 180.0}.get(shape.kind, 360.0 / max(shape.n, 1))


def _angles(value: str, lo: float, hi: float, free: bool) -> list[float]:
    period = _symmetry(value)
    if period == 0:
        return [0.0]
    if free or hi - lo + 2 * ANGLE_SLACK >= period:
        return list(np.arange(0.0, period, 5.0))
    return list(np.arange(lo - ANGLE_SLACK, hi + ANGLE_SLACK + 1e-6, 5.0))


@functools.lru_cache(maxsize=64)
def _unit_area(value: str) -> float:
    poly = shape_polygon(parse_shape(value))
    if poly is None:
        return math.pi
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _best_iou(alpha_HW, center, area, value, angles) -> tuple[float, float, float]:
    """Best soft IoU of a shape template with the given area at `center`, over `angles`; (iou, radius, angle)."""
    radius = math.sqrt(area / _unit_area(value))
    h, w = alpha_HW.shape
    half = int(math.ceil(radius * 1.6 + 3))
    x0, y0 = max(0, int(center[0]) - half), max(0, int(center[1]) - half)
    x1, y1 = min(w, int(center[0]) + half + 1), min(h, int(center[1]) + half + 1)
    crop = alpha_HW[y0:y1, x0:x1]
    templates = shape_coverage(parse_shape(value), (center[0] - x0, center[1] - y0), radius, list(angles),
                               y1 - y0, x1 - x0)
    inter = np.minimum(crop[None], templates).sum(axis=(1, 2))
    union = np.maximum(np.maximum(crop[None], templates).sum(axis=(1, 2)), 1e-6)
    ious = inter / union
    best = int(np.argmax(ious))
    return float(ious[best]), radius, float(angles[best])


@functools.lru_cache(maxsize=256)
def similarity(a: str, b: str, spread: float = ANGLE_SLACK) -> float:
    """IoU of equal-area templates of two shapes, b turned within +-spread degrees of a's orientation."""
    size = 48
    alpha = shape_coverage(parse_shape(a), (size / 2, size / 2), 14.0, 0.0, size, size)
    period = _symmetry(b) or 360.0
    angles = np.arange(-spread, spread + 1e-6, 5.0) if 2 * spread + 10 < period else np.arange(0, period, 5.0)
    return _best_iou(alpha, (size / 2, size / 2), float(alpha.sum()), b, list(angles))[0]


def _shape_frames(track: ObjectTrack) -> list[int]:
    ok = [i for i in range(len(track.area_F)) if track.area_F[i] >= 8 and not track.clipped_F[i]
          and np.all(np.isfinite(track.centers_F2[i]))]
    if len(ok) <= SHAPE_FRAMES:
        return ok
    return [ok[int(round(j))] for j in np.linspace(0, len(ok) - 1, SHAPE_FRAMES)]


def _mean_iou(track, frames, value, angles) -> tuple[float, list[float]]:
    fits = [_best_iou(track.alpha_FHW[i], track.centers_F2[i], track.area_F[i], value, angles) for i in frames]
    return float(np.mean([f[0] for f in fits])), [f[1] for f in fits]


def _score_shape(spec, track, scores, matched, measured) -> None:
    frames = _shape_frames(track)
    if not frames:
        scores["shape"], scores["size"] = 0.0, 0.0
        measured["shape"] = "object clipped or too small in every frame"
        return
    free = any(parse_motion(o.value).kind == "rotate" for o in spec.options("motion"))
    lo, hi = spec.rotation
    fits: dict[Shape, tuple[float, list[float]]] = {}

    def fit(value: str) -> tuple[float, list[float]]:
        key = parse_shape(value)
        if key not in fits:
            fits[key] = _mean_iou(track, frames, value, _angles(value, lo, hi, free))
        return fits[key]

    results = []
    for option in spec.options("shape"):
        claim_iou, radii = fit(option.value)
        others = {other: fit(other)[0] for other in COMPARE_SHAPES
                  if parse_shape(other) != parse_shape(option.value) and similarity(option.value, other) <= SIMILAR}
        rival = max(others, key=others.get) if others else ""
        margin = claim_iou - others.get(rival, 0.0)
        score = float(np.clip(0.5 + 5 * margin, 0, 1))
        if claim_iou < MIN_SHAPE_IOU:
            score = min(score, 0.4 * claim_iou / MIN_SHAPE_IOU)
        results.append((score, option.value, claim_iou, rival, others.get(rival, 0.0), radii))
    score, value, iou, rival, rival_iou, radii = max(results, key=lambda r: r[0])
    scores["shape"], matched["shape"] = score, value
    measured.update(shape_iou=round(iou, 4), rival_shape=rival, rival_iou=round(rival_iou, 4),
                    radius=round(float(np.median(radii)), 3))
    lo_size, hi_size = size_range(spec)
    r = float(np.median(radii))
    scores["size"] = 1.0 if 0.75 * lo_size <= r <= 1.25 * hi_size else 0.0


def _rotation(spec, track, matched, k) -> np.ndarray | None:
    """Per-frame orientation (degrees, unwrapped over the shape's symmetry) of the matched shape, if the spec
    asks about rotation (a 'still' or 'rotate' motion) and the shape has an orientation."""
    kinds = {parse_motion(o.value).kind for o in spec.options("motion")}
    value = matched.get("shape")
    if not value or not kinds & {"still", "rotate"} or _symmetry(value) == 0:
        return None
    period = _symmetry(value)
    angles = list(np.arange(0.0, period, 3.0))
    frames = [i for i in k if track.area_F[i] >= 8 and not track.clipped_F[i]]
    if len(frames) < 3:
        return None
    frames = [frames[int(round(j))] for j in np.linspace(0, len(frames) - 1, min(len(frames), 7))]
    best = [_best_iou(track.alpha_FHW[i], track.centers_F2[i], track.area_F[i], value, angles)[2] for i in frames]
    turned = np.unwrap(np.radians(best) * 360.0 / period) * period / 360.0
    return np.stack([np.array(frames, dtype=np.float64), np.degrees(turned)], axis=1)


def _score_motion(spec, track, scores, matched, measured) -> None:
    valid = np.isfinite(track.centers_F2).all(axis=1) & (track.area_F >= 4)
    k = np.nonzero(valid)[0]
    measured["centroid"] = np.round(track.centers_F2, 2).tolist()
    measured["area"] = np.round(track.area_F, 1).tolist()
    if len(k) < 3:
        scores["motion"] = 0.0
        return
    rotation = _rotation(spec, track, matched, k)
    results = [(motion_score(o.value, spec, k, track.centers_F2[k], track.area_F[k], rotation), o.value)
               for o in spec.options("motion")]
    (score, fit), value = max(results, key=lambda r: r[0][0])
    scores["motion"], matched["motion"] = score, value
    measured["motion_fit"] = fit
