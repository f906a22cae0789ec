"""UMT5-XXL encoder checkpoint layouts: official Wan T5 names <-> Hugging Face `UMT5EncoderModel` names.

Official (`models_t5_umt5-xxl-enc-bf16.pth`, Wan's `wan/modules/t5.py`): `token_embedding`, `blocks.N.
{norm1, attn.{q,k,v,o}, norm2, ffn.{gate.0, fc1, fc2}, pos_embedding.embedding}`, `norm`. The gated FFN is
`fc2(fc1(x) * gelu_tanh(gate(x)))`, i.e. HF's `wo(wi_1(x) * gelu_new(wi_0(x)))`. Every block has its own
relative position bias (`shared_pos=False`), like HF UMT5.
HF / ComfyUI (`umt5_xxl_fp16.safetensors`): `shared`, `encoder.embed_tokens` (may be absent),
`encoder.block.N.layer.{0,1}...`, `encoder.final_layer_norm`.
"""

from __future__ import annotations

import re

import torch

from wantune.errors import UserError
from wantune.models import fp8

_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_BLOCK_BACK = {v: k for k, v in _BLOCK.items()}


def is_official_t5(keys) -> bool:
    """True for Wan's own T5 names (`token_embedding`, `blocks.N.attn.q`)."""
    return "token_embedding.weight" in keys


def official_to_hf(sd: dict, source: str = "text encoder") -> dict:
    """Rename an official Wan UMT5 encoder state dict to HF `UMT5EncoderModel` names."""
    if "pos_embedding.embedding.weight" in sd:
        raise UserError(f"{source}: a T5 with one shared position bias (shared_pos=True), "
                        f"not the UMT5 encoder Wan uses")
    out = {}
    for key, value in sd.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = value
            out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif (m := re.fullmatch(r"blocks\.(\d+)\.(.+)", key)) and m.group(2) in _BLOCK:
            out[f"encoder.block.{m.group(1)}.{_BLOCK[m.group(2)]}"] = value
        else:
            raise UserError(f"{source}: unexpected key {key!r} for the official Wan UMT5 encoder layout")
    return out


def hf_to_official(sd: dict) -> dict:
    """Rename an HF `UMT5EncoderModel` state dict to the official Wan T5 encoder names."""
    out = {}
    for key, value in sd.items():
        if key == "shared.weight":
            out["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        elif (m := re.fullmatch(r"encoder\.block\.(\d+)\.(.+)", key)) and m.group(2) in _BLOCK_BACK:
            out[f"blocks.{m.group(1)}.{_BLOCK_BACK[m.group(2)]}"] = value
        elif key != "encoder.embed_tokens.weight":
            raise UserError(f"{key}: not a UMT5 encoder key")
    return out


def normalise_hf(sd: dict, source: str = "text encoder") -> dict:
    """HF/ComfyUI UMT5 keys with any prefix dropped, fp8 'scaled' weights dequantised, embeddings tied."""
    root = "encoder.final_layer_norm.weight"
    prefix = next((k[: -len(root)] for k in sd if k.endswith(root)), None)
    if prefix is None or (prefix and not prefix.endswith(".")):
        raise UserError(f"{source}: not a UMT5 encoder (no encoder.final_layer_norm.weight); pass "
                        f"models_t5_umt5-xxl-enc-bf16.pth, umt5_xxl_fp16.safetensors or an HF UMT5 file")
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    sd = dequantize_fp8(sd)
    # keep the encoder: drops a decoder, lm_head and ComfyUI's embedded tokenizer (`spiece_model`)
    sd = {k: v for k, v in sd.items() if k.startswith(("shared.", "encoder."))}
    embed = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    if embed is None:
        raise UserError(f"{source}: has no token embedding (shared.weight or encoder.embed_tokens.weight)")
    sd["shared.weight"] = sd["encoder.embed_tokens.weight"] = embed
    return sd


def dequantize_fp8(sd: dict) -> dict:
    """fp8 weights (plain or ComfyUI "scaled") -> float32; scale and marker keys dropped."""
    out = {}
    for key, value in sd.items():
        if fp8.is_auxiliary(key):
            continue
        if fp8.is_fp8(value):
            scale = fp8.scale_key(key, sd)
            value = fp8.dequantize(value, sd[scale] if scale else torch.ones(()), torch.float32)
        out[key] = value
    return out


def umt5_config_kwargs(sd: dict) -> dict:
    """`UMT5Config` arguments read from an HF-named UMT5 encoder state dict's shapes."""
    vocab, d_model = sd["shared.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
    att = "encoder.block.0.layer.0.SelfAttention."
    inner = sd[att + "q.weight"].shape[0]
    buckets, heads = sd[att + "relative_attention_bias.weight"].shape
    return {
        "vocab_size": vocab, "d_model": d_model, "d_kv": inner // heads, "num_heads": heads,
        "d_ff": sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0], "num_layers": layers,
        "relative_attention_num_buckets": buckets, "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
        "is_encoder_decoder": False, "use_cache": False,
    }
