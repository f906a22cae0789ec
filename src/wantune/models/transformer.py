"""The Wan 2.1 / 2.2 diffusion transformer, with the official checkpoint's parameter names.

`WanModel(variant)` covers T2V, I2V and FLF2V (Wan 2.1 CLIP image tokens through `img_emb`), the A14B experts
and TI2V-5B (per-token timesteps). It takes batched tensors instead of the official per-sample lists.

Precision follows the official code: the time embedding, every modulation, the residual stream and the head run
in float32; the linear layers of the blocks run in the model's compute dtype (the dtype of `text_embedding`'s
output, i.e. of the weights, or the autocast dtype). The output is float32.

Shape legend:
  B batch; C channels; F, H, W latent frames, height, width; f, h, w the token grid (F/1, H/2, W/2)
  L video tokens (f*h*w); T timestep tokens (1, or L for per-token TI2V timesteps)
  S context tokens (text_len = 512); K CLIP image tokens (257, FLF2V 514); E CLIP width (1280)
  D model dim; N heads; Dh head dim; P = patch volume * out channels
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from wantune.errors import UserError
from wantune.models.attention import attention
from wantune.models.rope import apply_rope, rope_tables
from wantune.models.variants import WanVariant

CLIP_DIM = 1280
CLIP_TOKENS = 257


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos, sin] timestep embedding of width `dim`, computed in float64, returned in float32."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float64, device=t.device) / half
    angles = t.to(torch.float64)[..., None] * torch.pow(10000.0, -exponents)
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float()


def linear_float32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` computed in float32 whatever the weights' dtype (official float32 autocast regions)."""
    bias = None if layer.bias is None else layer.bias.float()
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), layer.weight.float(), bias)


class WanRMSNorm(nn.Module):
    """RMSNorm over the full model dim (q/k norm), computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, returning float32 (affine only for `norm3`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class WanSelfAttention(nn.Module):
    """Self-attention over the video tokens with q/k RMSNorm and 3D RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x_BLD: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q_BLNDh = apply_rope(self.norm_q(self.q(x_BLD)).unflatten(2, heads), rope).to(x_BLD.dtype)
        k_BLNDh = apply_rope(self.norm_k(self.k(x_BLD)).unflatten(2, heads), rope).to(x_BLD.dtype)
        v_BLNDh = self.v(x_BLD).unflatten(2, heads)
        return self.o(attention(q_BLNDh, k_BLNDh, v_BLNDh).flatten(2))


class WanCrossAttention(nn.Module):
    """Cross-attention to the text tokens; Wan 2.1 I2V/FLF2V adds a second one to the CLIP image tokens."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, image: bool):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        if image:
            self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.norm_k_img = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x_BLD: torch.Tensor, context_BSD: torch.Tensor,
                context_img_BKD: torch.Tensor | None = None) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q_BLNDh = self.norm_q(self.q(x_BLD)).unflatten(2, heads)
        k_BSNDh = self.norm_k(self.k(context_BSD)).unflatten(2, heads)
        out_BLNDh = attention(q_BLNDh, k_BSNDh, self.v(context_BSD).unflatten(2, heads))
        if context_img_BKD is not None:
            k_BKNDh = self.norm_k_img(self.k_img(context_img_BKD)).unflatten(2, heads)
            out_BLNDh = out_BLNDh + attention(q_BLNDh, k_BKNDh, self.v_img(context_img_BKD).unflatten(2, heads))
        return self.o(out_BLNDh.flatten(2))


class WanBlock(nn.Module):
    """One transformer block: modulated self-attention, cross-attention, modulated GELU FFN."""

    def __init__(self, variant: WanVariant):
        super().__init__()
        dim, eps = variant.dim, variant.eps
        self.norm1 = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, variant.num_heads, variant.qk_norm, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if variant.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, variant.num_heads, variant.qk_norm, eps,
                                            image=variant.has_image_embedding)
        self.norm2 = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, variant.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(variant.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x_BLD: torch.Tensor, e_BT6D: torch.Tensor, context_BSD: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], context_img_BKD: torch.Tensor | None = None) -> torch.Tensor:
        """x_BLD float32 residual stream -> float32; layers compute in context_BSD's dtype."""
        dtype = context_BSD.dtype
        mod_BT6D = self.modulation.float()[None] + e_BT6D
        shift1, scale1, gate1, shift2, scale2, gate2 = mod_BT6D.unbind(2)  # each (B, T, D)

        h_BLD = self.norm1(x_BLD) * (1 + scale1) + shift1
        x_BLD = x_BLD + self.self_attn(h_BLD.to(dtype), rope).float() * gate1
        h_BLD = self.norm3(x_BLD).to(dtype)
        x_BLD = x_BLD + self.cross_attn(h_BLD, context_BSD, context_img_BKD).float()
        h_BLD = self.norm2(x_BLD) * (1 + scale2) + shift2
        return x_BLD + self.ffn(h_BLD.to(dtype)).float() * gate2


class WanHead(nn.Module):
    """Output head: modulated LayerNorm and a linear layer to patch-volume x out channels (float32)."""

    def __init__(self, variant: WanVariant):
        super().__init__()
        dim = variant.dim
        self.norm = WanLayerNorm(dim, variant.eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(variant.patch_size) * variant.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x_BLD: torch.Tensor, e_BTD: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float()[None] + e_BTD[:, :, None]).unbind(2)
        return linear_float32(self.head, self.norm(x_BLD) * (1 + scale) + shift)


class WanImageEmbedding(nn.Module):
    """Wan 2.1 I2V/FLF2V: CLIP penultimate features (E=1280) -> K context tokens of width D."""

    def __init__(self, variant: WanVariant):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(CLIP_DIM), nn.Linear(CLIP_DIM, CLIP_DIM), nn.GELU(),
                                  nn.Linear(CLIP_DIM, variant.dim), nn.LayerNorm(variant.dim))
        if variant.has_image_pos_embedding:
            self.emb_pos = nn.Parameter(torch.zeros(1, 2 * CLIP_TOKENS, CLIP_DIM))

    def forward(self, clip_BKE: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "emb_pos"):  # FLF2V: first and last image tokens side by side
            clip_BKE = clip_BKE.reshape(-1, 2 * CLIP_TOKENS, CLIP_DIM) + self.emb_pos.to(clip_BKE.dtype)
        return self.proj(clip_BKE)


class WanModel(nn.Module):
    """The Wan diffusion transformer of one variant; state dict names match the official checkpoints."""

    def __init__(self, variant: WanVariant):
        super().__init__()
        self.variant = variant
        dim = variant.dim
        self.patch_embedding = nn.Conv3d(variant.in_dim, dim, kernel_size=variant.patch_size,
                                         stride=variant.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(variant.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(variant.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(variant) for _ in range(variant.num_layers))
        self.head = WanHead(variant)
        if variant.has_image_embedding:
            self.img_emb = WanImageEmbedding(variant)

    def forward(self, x_BCFHW: torch.Tensor, t: torch.Tensor, context_BLD: torch.Tensor,
                clip_fea_BKD: torch.Tensor | None = None, y_BCFHW: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the flow (noise - x0) for latents x at timesteps t (sigma * 1000) -> float32 (B, out, F, H, W).

        t: (B,) or per-token (B, L) (TI2V). context_BLD: text embeddings (B, L <= text_len, text_dim), zero padded
        here. clip_fea_BKD: Wan 2.1 I2V (B, 257, 1280); FLF2V (B, 514, 1280) or (2B, 257, 1280), first image then
        last. y_BCFHW: I2V/FLF2V conditioning (mask + image latents), concatenated after x on channels.
        """
        self._check_inputs(x_BCFHW, context_BLD, clip_fea_BKD, y_BCFHW)
        if y_BCFHW is not None:
            x_BCFHW = torch.cat([x_BCFHW, y_BCFHW.to(x_BCFHW.dtype)], dim=1)
        dtype = self.patch_embedding.weight.dtype
        tokens_BDfhw = self.patch_embedding(x_BCFHW.to(dtype))
        grid = tuple(tokens_BDfhw.shape[2:])
        x_BLD = tokens_BDfhw.flatten(2).transpose(1, 2).float()

        e_BTD, e_BT6D = self.embed_time(self._timesteps(t, x_BLD))
        context_BSD = self.text_embedding(self._pad_text(context_BLD).to(dtype))
        context_img_BKD = None
        if self.variant.has_image_embedding:
            context_img_BKD = self.img_emb(clip_fea_BKD.to(context_BSD.dtype))
        rope = rope_tables(grid, self.variant.head_dim, device=x_BLD.device)

        for block in self.blocks:
            x_BLD = block(x_BLD, e_BT6D, context_BSD, rope, context_img_BKD)
        return self.unpatchify(self.head(x_BLD, e_BTD), grid)

    def embed_time(self, t_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps (B, T) -> time embedding e_BTD and block modulation e_BT6D, in float32."""
        freq_BTF = sinusoidal_embedding(t_BT, self.variant.freq_dim)
        e_BTD = linear_float32(self.time_embedding[2], F.silu(linear_float32(self.time_embedding[0], freq_BTF)))
        e_BT6D = linear_float32(self.time_projection[1], F.silu(e_BTD)).unflatten(2, (6, self.variant.dim))
        return e_BTD, e_BT6D

    def unpatchify(self, out_BLP: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Head output (B, L, pt*ph*pw*C) -> (B, C, F, H, W)."""
        (f, h, w), (pt, ph, pw) = grid, self.variant.patch_size
        out = out_BLP.view(out_BLP.shape[0], f, h, w, pt, ph, pw, self.variant.out_dim)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # B C f pt h ph w pw
        return out.reshape(out.shape[0], self.variant.out_dim, f * pt, h * ph, w * pw)

    def _timesteps(self, t: torch.Tensor, x_BLD: torch.Tensor) -> torch.Tensor:
        """t as (B, T): (B,) -> (B, 1) shared by all tokens; per-token (B, L) kept."""
        t = torch.as_tensor(t, device=x_BLD.device)
        batch, tokens = x_BLD.shape[:2]
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2 or t.shape[0] not in (1, batch) or t.shape[1] not in (1, tokens):
            raise UserError(f"timesteps of shape {tuple(t.shape)}: expected (B,) or per-token (B, {tokens}) "
                            f"with B = {batch}")
        return t.expand(batch, t.shape[1])

    def _pad_text(self, context_BLD: torch.Tensor) -> torch.Tensor:
        """Zero-pad the text tokens to text_len, as the official code does before text_embedding."""
        missing = self.variant.text_len - context_BLD.shape[1]
        return F.pad(context_BLD, (0, 0, 0, missing)) if missing > 0 else context_BLD

    def _check_inputs(self, x_BCFHW, context_BLD, clip_fea_BKD, y_BCFHW) -> None:
        """One-line UserErrors for the mistakes users make (wrong channels, missing image conditioning)."""
        v = self.variant
        if x_BCFHW.ndim != 5:
            raise UserError(f"{v.name}: latents must be (B, C, F, H, W); got shape {tuple(x_BCFHW.shape)}")
        channels = x_BCFHW.shape[1] + (0 if y_BCFHW is None else y_BCFHW.shape[1])
        if channels != v.in_dim:
            got = f"x {x_BCFHW.shape[1]}" + ("" if y_BCFHW is None else f" + y {y_BCFHW.shape[1]}")
            hint = "; pass the image conditioning y (mask + image latents)" if v.needs_image and y_BCFHW is None \
                else "; check the model variant and the latents"
            raise UserError(f"{v.name}: expects {v.in_dim} input channels, got {got}{hint}")
        if any(size % p for size, p in zip(x_BCFHW.shape[2:], v.patch_size)):
            raise UserError(f"{v.name}: latent size {tuple(x_BCFHW.shape[2:])} is not a multiple of the patch "
                            f"{v.patch_size}; use a resolution that is a multiple of {v.pixel_multiple}")
        if context_BLD.ndim != 3 or context_BLD.shape[1] > v.text_len or context_BLD.shape[2] != v.text_dim:
            raise UserError(f"{v.name}: text context must be (B, <= {v.text_len}, {v.text_dim}); got "
                            f"{tuple(context_BLD.shape)}")
        if context_BLD.shape[0] != x_BCFHW.shape[0]:
            raise UserError(f"{v.name}: text context batch {context_BLD.shape[0]} != latents batch "
                            f"{x_BCFHW.shape[0]}; pass one context per sample")
        if v.has_image_embedding and clip_fea_BKD is None:
            raise UserError(f"{v.name}: needs CLIP image features (clip_fea); pass the encoded conditioning image")
