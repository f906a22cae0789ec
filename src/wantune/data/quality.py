"""Quality measures for prepared clips and the thresholds that flag them.

Legend: F = frames, H/W = height/width, luminance in 0..255. Each measure is plain numpy on grey frames:
blur (variance of the Laplacian), camera shake (jitter of the global shift found by phase correlation),
lighting change (range of mean luminance), near-duplicates (dHash + Hamming distance), letterbox bars.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Thresholds:
    """Settable limits; a clip beyond one is flagged with that reason."""

    cut: float = 0.45
    """Colour-histogram distance (0..1) between consecutive frames that starts a new scene."""
    static: float = 1.0
    """Mean absolute luminance change per frame (0..255) below which a frame counts as still."""
    blur: float = 100.0
    """Variance of the Laplacian of output frames (median) below which a clip is blurry."""
    shake: float = 1.0
    """RMS distance of the camera path from its 0.3 s moving average, in % of frame width, above which it shakes."""
    lighting: float = 40.0
    """Range of per-frame mean luminance (0..255) within a clip above which the lighting changes."""
    duplicate: int = 6
    """dHash Hamming distance (of 64 bits, worst keyframe) at or below which a clip duplicates a kept one."""
    min_size: int = 256
    """Shortest side (pixels, after removing bars) below which frames are tiny."""
    black: float = 32.0
    """Luminance (0..255) below which a border row/column is a black bar."""


def laplacian_variance(gray_HW: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: low for blurred (or flat) frames."""
    g = gray_HW.astype(np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var()) if lap.size else 0.0


def phase_shift(a_HW: np.ndarray, b_HW: np.ndarray) -> tuple[float, float]:
    """Global translation (dy, dx) from frame a to frame b by phase correlation, sub-pixel (parabolic peak)."""
    h, w = a_HW.shape
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    fa = np.fft.rfft2((a_HW - a_HW.mean()) * window)
    fb = np.fft.rfft2((b_HW - b_HW.mean()) * window)
    cross = fb * np.conj(fa)
    cross /= np.maximum(np.abs(cross), 1e-9)
    corr = np.fft.irfft2(cross, s=(h, w))
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)
    dy = py + _parabolic(corr[(py - 1) % h, px], corr[py, px], corr[(py + 1) % h, px])
    dx = px + _parabolic(corr[py, (px - 1) % w], corr[py, px], corr[py, (px + 1) % w])
    return float(dy if dy <= h / 2 else dy - h), float(dx if dx <= w / 2 else dx - w)


def _parabolic(left: float, centre: float, right: float) -> float:
    """Offset of the vertex of the parabola through three samples around a peak (within +-0.5)."""
    denom = left - 2.0 * centre + right
    return float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5)) if denom < 0 else 0.0


def shake_jitter(gray_FHW: np.ndarray, window: int = 9) -> float:
    """Camera shake: RMS distance of the camera path from its moving average, in % of frame width.

    The path is the running sum of frame-to-frame global shifts; still cameras and smooth pans follow their
    moving average (`window` frames) closely, handheld shake does not.
    """
    if len(gray_FHW) < 3:
        return 0.0
    frames = gray_FHW.astype(np.float32)
    shifts = np.array([phase_shift(frames[i - 1], frames[i]) for i in range(1, len(frames))])
    path = np.vstack([np.zeros((1, 2)), np.cumsum(shifts, axis=0)])
    half = max(1, min(window, len(path)) // 2)
    padded = np.pad(path, ((half, half), (0, 0)), mode="reflect", reflect_type="odd")  # keeps linear pans
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    smooth = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(2)], axis=1)
    rms = float(np.sqrt(((path - smooth) ** 2).sum(axis=1).mean()))
    return 100.0 * rms / gray_FHW.shape[2]


def luminance_range(gray_FHW: np.ndarray) -> float:
    """Max minus min of per-frame mean luminance."""
    means = gray_FHW.reshape(len(gray_FHW), -1).mean(axis=1)
    return float(means.max() - means.min()) if len(means) else 0.0


def dhash(gray_HW: np.ndarray) -> int:
    """64-bit difference hash: 9x8 area-averaged thumbnail, bit = left pixel brighter than its right one."""
    thumb = _area_resize(gray_HW.astype(np.float32), 8, 9)
    bits = (thumb[:, :-1] > thumb[:, 1:]).ravel()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return bin(a ^ b).count("1")


def _area_resize(img_HW: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Average-pool to (out_h, out_w) with fractional cell edges (works for any input size >= 1)."""
    h, w = img_HW.shape
    ys = np.linspace(0, h, out_h + 1)
    xs = np.linspace(0, w, out_w + 1)
    out = np.empty((out_h, out_w), dtype=np.float32)
    for i in range(out_h):
        y0, y1 = int(ys[i]), max(int(np.ceil(ys[i + 1])), int(ys[i]) + 1)
        for j in range(out_w):
            x0, x1 = int(xs[j]), max(int(np.ceil(xs[j + 1])), int(xs[j]) + 1)
            out[i, j] = img_HW[y0:y1, x0:x1].mean()
    return out


def letterbox_bars(rows_FH: np.ndarray, cols_FW: np.ndarray, black: float) -> tuple[int, int, int, int]:
    """Black bars (top, bottom, left, right) in pixels from per-frame row/column mean luminance.

    A border row or column is a bar when it stays below `black` in every frame. Bars that would leave less
    than 20% of the frame (a dark scene, not bars) count as none.
    """
    brightest_rows = rows_FH.max(axis=0)
    brightest_cols = cols_FW.max(axis=0)
    top, bottom = _run(brightest_rows < black), _run((brightest_rows < black)[::-1])
    left, right = _run(brightest_cols < black), _run((brightest_cols < black)[::-1])
    if top + bottom > 0.8 * len(brightest_rows):
        top = bottom = 0
    if left + right > 0.8 * len(brightest_cols):
        left = right = 0
    return top, bottom, left, right


def _run(mask: np.ndarray) -> int:
    """Length of the leading run of True."""
    off = np.flatnonzero(~mask)
    return int(off[0]) if len(off) else len(mask)
