"""The Wan 2.1 / 2.2 video VAEs through diffusers' `AutoencoderKLWan`, with the official latent normalisation.

`load_vae(path)` reads an official `.pth`, an official/ComfyUI safetensors file (optionally prefixed), or a
diffusers folder / diffusers-named file, and builds the model from the checkpoint's shapes.
`WanVAE.encode` returns the official normalised mean `(mu - mean) / std`; `decode` undoes it, decodes and
clamps to [-1, 1]. Large videos are decoded (and encoded) in spatial tiles chosen from a memory estimate.

Shapes: B batch, C channels (3 pixels, z_dim latents), F frames, H height, W width.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from wantune.models.wrapper import FrozenModule
from wantune.errors import UserError
from wantune.models import vae_convert
from wantune.models.formats import component_location, file_identity, read_component_weights

# Official per-channel latent statistics (Wan-Video wan/modules/vae2_1.py and vae2_2.py).
WAN21_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916]
WAN22_MEAN = [-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
              0.157, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
              -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123, -0.0313, -0.1649, 0.0117, 0.0723,
              -0.2839, -0.2083, -0.052, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667]
WAN22_STD = [0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
             0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
             0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
             0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744]
LATENT_STATS = {"2.1": (WAN21_MEAN, WAN21_STD), "2.2": (WAN22_MEAN, WAN22_STD)}
VAE_FILES = ("Wan2.1_VAE.pth", "Wan2.2_VAE.pth")
VERSION_Z_DIM = {"2.1": 16, "2.2": 48}
VERSION_STRIDE = {"2.1": (4, 8, 8), "2.2": (4, 16, 16)}

# Live activation tensors per (channel x pixel x frame) at full resolution, and copies of the float32 output:
# fitted (conservatively) to peaks measured on H100/H200, see WanVAE.memory_estimate.
_ACTIVATION_FACTOR = 16
_OUTPUT_COPIES = 3
_TILE_CHOICES = (512, 384, 256, 192, 128)


@dataclass(frozen=True)
class TilePlan:
    """Spatial tiling for one encode/decode call, in pixels (None = no tiling)."""

    tile: int | None
    """Tile height and width in pixels."""
    stride: int | None
    """Distance between tile starts in pixels (tile - overlap)."""


class WanVAE(FrozenModule):
    """A loaded Wan VAE: normalised encode, decode, and what a cache key needs."""

    def __init__(self, model, version: str, identity: str):
        self.model = model.eval().requires_grad_(False)
        self.version = version
        self.identity = identity
        self.z_dim = VERSION_Z_DIM[version]
        self.stride = VERSION_STRIDE[version]
        mean, std = LATENT_STATS[version]
        self._mean_C = torch.tensor(mean, dtype=torch.float32)
        self._std_C = torch.tensor(std, dtype=torch.float32)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.z_dim, 1, 1, 1)
        return (self._mean_C.to(like.device).view(shape), self._std_C.to(like.device).view(shape))

    @torch.no_grad()
    def encode(self, video_BCFHW: torch.Tensor, tiled: bool | None = None, tile: int | None = None) -> torch.Tensor:
        """Video in [-1, 1] (F = 4n+1) -> normalised latent mean (B, z_dim, F', H/s, W/s), float32.

        tiled: None = tile only when the frame does not fit memory; tile: tile size in pixels (default: by memory).
        """
        self._check_video(video_BCFHW)
        _, _, frames, height, width = video_BCFHW.shape
        self._set_tiling(self.plan_tiles(frames, height, width, tiled, tile))
        posterior = self.model.encode(video_BCFHW.to(self.device, self.dtype)).latent_dist
        mean_BCFHW = posterior.mean.float()
        mu, sigma = self._stats(mean_BCFHW)
        return (mean_BCFHW - mu) / sigma

    @torch.no_grad()
    def decode(self, latents_BCFHW: torch.Tensor, tiled: bool | None = None, tile: int | None = None) -> torch.Tensor:
        """Normalised latents -> video (B, 3, F, H, W) clamped to [-1, 1], float32 (tiled, tile: as encode)."""
        if latents_BCFHW.ndim != 5 or latents_BCFHW.shape[1] != self.z_dim:
            raise UserError(f"latents of shape {tuple(latents_BCFHW.shape)}: the Wan {self.version} VAE decodes "
                            f"(B, {self.z_dim}, F, H, W) latents")
        mu, sigma = self._stats(latents_BCFHW)
        z_BCFHW = latents_BCFHW.float() * sigma + mu
        _, _, f, h, w = z_BCFHW.shape
        frames = (f - 1) * self.stride[0] + 1
        self._set_tiling(self.plan_tiles(frames, h * self.stride[1], w * self.stride[2], tiled, tile))
        video = self.model.decode(z_BCFHW.to(self.device, self.dtype)).sample
        return video.float().clamp_(-1.0, 1.0)

    def _check_video(self, video_BCFHW: torch.Tensor) -> None:
        s = self.stride
        if video_BCFHW.ndim != 5 or video_BCFHW.shape[1] != 3:
            raise UserError(f"video of shape {tuple(video_BCFHW.shape)}: expected (B, 3, F, H, W) in [-1, 1]")
        _, _, f, h, w = video_BCFHW.shape
        if (f - 1) % s[0] or h % s[1] or w % s[2]:
            raise UserError(f"video of {f} frames at {h}x{w}: the Wan {self.version} VAE needs 4n+1 frames and "
                            f"sizes that are multiples of {s[1]}")

    def memory_estimate(self, frames: int, height: int, width: int, tile: int | None = None) -> int:
        """Estimated peak bytes (beyond the weights) to decode a frames x height x width video, optionally tiled.

        Activations of one causal chunk (4 frames + 2 cached) at full resolution, over the frame or one tile,
        plus the whole float32 output and its copies. Measured peaks on an H200 in bf16 (random full-size
        weights; estimate in brackets): 2.1 480x832x81 untiled 4.4 GiB (7.9), 256 px tiles 1.0 (2.2);
        2.2 480x832x81 4.6 GiB (5.7); 2.2 704x1280x121 10.6 GiB (14.0), 256 px tiles 2.9 (4.4).
        """
        cfg = self.model.config
        channels = (cfg.decoder_base_dim or cfg.base_dim) * cfg.dim_mult[0]
        patch = cfg.patch_size or 1
        tile_h, tile_w = (min(tile, height), min(tile, width)) if tile else (height, width)
        pixels = (tile_h // patch) * (tile_w // patch)
        activations = _ACTIVATION_FACTOR * channels * pixels * 6 * self.dtype.itemsize
        return activations + _OUTPUT_COPIES * 3 * frames * height * width * 4

    def plan_tiles(self, frames: int, height: int, width: int, tiled: bool | None, tile: int | None = None,
                   budget: int | None = None) -> TilePlan:
        """Choose the tile size: none when the whole frame fits `budget` (default: 70% of free memory)."""
        if tiled is False:
            return TilePlan(None, None)
        if tile is not None:
            unit = 4 * self.stride[1]
            if tile % unit:
                raise UserError(f"VAE tile size {tile}: must be a multiple of {unit} pixels for the "
                                f"Wan {self.version} VAE")
            return TilePlan(tile, tile * 3 // 4)
        budget = _memory_budget(self.device) if budget is None else budget
        if tiled is None and self.memory_estimate(frames, height, width) <= budget:
            return TilePlan(None, None)
        fits = [t for t in _TILE_CHOICES if self.memory_estimate(frames, height, width, t) <= budget]
        tile = fits[0] if fits else _TILE_CHOICES[-1]
        if tiled is None and tile >= max(height, width):
            return TilePlan(None, None)
        return TilePlan(tile, tile * 3 // 4)

    def _set_tiling(self, plan: TilePlan) -> None:
        if plan.tile is None:
            self.model.use_tiling = False
            return
        self.model.enable_tiling(plan.tile, plan.tile, plan.stride, plan.stride)
        self.model.tile_sample_min_height = self.model.tile_sample_min_width = plan.tile
        self.model.tile_sample_stride_height = self.model.tile_sample_stride_width = plan.stride


def _memory_budget(device: torch.device) -> int:
    """Bytes the VAE's activations may use on `device` (70% of what is free)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.7)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.7)
    except (ValueError, OSError):
        return 8 << 30


def load_vae(path, version: str | None = None, dtype: torch.dtype = torch.float32, device="cpu") -> WanVAE:
    """Load a Wan VAE from an official .pth, official/ComfyUI safetensors or diffusers folder/file."""
    from diffusers import AutoencoderKLWan

    path = component_location(Path(path), "vae", VAE_FILES)
    if version not in (None, "2.1", "2.2"):
        raise UserError(f"VAE version {version!r}: expected '2.1' or '2.2'")
    sd = read_vae_state_dict(path)
    cfg = vae_convert.diffusers_vae_config(sd)
    found = {16: "2.1", 48: "2.2"}.get(cfg["z_dim"])
    if found is None or cfg["is_residual"] != (found == "2.2"):
        raise UserError(f"{path}: VAE with z_dim {cfg['z_dim']} is neither the Wan 2.1 (16) nor the Wan 2.2 (48) VAE")
    if version is not None and version != found:
        raise UserError(f"{path}: is the Wan {found} VAE (z_dim {cfg['z_dim']}) but the model needs the Wan "
                        f"{version} VAE (z_dim {VERSION_Z_DIM[version]}); pass the matching --vae file")
    mean, std = LATENT_STATS[found]
    with torch.device("meta"):
        model = AutoencoderKLWan(**cfg, latents_mean=mean, latents_std=std)
    sd = {k: v.to(dtype) for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: VAE weights do not fit a Wan {found} VAE ({first})") from None
    model.to(device)
    return WanVAE(model, found, vae_identity(path, dtype))


def read_vae_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """State dict of a VAE file or diffusers folder, in diffusers' `AutoencoderKLWan` names."""
    sd = read_component_weights(path, "VAE")
    sd = _strip_prefix(sd, path)
    if vae_convert.is_official_vae(sd):
        return vae_convert.official_to_diffusers(sd)
    return sd


def _strip_prefix(sd: dict, path: Path) -> dict:
    """Drop a common key prefix (e.g. `vae.`, `first_stage_model.`) in front of the VAE's names."""
    for root in ("encoder.conv1.weight", "encoder.conv_in.weight"):
        for key in sd:
            if key.endswith(root) and (key == root or key[: -len(root)].endswith(".")):
                prefix = key[: -len(root)]
                return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    raise UserError(f"{path}: not a Wan VAE (no encoder.conv1 / encoder.conv_in weight); "
                    f"pass Wan2.1_VAE.pth, Wan2.2_VAE.pth or a diffusers AutoencoderKLWan folder")


def vae_identity(path: Path, dtype: torch.dtype) -> str:
    """Stable id of a VAE file/folder + dtype for cache keys: name, size and a hash of the first MiB."""
    return f"{file_identity(path)}:{str(dtype).removeprefix('torch.')}"
