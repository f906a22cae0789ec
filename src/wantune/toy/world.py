"""Render toy-world clips from a concept spec: anti-aliased shapes moving over a background.

Legend: frames_FHWC uint8 RGB clips; coverage_HW float shape coverage in [0, 1]; F frames, H x W pixels.
Coordinates are pixels with (0, 0) the top-left corner of the top-left pixel, x right, y down.
A clip is fully determined by (spec, seed, index): `sample_instance` draws its free parameters from
`numpy.random.default_rng([seed, index])`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wantune.errors import UserError
from wantune.toy.spec import (ConceptSpec, Option, Shape, concept_to_dict, default_words, parse_background,
                              parse_color, parse_motion, parse_shape)

SUPERSAMPLE = 4
"""Background patterns are rendered at this many samples per pixel side and averaged."""


@dataclass
class Instance:
    """One clip's concrete draw from a spec: the chosen options and free parameters."""

    shape: str
    """Shape value."""
    color: str
    """Fill colour (#RRGGBB)."""
    motion: str
    """Motion value."""
    background: str
    """Background value."""
    size: float
    """Circumradius in pixels at frame 0."""
    speed: float
    """Factor on the motion's magnitude."""
    rotation: float
    """Orientation in degrees at frame 0."""
    start: tuple[float, float]
    """Shape centre (x, y) at frame 0 (orbit: the orbit's centre)."""
    phase: tuple[float, float]
    """Background pattern offset (x, y) in pixels, or orbit start angle in [0] for orbits."""
    orbit_angle: float
    """Orbit start angle in radians."""
    caption: str
    """The clip's caption."""


# ------------------------------------------------------------------------------------------- shapes

def shape_polygon(shape: Shape) -> np.ndarray | None:
    """Vertices (N, 2) of a shape with circumradius 1 centred at 0 (None for a circle)."""
    def ring(n: int, start: float = -math.pi / 2) -> np.ndarray:
        angles = start + 2 * math.pi * np.arange(n) / n
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)

    if shape.kind == "circle":
        return None
    if shape.kind == "square":
        return ring(4, math.pi / 4)
    if shape.kind == "diamond":
        return ring(4, -math.pi / 2)
    if shape.kind == "triangle":
        return ring(3)
    if shape.kind == "polygon":
        return ring(shape.n)
    if shape.kind == "star":
        outer, inner = ring(shape.n), ring(shape.n, -math.pi / 2 + math.pi / shape.n) * shape.ratio
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if shape.kind == "ellipse":
        pts = ring(32, 0.0)
        return pts * np.array([1.0, 1.0 / shape.ratio])
    if shape.kind == "rect":
        half_w = 1.0 / math.sqrt(1 + 1 / shape.ratio ** 2)
        half_h = half_w / shape.ratio
        return np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    if shape.kind == "cross":
        t, arm = 0.3, 1.0
        pts = np.array([[t, -arm], [t, -t], [arm, -t], [arm, t], [t, t], [t, arm], [-t, arm], [-t, t],
                        [-arm, t], [-arm, -t], [-t, -t], [-t, -arm]])
        return pts / math.hypot(arm, t)
    raise UserError(f"shape '{shape.kind}': no renderer")


def shape_coverage(shape: Shape, center: tuple[float, float], radius: float, angle_deg: float | list[float],
                   height: int, width: int) -> np.ndarray:
    """Anti-aliased coverage_HW in [0, 1] of a shape (signed distance, 1-px ramp at the edge).
    A list of angles gives one coverage per angle, (A, H, W)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    px, py = xs - center[0], ys - center[1]
    angles = np.radians(np.atleast_1d(np.asarray(angle_deg, dtype=np.float64)))
    poly = shape_polygon(shape)
    if poly is None:
        signed = np.broadcast_to(np.hypot(px, py) - radius, (len(angles), height, width))
    else:
        cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
        x, y = poly[None, :, 0] * radius, poly[None, :, 1] * radius
        vertices = np.stack([x * cos - y * sin, x * sin + y * cos], axis=-1)
        signed = polygon_signed_distance(px, py, vertices)
    cover = np.clip(0.5 - signed, 0.0, 1.0)
    return cover if isinstance(angle_deg, list | tuple | np.ndarray) else cover[0]


def polygon_signed_distance(px: np.ndarray, py: np.ndarray, vertices_AV2: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from points (H, W) to A simple polygons (convex or not): (A, H, W)."""
    p_x, p_y = px[None, :, :, None], py[None, :, :, None]
    a = vertices_AV2[:, None, None, :, :]
    b = np.roll(vertices_AV2, -1, axis=1)[:, None, None, :, :]
    ax, ay, ex, ey = a[..., 0], a[..., 1], b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    t = np.clip(((p_x - ax) * ex + (p_y - ay) * ey) / np.maximum(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
    dist = np.hypot(p_x - ax - t * ex, p_y - ay - t * ey).min(axis=-1)
    crosses = (ay > p_y) != (b[..., 1] > p_y)
    safe_ey = np.where(ey == 0, 1e-12, ey)
    x_cross = ax + (p_y - ay) * ex / safe_ey
    inside = (crosses & (p_x < x_cross)).sum(axis=-1) % 2 == 1
    return np.where(inside, -dist, dist)


# ------------------------------------------------------------------------------------------- backgrounds

def render_background(value: str, height: int, width: int, phase: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A background pattern as float RGB (H, W, 3) in 0..255, supersampled."""
    bg = parse_background(value)
    s = SUPERSAMPLE
    offsets = (np.arange(s) + 0.5) / s
    ys = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
    xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    y, x = np.meshgrid(ys, xs, indexing="ij")
    colors = np.array(bg.colors, dtype=np.float64)
    if bg.kind == "solid":
        return np.broadcast_to(colors[0], (height, width, 3)).copy()
    theta = math.radians(bg.angle)
    if bg.kind == "stripes":
        u = (x + phase[0]) * math.cos(theta) + (y + phase[1]) * math.sin(theta)
        weight = (np.floor(u / bg.size) % 2).astype(np.float64)
    elif bg.kind == "checker":
        weight = ((np.floor((x + phase[0]) / bg.size) + np.floor((y + phase[1]) / bg.size)) % 2).astype(np.float64)
    else:  # gradient along the angle, from colour A to colour B across the frame
        u = (x - width / 2) * math.cos(theta) + (y - height / 2) * math.sin(theta)
        extent = abs(width / 2 * math.cos(theta)) + abs(height / 2 * math.sin(theta))
        weight = np.clip((u + extent) / (2 * extent), 0.0, 1.0)
    weight = weight.reshape(height, s, width, s).mean(axis=(1, 3))
    return colors[0] * (1 - weight[..., None]) + colors[1] * weight[..., None]


# ------------------------------------------------------------------------------------------- trajectories

def trajectory(inst: Instance, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame centre (F, 2), circumradius (F,) and angle in degrees (F,) of an instance."""
    motion = parse_motion(inst.motion)
    k = np.arange(frames, dtype=np.float64)
    center = np.tile(np.array(inst.start, dtype=np.float64), (frames, 1))
    size = np.full(frames, inst.size)
    angle = np.full(frames, inst.rotation)
    if motion.kind == "linear":
        center += k[:, None] * inst.speed * np.array(motion.params)[None, :]
    elif motion.kind == "orbit":
        radius, turns = motion.params
        phi = inst.orbit_angle + 2 * math.pi * turns * inst.speed * k / frames
        center += radius * np.stack([np.cos(phi), -np.sin(phi)], axis=1)
    elif motion.kind == "zoom":
        size = inst.size * motion.params[0] ** (inst.speed * k)
    elif motion.kind == "rotate":
        angle = inst.rotation - motion.params[0] * inst.speed * k  # + = counter-clockwise on screen
    return center, size, angle


def _place(spec: ConceptSpec, inst: Instance, rng: np.random.Generator) -> tuple[float, float]:
    """A start centre that keeps the whole trajectory inside the frame (centred when it cannot)."""
    probe = Instance(**{**asdict(inst), "start": (0.0, 0.0)})
    center, size, _ = trajectory(probe, spec.frames)
    lows = -(center - size[:, None]).min(axis=0) + 1.0
    highs = np.array([spec.width, spec.height]) - (center + size[:, None]).max(axis=0) - 1.0
    start = []
    for axis, extent in enumerate((spec.width, spec.height)):
        lo, hi = lows[axis], highs[axis]
        start.append(float(rng.uniform(lo, hi)) if hi > lo else (extent - center[:, axis].min()
                                                                 - center[:, axis].max()) / 2)
    return start[0], start[1]


# ------------------------------------------------------------------------------------------- clips

def option_words(spec: ConceptSpec, attr: str, option: Option) -> str:
    words = option.words or default_words(attr, option.value)
    return words.replace("{trigger}", spec.trigger).replace("[trigger]", spec.trigger)


def sample_instance(spec: ConceptSpec, seed: int, index: int) -> Instance:
    """The clip `index` of `spec` under `seed` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    chosen = {attr: spec.options(attr)[rng.integers(len(spec.options(attr)))]
              for attr in ("shape", "color", "motion", "background")}
    template = spec.captions[rng.integers(len(spec.captions))]
    words = {attr: option_words(spec, attr, opt) for attr, opt in chosen.items()}
    caption = template.format(trigger=spec.trigger, **words).strip()
    bg = parse_background(chosen["background"].value)
    period = 2 * bg.size if bg.kind in ("stripes", "checker") else 0.0
    inst = Instance(
        shape=chosen["shape"].value, color=chosen["color"].value, motion=chosen["motion"].value,
        background=chosen["background"].value, size=float(rng.uniform(*spec.size)),
        speed=float(rng.uniform(*spec.speed)), rotation=float(rng.uniform(*spec.rotation)),
        start=(0.0, 0.0), phase=(float(rng.uniform(0, period)), float(rng.uniform(0, period))),
        orbit_angle=float(rng.uniform(0, 2 * math.pi)), caption=" ".join(caption.split()))
    inst.start = _place(spec, inst, rng)
    return inst


def instance_coverage(spec: ConceptSpec, inst: Instance) -> np.ndarray:
    """The object's exact anti-aliased coverage in every frame: (F, H, W) in [0, 1] (its loss mask)."""
    shape = parse_shape(inst.shape)
    center, size, angle = trajectory(inst, spec.frames)
    return np.stack([shape_coverage(shape, tuple(center[f]), float(size[f]), float(angle[f]), spec.height, spec.width)
                     for f in range(spec.frames)])


def render_instance(spec: ConceptSpec, inst: Instance) -> tuple[np.ndarray, dict]:
    """frames_FHWC uint8 and the ground-truth dict of one instance."""
    color = np.array(parse_color(inst.color), dtype=np.float64)
    background = render_background(inst.background, spec.height, spec.width, inst.phase)
    center, size, angle = trajectory(inst, spec.frames)
    cover_FHW = instance_coverage(spec, inst)[..., None]
    frames = np.round(background * (1 - cover_FHW) + color * cover_FHW).astype(np.uint8)
    truth = {**asdict(inst), "start": list(inst.start), "phase": list(inst.phase),
             "concept": spec.name, "trigger": spec.trigger, "fps": spec.fps,
             "centroid": np.round(center, 3).tolist(), "radius": np.round(size, 3).tolist(),
             "angle": np.round(angle, 3).tolist()}
    return frames, truth


def render_clip(spec: ConceptSpec, seed: int, index: int) -> tuple[np.ndarray, dict]:
    """Clip `index` of `spec` under `seed`: frames_FHWC uint8 and its ground truth."""
    frames, truth = render_instance(spec, sample_instance(spec, seed, index))
    truth.update(seed=seed, index=index)
    return frames, truth


def write_dataset(spec: ConceptSpec, out: str | Path, clips: int, seed: int = 0, start: int = 0,
                  masks: bool = False) -> list[Path]:
    """Render clips into out/videos/*.mp4, out/captions/*.txt, out/truth/*.json (and with `masks` each object's
    exact coverage as a loss mask, out/masks/*.mp4); returns the video paths."""
    from wantune.data.video import write_video

    if clips < 1:
        raise UserError(f"--clips {clips}: must be >= 1")
    out = Path(out)
    for sub in ("videos", "captions", "truth") + (("masks",) if masks else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "truth" / "concept.json").write_text(json.dumps(concept_to_dict(spec), indent=1) + "\n")
    paths = []
    for index in range(start, start + clips):
        frames, truth = render_clip(spec, seed, index)
        stem = f"{spec.name}_{seed}_{index:05d}"
        paths.append(write_video(out / "videos" / f"{stem}.mp4", frames, spec.fps,
                                 metadata={"comment": f"wantune toy {spec.name} seed={seed} index={index}"}))
        (out / "captions" / f"{stem}.txt").write_text(truth["caption"] + "\n", encoding="utf-8")
        if masks:
            gray_FHW1 = np.round(instance_coverage(spec, sample_instance(spec, seed, index)) * 255)[..., None]
            write_video(out / "masks" / f"{stem}.mp4", np.repeat(gray_FHW1.astype(np.uint8), 3, -1), spec.fps)
        (out / "truth" / f"{stem}.json").write_text(json.dumps(truth) + "\n")
    return paths
