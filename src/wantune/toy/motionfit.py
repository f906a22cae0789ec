"""Fit a measured object trajectory to a spec's motion: linear velocity, orbit, zoom, still.

Legend: k_N frame indices of the valid measurements; centers_N2 centroids (x, y) in pixels (y down);
area_N object area in pixels. Every sub-test maps its error to [0, 1] with 0.5 at its tolerance; the
motion score is the smallest sub-score.
"""

from __future__ import annotations

import math

import numpy as np

from wantune.toy.spec import ConceptSpec, parse_motion

PATH_RMS = 1.5
"""Pixels of rms deviation from the fitted path at which the path score reaches 0.5."""
STILL_TRAVEL = 3.0
"""Pixels of net travel at which a 'still' (or zoom, rotate) object's stillness score reaches 0.5."""
STILL_SPIN = 15.0
"""Degrees of turn over the clip at which a 'still' object's no-spin score reaches 0.5."""
SCALE_DRIFT = 0.25
"""Change of log size over the clip at which 'constant size' scores 0.5."""
SPEED_SLACK = 0.25
"""Relative speed error beyond the spec's speed range at which the speed score reaches 0.5."""
DIRECTION_DEG = 20.0
"""Direction error (degrees) at which a linear motion's direction score reaches 0.5."""


def size_range(spec: ConceptSpec) -> tuple[float, float]:
    """Smallest and largest circumradius (px) a clip of the spec can show, zoom included."""
    lo, hi = spec.size
    span = spec.speed[1] * (spec.frames - 1)
    for option in spec.options("motion"):
        motion = parse_motion(option.value)
        if motion.kind == "zoom":
            factor = motion.params[0] ** span
            lo, hi = min(lo, spec.size[0] * factor), max(hi, spec.size[1] * factor)
    return lo, hi


def _tolerance(error: float, tol: float) -> float:
    return float(np.clip(1 - 0.5 * error / tol, 0, 1))


def _in_range(x: float, lo: float, hi: float, slack: float) -> float:
    """1 inside [lo, hi]; 0.5 at `slack` (relative) outside; 0 at twice that."""
    if lo <= x <= hi:
        return 1.0
    out = (lo - x) / lo if x < lo else (x - hi) / hi
    return _tolerance(out, slack)


def _linear_fit(k, values):
    """Least-squares line through values(k): (intercept, slope, rms residual)."""
    design = np.stack([np.ones_like(k, dtype=np.float64), k.astype(np.float64)], axis=1)
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    residual = values - design @ coef
    rms = float(np.sqrt(np.mean(np.sum(residual.reshape(len(k), -1) ** 2, axis=1))))
    return coef[0], coef[1], rms


def motion_score(value: str, spec: ConceptSpec, k: np.ndarray, centers_N2: np.ndarray, area_N: np.ndarray,
                 rotation_M2: np.ndarray | None = None) -> tuple[float, dict]:
    """Score in [0, 1] of a measured trajectory against one motion option, and the fitted numbers.
    rotation_M2: (frame index, orientation in degrees) rows where the orientation was measured."""
    motion = parse_motion(value)
    span = float(k[-1] - k[0]) or 1.0
    _, velocity, path_rms = _linear_fit(k, centers_N2)
    _, growth, _ = _linear_fit(k, 0.5 * np.log(np.maximum(area_N, 1e-3)))
    travel = float(np.hypot(*velocity)) * span
    fit = {"velocity": [round(float(v), 3) for v in velocity], "growth": round(float(growth), 4),
           "path_rms": round(path_rms, 3)}
    steady = _tolerance(abs(growth) * span, SCALE_DRIFT)
    if motion.kind in ("still", "rotate"):
        parts = {"travel": _tolerance(travel, STILL_TRAVEL), "size": steady}
        if rotation_M2 is not None:
            _, spin, _ = _linear_fit(rotation_M2[:, 0], rotation_M2[:, 1])
            fit["spin"] = round(float(spin), 3)
            parts["spin"] = (_tolerance(abs(spin) * span, STILL_SPIN) if motion.kind == "still"
                             else _in_range(-spin / motion.params[0], *spec.speed, SPEED_SLACK))
    elif motion.kind == "linear":
        parts = _linear_parts(motion.params, spec.speed, velocity, path_rms)
        parts["size"] = steady
    elif motion.kind == "orbit":
        parts, orbit = _orbit_parts(motion.params, spec, k, centers_N2)
        parts["size"] = steady
        fit.update(orbit)
    else:  # zoom
        expected = math.log(motion.params[0])
        parts = {"travel": _tolerance(travel, STILL_TRAVEL),
                 "rate": _in_range(growth / expected, *spec.speed, SPEED_SLACK)}
    fit["parts"] = {name: round(v, 3) for name, v in parts.items()}
    return min(parts.values()), fit


def _linear_parts(params, speed, velocity, path_rms) -> dict[str, float]:
    expected = np.array(params, dtype=np.float64)
    norm_e, norm_v = float(np.hypot(*expected)), float(np.hypot(*velocity))
    if norm_e == 0:
        return {"travel": _tolerance(norm_v, STILL_TRAVEL)}
    cos = float(np.dot(velocity, expected) / max(norm_v * norm_e, 1e-9))
    angle = math.degrees(math.acos(np.clip(cos, -1, 1))) if norm_v > 1e-6 else 180.0
    return {"direction": _tolerance(angle, DIRECTION_DEG),
            "speed": _in_range(norm_v / norm_e, *speed, SPEED_SLACK),
            "path": _tolerance(path_rms, PATH_RMS)}


def fit_circle(points_N2: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Algebraic (Kasa) circle fit: centre, radius, rms radial residual."""
    x, y = points_N2[:, 0], points_N2[:, 1]
    design = np.stack([x, y, np.ones_like(x)], axis=1)
    rhs = -(x ** 2 + y ** 2)
    (d, e, f), *_ = np.linalg.lstsq(design, rhs, rcond=None)
    center = np.array([-d / 2, -e / 2])
    radius = float(np.sqrt(max(center @ center - f, 0.0)))
    rms = float(np.sqrt(np.mean((np.hypot(x - center[0], y - center[1]) - radius) ** 2)))
    return center, radius, rms


def _orbit_parts(params, spec: ConceptSpec, k, centers_N2) -> tuple[dict[str, float], dict]:
    radius_e, turns = params
    center, radius, rms = fit_circle(centers_N2)
    phi = np.unwrap(np.arctan2(-(centers_N2[:, 1] - center[1]), centers_N2[:, 0] - center[0]))
    _, omega, _ = _linear_fit(k, phi)
    omega_e = 2 * math.pi * turns / spec.frames
    parts = {"radius": _in_range(radius / radius_e, 0.8, 1.2, 0.2),
             "angular_speed": _in_range(omega / omega_e, *spec.speed, SPEED_SLACK),
             "path": _tolerance(rms, PATH_RMS)}
    fit = {"orbit_center": [round(float(c), 2) for c in center], "orbit_radius": round(radius, 3),
           "angular_speed": round(float(omega), 4), "orbit_rms": round(rms, 3)}
    return parts, fit
