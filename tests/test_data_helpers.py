"""Real media files for the data tests: videos whose frame i is a solid colour encoding i, odd images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wantune.data.video import write_video


def numbered_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """(F, H, W, 3) uint8; frame i is solid (16*(i//16)+8, 16*(i%16)+8, 128)."""
    frames_FHWC = np.zeros((count, height, width, 3), np.uint8)
    for i in range(count):
        frames_FHWC[i, ..., 0] = 16 * (i // 16) + 8
        frames_FHWC[i, ..., 1] = 16 * (i % 16) + 8
        frames_FHWC[i, ..., 2] = 128
    return frames_FHWC


def frame_numbers(frames: np.ndarray) -> list[int]:
    """Decode the frame numbers of `numbered_frames` output (FHWC uint8, or CFHW float in [-1, 1])."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.shape[-1] != 3:  # C, F, H, W in [-1, 1]
        frames = (np.moveaxis(frames, 0, -1) + 1.0) * 127.5
    red = frames[..., 0].mean(axis=(1, 2))
    green = frames[..., 1].mean(axis=(1, 2))
    return [int(r // 16) * 16 + int(g // 16) for r, g in zip(red, green)]


def numbered_video(path: Path, count: int, fps: float, codec: str = "libx264", height: int = 48,
                   width: int = 64) -> Path:
    """Encode a `numbered_frames` clip."""
    return write_video(path, numbered_frames(count, height, width), fps, codec=codec)


def solid_image(path: Path, width: int = 64, height: int = 48, value: int = 200, mode: str = "RGB") -> Path:
    """Save a solid image in a Pillow mode."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (value, value, value)).convert(mode).save(path)
    return path
