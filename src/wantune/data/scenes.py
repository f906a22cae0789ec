"""Scene cuts, static heads/tails and time resampling, computed on small decoded frames.

Legend: F = frames of one source video, H/W = analysis height/width, C = 3 colour channels, K = histogram bins.
Frame ranges are half-open `[start, end)` indices into the source's decoded frames (presentation order).
"""

from __future__ import annotations

import numpy as np

HIST_LEVELS = 8  # per channel; the joint RGB histogram has HIST_LEVELS**3 bins


def colour_histogram(rgb_HWC: np.ndarray) -> np.ndarray:
    """Joint RGB histogram of one frame, normalised to sum 1 (K = 512 bins)."""
    q = (rgb_HWC.astype(np.uint16) * HIST_LEVELS) >> 8
    codes = (q[..., 0] * HIST_LEVELS + q[..., 1]) * HIST_LEVELS + q[..., 2]
    counts = np.bincount(codes.ravel(), minlength=HIST_LEVELS**3).astype(np.float32)
    return counts / max(1.0, float(counts.sum()))


def histogram_distance(a_K: np.ndarray, b_K: np.ndarray) -> float:
    """Total-variation distance between two normalised histograms: 0 identical, 1 disjoint."""
    return 0.5 * float(np.abs(a_K - b_K).sum())


def find_cuts(distances_F: np.ndarray, threshold: float, energy_F: np.ndarray | None = None,
              ratio: float = 3.0, min_energy: float = 24.0, window: int = 8, min_gap: int = 3) -> list[int]:
    """Frame indices that start a new scene.

    Frame i starts a scene when its colour-histogram distance to frame i-1 exceeds `threshold`, or (for cuts
    between shots with the same colours) when its luminance change `energy_F[i]` is at least `min_energy` and
    `ratio` times the median change of the `window` frames on each side. Cuts closer than `min_gap` frames to
    the previous one (flashes, fast motion) are dropped.
    """
    candidates = set(np.flatnonzero(distances_F > threshold).tolist())
    if energy_F is not None:
        for i in np.flatnonzero(energy_F >= min_energy):
            around = np.concatenate([energy_F[max(1, i - window):i], energy_F[i + 1:i + 1 + window]])
            if len(around) and energy_F[i] >= ratio * max(float(np.median(around)), 1e-3):
                candidates.add(int(i))
    cuts: list[int] = []
    for i in sorted(candidates):
        if i == 0 or (cuts and i - cuts[-1] < min_gap):
            continue
        cuts.append(int(i))
    return cuts


def scenes_from_cuts(num_frames: int, cuts: list[int]) -> list[tuple[int, int]]:
    """[start, end) frame ranges between cuts."""
    bounds = [0, *cuts, num_frames]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def motion_energy(gray_FHW: np.ndarray) -> np.ndarray:
    """Mean absolute luminance change from the previous frame (0..255); entry 0 is 0."""
    energy_F = np.zeros(len(gray_FHW), dtype=np.float32)
    for i in range(1, len(gray_FHW)):
        diff = np.abs(gray_FHW[i].astype(np.int16) - gray_FHW[i - 1].astype(np.int16))
        energy_F[i] = float(diff.mean())
    return energy_F


def trim_static(energy_F: np.ndarray, start: int, end: int, threshold: float) -> tuple[int, int] | None:
    """Drop still frames at the head and tail of `[start, end)`; None when the whole range is still.

    A frame moves when its change from the previous frame reaches `threshold`. The kept range begins with
    the last still frame before the first motion and ends with the last frame that moves.
    """
    moving = np.flatnonzero(energy_F[start + 1:end] >= threshold) + start + 1
    if len(moving) == 0:
        return None
    return int(moving[0]) - 1, int(moving[-1]) + 1


def split_long(times_F: np.ndarray, start: int, end: int, frame_duration: float,
               max_seconds: float) -> list[tuple[int, int]]:
    """Split `[start, end)` into the fewest equal-length consecutive ranges of at most `max_seconds` each."""
    duration = float(times_F[end - 1]) + frame_duration - float(times_F[start])
    if max_seconds <= 0 or duration <= max_seconds + 1e-6:
        return [(start, end)]
    parts = int(np.ceil(duration / max_seconds - 1e-6))
    cuts = [int(np.searchsorted(times_F[start:end], times_F[start] + i * duration / parts - 1e-6)) + start
            for i in range(1, parts)]
    bounds = [start, *cuts, end]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def resample_indices(times_F: np.ndarray, start: int, end: int, frame_duration: float, fps: float) -> list[int]:
    """Source frame shown at each output time `t0 + j / fps` (nearest frame), keeping the range's duration.

    The range lasts from the first frame's timestamp to the last frame's timestamp plus one frame duration;
    the output has floor(duration * fps) frames, so a 2.0 s range gives 32 frames at 16 fps.
    """
    t0 = float(times_F[start])
    duration = float(times_F[end - 1]) + frame_duration - t0
    count = int(np.floor(duration * fps + 1e-6))
    window = times_F[start:end]
    indices = []
    for j in range(count):
        t = t0 + j / fps
        k = int(np.searchsorted(window, t, side="left"))
        if k >= len(window) or (k > 0 and t - window[k - 1] <= window[k] - t):
            k -= 1
        indices.append(start + max(k, 0))
    return indices
