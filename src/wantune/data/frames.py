"""Frame timelines and windows: resample a clip to the model fps, then cut training windows.

1. `resample_timeline(num_frames, source_fps, model_fps)` maps the model's frame k (time k / model_fps) to the
   source frame nearest in time (round(k * source_fps / model_fps)), for every k whose time is within the
   clip's span [0, (num_frames - 1) / source_fps] (`resample_times` does the same from the frame timestamps
   of a variable-frame-rate file). Motion keeps its speed and the clip keeps its duration:
   61 frames at 30 fps (2 s span) -> 33 frames at 16 fps (2 s span). A lower source fps repeats frames.
2. `frame_windows(length, ...)` cuts (start, frames) windows out of the resampled timeline, as musubi-tuner
   does on its frame list:
   - head: (0, n) for each target n that fits;
   - chunk: back-to-back non-overlapping windows (0, n), (n, n), (2n, n)... for each target n;
   - slide: windows starting every `frame_stride` frames, for each target n;
   - uniform: `frame_sample` windows with starts spread evenly over [0, length - n] (int of linspace);
   - full: one window (0, m) with m = min(length, max_frames) rounded down to 4n+1.
   A target longer than the clip gives no window for that target; repeated windows (uniform on a clip
   exactly one window long) are kept once.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

EXTRACTION_MODES = ("head", "chunk", "slide", "uniform", "full")


def _fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(100_000)


def resample_timeline(num_frames: int, source_fps: float, model_fps: float) -> list[int]:
    """Source frame index of each model-fps frame (nearest by timestamp) over the clip's span."""
    if num_frames <= 0:
        return []
    src, dst = _fraction(source_fps), _fraction(model_fps)
    if src == dst:
        return list(range(num_frames))
    span = Fraction(num_frames - 1) / src
    count = int(span * dst) + 1
    ratio = src / dst
    return [min(num_frames - 1, int(k * ratio + Fraction(1, 2))) for k in range(count)]


def resample_times(times: list[float] | tuple[float, ...], model_fps: float) -> list[int]:
    """Variable frame rate: the source frame nearest in time to each k / model_fps (ties to the later frame)
    over the span of `times` (seconds, sorted)."""
    if not times:
        return []
    count = int((times[-1] - times[0]) * model_fps + 1e-9) + 1
    picked, j = [], 0
    for k in range(count):
        t = times[0] + k / model_fps
        while j + 1 < len(times) and abs(times[j + 1] - t) <= abs(times[j] - t) + 1e-12:
            j += 1
        picked.append(j)
    return picked


def round_down_4n1(frames: int) -> int:
    """Largest 4n+1 not above `frames` (at least 1)."""
    return max(1, (frames - 1) // 4 * 4 + 1)


def frame_windows(length: int, mode: str, target_frames: list[int], frame_stride: int = 1,
                  frame_sample: int = 1, max_frames: int = 129) -> list[tuple[int, int]]:
    """(start, frames) windows over a timeline of `length` frames, per the module docstring."""
    windows: list[tuple[int, int]] = []
    if length <= 0:
        return windows
    if mode == "full":
        return [(0, round_down_4n1(min(length, max_frames)))]
    if mode == "uniform" and frame_sample == 1:
        mode = "head"
    for n in sorted(set(target_frames)):
        if n > length:
            continue
        if mode == "head":
            windows.append((0, n))
        elif mode == "chunk":
            windows.extend((start, n) for start in range(0, length - n + 1, n))
        elif mode == "slide":
            windows.extend((start, n) for start in range(0, length - n + 1, frame_stride))
        elif mode == "uniform":
            windows.extend((start, n) for start in _linspace_int(0, length - n, frame_sample))
        else:
            raise ValueError(f"unknown frame_extraction {mode!r}; use one of {', '.join(EXTRACTION_MODES)}")
    return list(dict.fromkeys(windows))


def _linspace_int(lo: int, hi: int, count: int) -> list[int]:
    """int() of `count` evenly spaced values from lo to hi inclusive (numpy.linspace(..., dtype=int))."""
    if count == 1:
        return [lo]
    step = Fraction(hi - lo, count - 1)
    return [int(lo + i * step) for i in range(count)]


def too_short_targets(length: int, mode: str, target_frames: list[int]) -> list[int]:
    """Targets that give no window because the resampled clip is shorter."""
    if mode == "full":
        return []
    return sorted(n for n in set(target_frames) if n > length)


@dataclass(frozen=True)
class Window:
    """One training window: source frame indices after fps resampling."""

    start: int
    """First frame of the window on the resampled timeline."""
    frame_indices: tuple[int, ...]
    """Source frame index of each window frame."""


def clip_windows(num_frames: int, source_fps: float, model_fps: float, mode: str, target_frames: list[int],
                 frame_stride: int = 1, frame_sample: int = 1, max_frames: int = 129) -> list[Window]:
    """The windows of one clip in source frame indices."""
    timeline = resample_timeline(num_frames, source_fps, model_fps)
    spans = frame_windows(len(timeline), mode, target_frames, frame_stride, frame_sample, max_frames)
    return [Window(start, tuple(timeline[start:start + n])) for start, n in spans]
