"""Resolution buckets: generate them, assign each item one, and resize + center-crop pixels into it.

Generated buckets (as kohya/musubi): for a resolution (w, h) with area A and a pixel multiple m, every width
from the minimum side up to sqrt(A) in steps of m, paired with the largest height (multiple of m) keeping
the area <= A, in both orientations, plus the largest square. An item gets the bucket with the nearest aspect ratio.
With `no_upscale`, a bucket never exceeds the source in either dimension: a source no larger than the
area keeps its own size snapped down to the multiple; a larger one takes the nearest-aspect bucket among
those that fit inside it (or, if none fits, its own aspect scaled down to the area).
Pixels are resized to cover the bucket (aspect kept) and center-cropped.
"""

from __future__ import annotations

import math

import numpy as np

Size = tuple[int, int]


def snap_down(value: float, multiple: int) -> int:
    """`value` rounded down to a multiple of `multiple` (0 if smaller)."""
    return int(value) // multiple * multiple


def generate_buckets(resolution: Size, multiple: int, min_side: int | None = None,
                     max_side: int | None = None) -> list[Size]:
    """Aspect-ratio buckets (w, h) with area <= w*h of `resolution`, sides multiples of `multiple`."""
    area = resolution[0] * resolution[1]
    root = int(math.sqrt(area))
    lo = max(multiple, snap_down(min_side if min_side else root // 2, multiple))
    buckets = set()
    for w in range(lo, max(lo, root) + 1, multiple):
        h = snap_down(area // w, multiple)
        if h < lo or (max_side and h > max_side) or w * h > area:
            continue
        buckets.update({(w, h), (h, w)})
    side = max(multiple, snap_down(root, multiple))
    buckets.add((side, side))  # square sources keep a square bucket
    return sorted(buckets)


def fixed_bucket(resolution: Size, multiple: int) -> Size:
    """`resolution` snapped down to the multiple (enable_bucket = false)."""
    return max(multiple, snap_down(resolution[0], multiple)), max(multiple, snap_down(resolution[1], multiple))


def nearest_bucket(size: Size, buckets: list[Size]) -> Size:
    """The bucket whose aspect ratio is nearest (in log space) to `size`'s; ties go to the larger area."""
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (round(abs(math.log(b[0] / b[1]) - aspect), 9), -b[0] * b[1]))


def assign_bucket(size: Size, buckets: list[Size], multiple: int, no_upscale: bool = False,
                  area: int | None = None, generated: bool = True) -> Size | None:
    """The bucket for a source of `size` (w, h); None when no bucket is possible without upscaling."""
    w, h = size
    if not no_upscale:
        return nearest_bucket(size, buckets)
    area = area or max(bw * bh for bw, bh in buckets)
    if generated and w * h <= area:
        bucket = (snap_down(w, multiple), snap_down(h, multiple))
        return bucket if min(bucket) >= multiple else None
    fitting = [b for b in buckets if b[0] <= w and b[1] <= h]
    if fitting:
        return nearest_bucket(size, fitting)
    if not generated:
        return None
    scale = math.sqrt(area / (w * h))
    bucket = (snap_down(w * scale, multiple), snap_down(h * scale, multiple))
    return bucket if min(bucket) >= multiple else None


def cover_crop_box(size: Size, bucket: Size) -> tuple[Size, tuple[int, int]]:
    """Resized size (aspect kept, covering the bucket) and the (left, top) of the centered crop."""
    w, h = size
    bw, bh = bucket
    scale = max(bw / w, bh / h)
    rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
    return (rw, rh), ((rw - bw) // 2, (rh - bh) // 2)


def resize_crop(frames_FHWC: np.ndarray, bucket: Size):
    """uint8 frames (F, H, W, 3) resized to cover `bucket` and center-cropped: float tensor (F, 3, bh, bw) 0..255."""
    import torch
    import torch.nn.functional as F

    frames_FCHW = torch.from_numpy(np.ascontiguousarray(frames_FHWC)).permute(0, 3, 1, 2).float()
    h, w = frames_FCHW.shape[-2:]
    (rw, rh), (left, top) = cover_crop_box((w, h), bucket)
    if (rw, rh) != (w, h):
        frames_FCHW = F.interpolate(frames_FCHW, size=(rh, rw), mode="bicubic", antialias=True,
                                    align_corners=False).clamp_(0, 255)
    return frames_FCHW[:, :, top:top + bucket[1], left:left + bucket[0]]
