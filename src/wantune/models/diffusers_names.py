"""Official Wan <-> diffusers `WanTransformer3DModel` names, for state dicts and for module paths (LoRA).

The table follows diffusers' converter (scripts/convert_wan_to_diffusers.py): diffusers calls the official
`norm3` (affine LayerNorm before cross-attention) `norm2`, the modulations `scale_shift_table`, and moves the
embeddings under `condition_embedder`. Shapes are identical on both sides; only names change.
"""

from __future__ import annotations

import re

from wantune.errors import UserError

_TOP_LEVEL = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
}
"""Official name -> diffusers name outside the blocks."""

_IN_BLOCK = {
    **{f"self_attn.{a}": f"attn1.{b}" for a, b in
       [("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"), ("norm_q", "norm_q"), ("norm_k", "norm_k")]},
    **{f"cross_attn.{a}": f"attn2.{b}" for a, b in
       [("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"), ("norm_q", "norm_q"), ("norm_k", "norm_k"),
        ("k_img", "add_k_proj"), ("v_img", "add_v_proj"), ("norm_k_img", "norm_added_k")]},
    "self_attn": "attn1",
    "cross_attn": "attn2",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "ffn": "ffn",
    "modulation": "scale_shift_table",
}
"""Official name -> diffusers name inside `blocks.N.`."""

_BLOCK = re.compile(r"^blocks\.(\d+)(?:\.(.*))?$")
_PARAM_SUFFIXES = ("weight", "bias")


def _rename(name: str, top: dict[str, str], block: dict[str, str], side: str) -> str:
    match = _BLOCK.match(name)
    table, prefix, rest = (block, f"blocks.{match[1]}.", match[2]) if match else (top, "", name)
    if rest is None:
        return name  # "blocks.N" itself
    # longest table entry that is `rest` or a dotted prefix of it (a module path or a parameter key)
    for key in sorted(table, key=len, reverse=True):
        if rest == key or (rest.startswith(key + ".") and rest[len(key) + 1:] in _PARAM_SUFFIXES):
            return prefix + table[key] + rest[len(key):]
    raise UserError(f"{name}: not a known {side} Wan transformer name; is this a Wan transformer checkpoint?")


_TOP_REVERSED = {b: a for a, b in _TOP_LEVEL.items()}
_IN_BLOCK_REVERSED = {b: a for a, b in _IN_BLOCK.items()}


def official_module_to_diffusers(name: str) -> str:
    """Official module path or parameter key -> diffusers (`blocks.0.self_attn.q` -> `blocks.0.attn1.to_q`)."""
    return _rename(name, _TOP_LEVEL, _IN_BLOCK, "official")


def diffusers_module_to_official(name: str) -> str:
    """diffusers module path or parameter key -> official (`blocks.0.attn2.to_out.0` -> `blocks.0.cross_attn.o`)."""
    return _rename(name, _TOP_REVERSED, _IN_BLOCK_REVERSED, "diffusers")


def official_to_diffusers(state_dict: dict) -> dict:
    """Rename an official transformer state dict to diffusers names (tensors untouched)."""
    return {official_module_to_diffusers(key): value for key, value in state_dict.items()}


def diffusers_to_official(state_dict: dict) -> dict:
    """Rename a diffusers `WanTransformer3DModel` state dict to official names (tensors untouched)."""
    return {diffusers_module_to_official(key): value for key, value in state_dict.items()}
