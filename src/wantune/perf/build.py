"""Full-size models with random weights built straight on the GPU, for the speed benchmark.

`build_wan` builds a `WanModel` on the meta device, adds the LoRA, then materialises one module at a time on
the device in bf16 with random weights (to_empty + init), quantises the block Linears to fp8 if asked, and
hands the first `block_swap` blocks to a `BlockSwapper` as soon as each is built, so a 14B expert never needs
its full bf16 size on the GPU. `build_reference` builds the same architecture as a diffusers
`WanTransformer3DModel` with a peft LoRA on the same layers (the plain reference step).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wantune.lora import apply_lora
from wantune.models.transformer import WanModel
from wantune.models.variants import WanVariant
from wantune.perf.blockswap import BlockSwapper
from wantune.perf.fp8 import quantize_linears_fp8

LORA_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
"""LoRA on attention and FFN (the issue's setting); k_img/v_img are added where the variant has them."""
DIFFUSERS_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj", "ffn.net.0.proj",
                     "ffn.net.2"]


@torch.no_grad()
def init_random_(module: nn.Module) -> None:
    """Random weights at a trained model's scale: default Linear/Conv/LayerNorm init, norms 1, modulation
    N(0, 1/D), LoRA A kaiming and B small (non-zero, so every LoRA weight gets a gradient)."""
    adapters = [m for m in module.modules() if type(m).__name__ == "LoRAAdapter"]
    lora_layers = {id(layer) for a in adapters for layer in (a.lora_A, a.lora_B)}
    for adapter in adapters:
        nn.init.kaiming_uniform_(adapter.lora_A.weight, a=math.sqrt(5))
        nn.init.normal_(adapter.lora_B.weight, std=0.01)
    for sub in module.modules():
        if id(sub) in lora_layers or type(sub).__name__ == "LoRAAdapter":
            continue
        if isinstance(sub, (nn.Linear, nn.Conv3d, nn.LayerNorm)):
            sub.reset_parameters()
            continue
        for name, param in sub.named_parameters(recurse=False):
            if "modulation" in name:
                param.normal_(std=param.shape[-1] ** -0.5)
            elif name == "weight":
                param.fill_(1.0)
            else:
                param.zero_()


def _materialise(module: nn.Module, device: torch.device, precision: str) -> None:
    module.to_empty(device=device, recurse=True)
    init_random_(module)
    if precision != "bf16" and hasattr(module, "self_attn"):
        quantize_linears_fp8(module)


def build_wan(variant: WanVariant, device: torch.device, rank: int = 32, precision: str = "bf16",
              block_swap: int = 0, lora_dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """(model, LoRANetwork, BlockSwapper | None): random-weight WanModel in bf16 (+ fp8 block Linears)."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = WanModel(variant).to(torch.bfloat16)
    targets = LORA_TARGETS + (("cross_attn.k_img", "cross_attn.v_img") if variant.has_image_embedding else ())
    network = apply_lora(model, rank, alpha=rank, targets=targets, dtype=lora_dtype)
    for name, child in model.named_children():
        if name != "blocks":
            _materialise(child, device, precision)
    swapper = None
    if block_swap:
        swapper = BlockSwapper(model, block_swap, device,
                               prepare=lambda block: _materialise(block, device, precision))
    for block in model.blocks[block_swap:]:
        _materialise(block, device, precision)
    return model, network, swapper


def build_reference(variant: WanVariant, device: torch.device, rank: int = 32, seed: int = 0):
    """(diffusers WanTransformer3DModel in bf16 with a peft LoRA on attention + FFN, its trainable params)."""
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    torch.manual_seed(seed)
    image = variant.has_image_embedding
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = WanTransformer3DModel(
                patch_size=variant.patch_size, num_attention_heads=variant.num_heads,
                attention_head_dim=variant.head_dim, in_channels=variant.in_dim, out_channels=variant.out_dim,
                text_dim=variant.text_dim, freq_dim=variant.freq_dim, ffn_dim=variant.ffn_dim,
                num_layers=variant.num_layers, cross_attn_norm=variant.cross_attn_norm, eps=variant.eps,
                image_dim=1280 if image else None, added_kv_proj_dim=variant.dim if image else None,
                pos_embed_seq_len=514 if variant.has_image_pos_embedding else None)
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    targets = [t for t in DIFFUSERS_TARGETS if image or not t.startswith("add_")]
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=True))
    model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01)
    return model, params
