"""Writing what `generate` made: .mp4 at the variant's fps or .png, with the settings as JSON metadata.

The metadata is one JSON string (prompt, seed, steps, guidance, shift, sampler, size, model and LoRA files)
stored in the container's `comment` tag (PNG: a `comment` text chunk), so a video says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

METADATA_KEY = "comment"


def to_frames(video_CFHW: torch.Tensor) -> np.ndarray:
    """A decoded video in [-1, 1] (C, F, H, W) -> uint8 frames (F, H, W, C)."""
    pixels = ((video_CFHW.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()


def settings_json(variant, request, spec, settings) -> str:
    """The generation settings as one JSON string."""
    from wantune import __version__

    data = {"generator": f"wantune {__version__}", "variant": variant.name, "fps": variant.fps,
            **dataclasses.asdict(request), "sampler": settings.sampler, "model": Path(spec.model).name,
            "loras": [[Path(p).name, s] for p, s in spec.loras]}
    if variant.is_expert_pair:
        data["model_low"] = None if spec.model_low is None else Path(spec.model_low).name
        data["loras_low"] = [[Path(p).name, s] for p, s in spec.loras_low]
        data["boundary"] = variant.boundary
    else:
        data.pop("guidance_low", None)
    if spec.fp8:
        data["fp8"] = True
    return json.dumps(data, ensure_ascii=False)


def save_video(path: Path, frames_FHWC: np.ndarray, fps: int, metadata_json: str) -> Path:
    """Encode the frames to an .mp4 (H.264) with the settings in the `comment` tag."""
    from wantune.data.video import write_video

    return write_video(path, frames_FHWC, fps, metadata={METADATA_KEY: metadata_json})


def save_png(path: Path, frame_HWC: np.ndarray, metadata_json: str) -> Path:
    """One frame as a PNG with the settings in a `comment` text chunk."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, metadata_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame_HWC).save(path, pnginfo=info)
    return path


def read_settings(path: str | Path) -> dict:
    """The generation settings stored in a file `generate` wrote."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as image:
            return json.loads(image.text[METADATA_KEY])
    from wantune.data.video import read_metadata

    return json.loads(read_metadata(path)[METADATA_KEY])
