"""CLIP ViT-H/14 image encoder for Wan 2.1 I2V / FLF2V, through transformers' `CLIPVisionModel`.

Reads the official Wan file (`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, Wan's own names:
`visual.transformer.N.attn.to_qkv`, ...), open_clip names (`visual.transformer.resblocks.N.attn.in_proj_weight`)
and HF/ComfyUI files (`vision_model.*`, e.g. `clip_vision_h.safetensors`). `ClipVision.encode` resizes to
224 px (bicubic), applies the CLIP mean/std and returns the penultimate layer's hidden states, as the
official `use_31_block=True` does: (B, 257, 1280) for ViT-H/14.

Shapes: B images, C=3 channels, H/W pixels, K tokens (1 class + patches), D width.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from wantune.models.wrapper import FrozenModule
from wantune.errors import UserError
from wantune.models.formats import component_location, file_identity, read_component_weights

CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HF = "vision_model."
_LAYER = _HF + "encoder.layers.{}."

# Per-layer renames (official Wan names, open_clip names) -> HF names. q/k/v are split separately.
_WAN_LAYER = {"norm1": "layer_norm1", "attn.proj": "self_attn.out_proj", "norm2": "layer_norm2",
              "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}
_OPEN_CLIP_LAYER = {"ln_1": "layer_norm1", "attn.out_proj": "self_attn.out_proj", "ln_2": "layer_norm2",
                    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_WAN_TOP = {"visual.patch_embedding.weight": _HF + "embeddings.patch_embedding.weight",
            "visual.pre_norm.weight": _HF + "pre_layrnorm.weight", "visual.pre_norm.bias": _HF + "pre_layrnorm.bias",
            "visual.post_norm.weight": _HF + "post_layernorm.weight",
            "visual.post_norm.bias": _HF + "post_layernorm.bias"}
_OPEN_CLIP_TOP = {"visual.conv1.weight": _HF + "embeddings.patch_embedding.weight",
                  "visual.ln_pre.weight": _HF + "pre_layrnorm.weight", "visual.ln_pre.bias": _HF + "pre_layrnorm.bias",
                  "visual.ln_post.weight": _HF + "post_layernorm.weight",
                  "visual.ln_post.bias": _HF + "post_layernorm.bias"}


def _split_qkv(out: dict, layer: int, kind: str, value: torch.Tensor) -> None:
    """Store a fused (3D, ...) q/k/v tensor as HF's separate q_proj, k_proj, v_proj."""
    for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
        out[_LAYER.format(layer) + f"self_attn.{name}.{kind}"] = part


def official_to_hf(sd: dict, source: str = "CLIP") -> dict:
    """Official Wan or open_clip visual weights -> HF `CLIPVisionModel` names (text tower dropped)."""
    visual = {k: v for k, v in sd.items() if k.startswith("visual.")}
    open_clip = "visual.conv1.weight" in visual
    top, per_layer = (_OPEN_CLIP_TOP, _OPEN_CLIP_LAYER) if open_clip else (_WAN_TOP, _WAN_LAYER)
    blocks = r"visual\.transformer\.resblocks\.(\d+)\.(.+)" if open_clip else r"visual\.transformer\.(\d+)\.(.+)"
    out = {}
    for key, value in visual.items():
        if key in top:
            out[top[key]] = value
        elif key in ("visual.cls_embedding", "visual.class_embedding"):
            out[_HF + "embeddings.class_embedding"] = value.reshape(-1)
        elif key in ("visual.pos_embedding", "visual.positional_embedding"):
            out[_HF + "embeddings.position_embedding.weight"] = value.reshape(-1, value.shape[-1])
        elif key in ("visual.head", "visual.proj"):
            continue  # projection to the joint space: unused (Wan takes hidden states)
        elif m := re.fullmatch(blocks, key):
            _rename_layer(out, int(m.group(1)), m.group(2), value, per_layer, source)
        else:
            raise UserError(f"{source}: unexpected key {key!r} for an official/open_clip CLIP vision tower")
    return out


def _rename_layer(out: dict, layer: int, rest: str, value, per_layer: dict, source: str) -> None:
    if rest in ("attn.to_qkv.weight", "attn.in_proj_weight"):
        return _split_qkv(out, layer, "weight", value)
    if rest in ("attn.to_qkv.bias", "attn.in_proj_bias"):
        return _split_qkv(out, layer, "bias", value)
    module, _, kind = rest.rpartition(".")
    if module not in per_layer:
        raise UserError(f"{source}: unexpected CLIP layer key {rest!r}")
    out[_LAYER.format(layer) + f"{per_layer[module]}.{kind}"] = value


def hf_to_official(sd: dict) -> dict:
    """HF `CLIPVisionModel` names -> the official Wan names (visual tower only)."""
    back_top = {v: k for k, v in _WAN_TOP.items()}
    back_layer = {v: k for k, v in _WAN_LAYER.items()}
    out, qkv = {}, {}
    for key, value in sd.items():
        if key in back_top:
            out[back_top[key]] = value
        elif key == _HF + "embeddings.class_embedding":
            out["visual.cls_embedding"] = value.reshape(1, 1, -1)
        elif key == _HF + "embeddings.position_embedding.weight":
            out["visual.pos_embedding"] = value[None]
        elif m := re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv[(int(m.group(1)), m.group(3), m.group(2))] = value
        elif m := re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            out[f"visual.transformer.{m.group(1)}.{back_layer[m.group(2)]}.{m.group(3)}"] = value
    for (layer, kind, part), _ in sorted(qkv.items()):
        if part == "q":
            fused = torch.cat([qkv[(layer, kind, p)] for p in "qkv"])
            out[f"visual.transformer.{layer}.attn.to_qkv.{kind}"] = fused
    return out


def normalise_hf(sd: dict, source: str = "CLIP") -> dict:
    """HF/ComfyUI CLIP vision keys as `vision_model.*` (any prefix dropped; projection, text and buffers removed)."""
    root = "embeddings.patch_embedding.weight"
    prefix = next((k[: -len(root)] for k in sd if k.endswith(root)), None)
    if prefix is None or (prefix and not prefix.endswith(".")):
        raise UserError(f"{source}: not a CLIP vision model (no patch embedding found); pass clip_vision_h."
                        f"safetensors or models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    parts = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
    return {_HF + k[len(prefix):]: v for k, v in sd.items()
            if k.startswith(prefix) and k[len(prefix):].startswith(parts) and not k.endswith("position_ids")}


def clip_config_kwargs(sd: dict, num_heads: int | None = None) -> dict:
    """`CLIPVisionConfig` arguments read from an HF-named state dict's shapes."""
    patch = sd[_HF + "embeddings.patch_embedding.weight"]
    positions = sd[_HF + "embeddings.position_embedding.weight"].shape[0]
    width, patch_size = patch.shape[0], patch.shape[-1]
    grid = round((positions - 1) ** 0.5)
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(_HF + "encoder.layers."))
    if num_heads is None:  # not stored in the weights: ViT-H/14 has 16 heads of 80; other CLIPs use 64-wide heads
        num_heads = 16 if width == 1280 else max(1, width // 64)
    return {
        "hidden_size": width, "intermediate_size": sd[_LAYER.format(0) + "mlp.fc1.weight"].shape[0],
        "num_hidden_layers": layers, "num_attention_heads": num_heads, "num_channels": patch.shape[1],
        "image_size": grid * patch_size, "patch_size": patch_size, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    }


class ClipVision(FrozenModule):
    """A loaded CLIP vision tower; `encode` gives the penultimate hidden states."""

    def __init__(self, model, identity: str):
        self.model = model.eval().requires_grad_(False)
        self.identity = identity
        self.image_size = model.config.image_size

    def preprocess(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> CLIP pixel values: bicubic resize to image_size, then mean/std normalised."""
        if images_BCHW.ndim != 4 or images_BCHW.shape[1] != 3:
            raise UserError(f"images of shape {tuple(images_BCHW.shape)}: expected (B, 3, H, W) in [-1, 1]")
        x = images_BCHW.float()
        size = (self.image_size, self.image_size)
        if tuple(x.shape[-2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return (x * 0.5 + 0.5 - mean) / std

    @torch.no_grad()
    def encode(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> penultimate hidden states (B, K, D) (257 x 1280 for ViT-H/14)."""
        pixels = self.preprocess(images_BCHW).to(self.device, self.dtype)
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[-2]


def read_clip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """HF-named CLIP vision weights from an official/open_clip .pth, or HF/ComfyUI safetensors/folder."""
    sd = read_component_weights(path, "CLIP")
    if "visual.patch_embedding.weight" in sd or "visual.conv1.weight" in sd:
        return official_to_hf(sd, str(path))
    return normalise_hf(sd, str(path))


def load_clip(path, dtype: torch.dtype = torch.float16, device="cpu", num_heads: int | None = None) -> ClipVision:
    """Load the CLIP vision tower (official Wan .pth, open_clip, HF/ComfyUI) with config from its shapes."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    path = component_location(Path(path), "image_encoder", (CLIP_FILE,))
    sd = read_clip_state_dict(path)
    config_file = path / "config.json" if path.is_dir() else None
    if num_heads is None and config_file is not None and config_file.exists():
        cfg = json.loads(config_file.read_text())
        num_heads = cfg.get("vision_config", cfg).get("num_attention_heads")
    config = CLIPVisionConfig(**clip_config_kwargs(sd, num_heads))
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    sd = {k: v.to(dtype) for k, v in sd.items()}
    if not any(k.startswith(_HF) for k in model.state_dict()):  # transformers 5: no `vision_model.` level
        sd = {k.removeprefix(_HF): v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not fit a CLIP vision model ({first})") from None
    _restore_buffers(model)
    model.to(device)
    return ClipVision(model, f"{file_identity(path)}:{str(dtype).removeprefix('torch.')}")


def _restore_buffers(model) -> None:
    """Re-create non-persistent buffers (position ids) that meta-device construction left empty."""
    emb = getattr(model, "vision_model", model).embeddings
    if getattr(emb, "position_ids", None) is not None and emb.position_ids.is_meta:
        emb.register_buffer("position_ids", torch.arange(emb.num_positions).unsqueeze(0), persistent=False)
