"""Image conditioning for I2V, FLF2V (mask + image latents `y`, CLIP features) and TI2V (first-frame latent).

Legend: B batch, C channels, F frames (pixel F_px or latent F), H/W height/width, K CLIP tokens.

- I2V/FLF2V `y` (B, 4+C, F, h, w): a 4-channel mask (1 on the given frames) then the VAE latents of the pixel
  video [first image, zeros..., (last image)]. The pixel mask has frame 0 repeated 4x so that it folds into
  (F, 4) per latent frame, as the official code builds it.
- TI2V: the encoded first image (B, C, 1, h, w) replaces latent frame 0 during sampling.
"""

from __future__ import annotations

from pathlib import Path

import torch

from wantune.errors import UserError


def load_image(path: str | Path, width: int, height: int) -> torch.Tensor:
    """An image file as (3, H, W) float32 in [-1, 1], scaled to cover width x height and centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image not found")
    try:
        image = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return pixels.permute(2, 0, 1).float().div(127.5).sub(1.0)


def i2v_mask(frames: int, latent_h: int, latent_w: int, last_frame: bool = False,
             temporal_stride: int = 4) -> torch.Tensor:
    """The (1, 4, F_latent, h, w) mask: 1 where a frame is given (first; also last for FLF2V), else 0."""
    mask = torch.zeros(1, frames, latent_h, latent_w)
    mask[:, 0] = 1.0
    if last_frame:
        mask[:, -1] = 1.0
    mask = torch.cat([mask[:, :1].repeat_interleave(temporal_stride, dim=1), mask[:, 1:]], dim=1)
    mask = mask.view(1, mask.shape[1] // temporal_stride, temporal_stride, latent_h, latent_w)
    return mask.transpose(1, 2)


def image_condition(vae, first_CHW: torch.Tensor, last_CHW: torch.Tensor | None, frames: int) -> torch.Tensor:
    """I2V/FLF2V conditioning `y` (1, 4 + z_dim, F_latent, h, w) from the first (and last) image in [-1, 1]."""
    c, height, width = first_CHW.shape
    video = first_CHW.new_zeros(1, c, frames, height, width)
    video[:, :, 0] = first_CHW
    if last_CHW is not None:
        video[:, :, -1] = last_CHW
    with torch.no_grad():
        latents_BCFHW = vae.encode(video).float()
    mask = i2v_mask(frames, latents_BCFHW.shape[-2], latents_BCFHW.shape[-1], last_CHW is not None)
    return torch.cat([mask.to(latents_BCFHW), latents_BCFHW], dim=1)


def first_frame_latent(vae, image_CHW: torch.Tensor) -> torch.Tensor:
    """TI2V: the image encoded as a one-frame latent (1, z_dim, 1, h, w)."""
    with torch.no_grad():
        return vae.encode(image_CHW[None, :, None]).float()


def clip_features(clip, first_CHW: torch.Tensor, last_CHW: torch.Tensor | None) -> torch.Tensor:
    """Wan 2.1 I2V/FLF2V CLIP features (1, 257 per image, 1280): one image, or first and last concatenated."""
    images = first_CHW[None] if last_CHW is None else torch.stack([first_CHW, last_CHW])
    with torch.no_grad():
        features_BKD = clip.encode(images).float()
    return features_BKD.reshape(1, -1, features_BKD.shape[-1])
