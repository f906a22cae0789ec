"""Loss masks (masked loss): a sample's mask file read at the sample's frames and bucket, pooled onto the latent grid.

A mask is an image (the same mask for every frame) or a video (read at the sample's own frame indices), white where
the loss counts fully and black where it counts `training.mask_min_weight` (grey in between; the mean of R, G, B).
On the latent grid a cell's weight is the mean of the pixels it encodes: Wan's VAE encodes pixel frame 0 alone
and then frames 4k-3..4k into latent frame k, and stride x stride pixels into one latent position.

Legend: F pixel frames, H/W bucket height/width, F' latent frames, h/w latent height/width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wantune.errors import UserError


def load_mask(sample) -> torch.Tensor:
    """The sample's mask resized and center-cropped like its frames: (F, H, W) float in [0, 1]. (The scan already
    left out windows a video mask is too short for.)"""
    from wantune.data.buckets import resize_crop
    from wantune.data.video import media_kind, read_frames, read_image

    path = sample.mask_path
    if media_kind(path) == "image":
        frames_FHWC = read_image(path)[None]
    else:
        frames_FHWC = read_frames(path, sample.frame_indices, seek=not sample.variable_rate)
    mask_FHW = resize_crop(frames_FHWC, sample.bucket).mean(1) / 255.0
    if mask_FHW.shape[0] == 1 and sample.num_frames > 1:
        mask_FHW = mask_FHW.expand(sample.num_frames, -1, -1)
    return mask_FHW.clamp(0.0, 1.0)


def latent_mask(mask_FHW: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """A pixel mask pooled onto the latent grid of a VAE with `stride` (t, h, w): (1, F', h, w)."""
    t, sh, sw = stride
    frames = mask_FHW.shape[0]
    if (frames - 1) % t:
        raise UserError(f"mask of {frames} frames: a clip has {t}n+1 frames")
    spatial = F.avg_pool2d(mask_FHW[:, None].float(), (sh, sw))[:, 0]  # (F, h, w)
    groups = [spatial[:1]] + [spatial[1 + k * t:1 + (k + 1) * t].mean(0, keepdim=True)
                              for k in range((frames - 1) // t)]
    return torch.cat(groups)[None]


def loss_weights(mask_B1FHW: torch.Tensor, min_weight: float) -> torch.Tensor:
    """Per-position loss weights from masks in [0, 1]: min_weight where black, 1 where white."""
    return min_weight + (1.0 - min_weight) * mask_B1FHW.float()
