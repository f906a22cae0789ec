"""Wan VAE checkpoint layouts: official (`Wan2.1_VAE.pth`, `Wan2.2_VAE.pth`, ComfyUI) <-> diffusers names.

The official Wan 2.1 VAE keeps flat `encoder.downsamples.N` / `decoder.upsamples.N` lists; the Wan 2.2 VAE
nests them (`encoder.downsamples.I.downsamples.J`, `decoder.upsamples.I.upsamples.J`). diffusers'
`AutoencoderKLWan` groups them into `down_blocks` / `up_blocks` with `resnets` and a resampler. The mapping
is derived from the keys present (which entries hold a `resample`), so any size works, tiny or full.
Also here: reading the config of an `AutoencoderKLWan` from a diffusers-named state dict's shapes.
"""

from __future__ import annotations

import re

from wantune.errors import UserError

# Per-module renames inside a residual block / the model's top level (official -> diffusers).
_RESIDUAL = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2",
             "shortcut": "conv_shortcut"}
_TOP = {"encoder.conv1.": "encoder.conv_in.", "decoder.conv1.": "decoder.conv_in.",
        "encoder.head.0.": "encoder.norm_out.", "encoder.head.2.": "encoder.conv_out.",
        "decoder.head.0.": "decoder.norm_out.", "decoder.head.2.": "decoder.conv_out.",
        "conv1.": "quant_conv.", "conv2.": "post_quant_conv."}
_MIDDLE = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}


def is_official_vae(keys) -> bool:
    """True when the keys use the official Wan VAE names (`encoder.conv1`, `encoder.downsamples`)."""
    return "encoder.conv1.weight" in keys


def is_diffusers_vae(keys) -> bool:
    """True when the keys use diffusers' `AutoencoderKLWan` names."""
    return "encoder.conv_in.weight" in keys


def is_nested_vae(keys) -> bool:
    """True for the Wan 2.2 VAE's nested official layout (`encoder.downsamples.I.downsamples.J`)."""
    return any(k.startswith("encoder.downsamples.0.downsamples.") for k in keys)


def _indices(keys, pattern: str) -> dict[tuple[int, ...], bool]:
    """Module indices matched by `pattern` (regex with int groups) -> whether that module is a resampler."""
    found: dict[tuple[int, ...], bool] = {}
    for key in keys:
        m = re.match(pattern, key)
        if m:
            idx = tuple(int(g) for g in m.groups())
            found[idx] = found.get(idx, False) or m.string[m.end():].startswith("resample")
    return found


def _block_map(keys) -> dict[str, str]:
    """Official module prefix -> diffusers module prefix for the encoder's and decoder's block lists."""
    out: dict[str, str] = {}
    if is_nested_vae(keys):
        for (i, j), res in _indices(keys, r"encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.").items():
            out[f"encoder.downsamples.{i}.downsamples.{j}."] = (
                f"encoder.down_blocks.{i}.downsampler." if res else f"encoder.down_blocks.{i}.resnets.{j}.")
        for (i, j), res in _indices(keys, r"decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.").items():
            out[f"decoder.upsamples.{i}.upsamples.{j}."] = (
                f"decoder.up_blocks.{i}.upsampler." if res else f"decoder.up_blocks.{i}.resnets.{j}.")
        return out
    for (n,), _ in _indices(keys, r"encoder\.downsamples\.(\d+)\.").items():
        out[f"encoder.downsamples.{n}."] = f"encoder.down_blocks.{n}."
    level, j = 0, 0
    for (n,), res in sorted(_indices(keys, r"decoder\.upsamples\.(\d+)\.").items()):
        if res:
            out[f"decoder.upsamples.{n}."] = f"decoder.up_blocks.{level}.upsamplers.0."
            level, j = level + 1, 0
        else:
            out[f"decoder.upsamples.{n}."] = f"decoder.up_blocks.{level}.resnets.{j}."
            j += 1
    return out


def _rename(key: str, blocks: dict[str, str]) -> str:
    """Diffusers name of one official VAE key (given the block prefix map)."""
    for part in ("encoder", "decoder"):
        m = re.match(rf"{part}\.middle\.(\d)\.(.*)", key)
        if m:
            key = f"{part}.mid_block.{_MIDDLE[m.group(1)]}.{m.group(2)}"
    for old, new in _TOP.items():
        if key.startswith(old):
            return new + key[len(old):]
    prefix = re.match(r"(?:encoder\.downsamples\.\d+\.(?:downsamples\.\d+\.)?"
                      r"|decoder\.upsamples\.\d+\.(?:upsamples\.\d+\.)?)", key)
    if prefix and prefix.group(0) in blocks:
        key = blocks[prefix.group(0)] + key[prefix.end():]
    for old, new in _RESIDUAL.items():
        key = re.sub(rf"(resnets\.\d+\.|down_blocks\.\d+\.){re.escape(old)}\.", rf"\g<1>{new}.", key)
    return key


def official_vae_names(keys) -> dict[str, str]:
    """Official VAE key -> diffusers `AutoencoderKLWan` key, for every key given."""
    keys = list(keys)
    blocks = _block_map(keys)
    return {k: _rename(k, blocks) for k in keys}


def official_to_diffusers(sd: dict) -> dict:
    """Rename an official Wan 2.1 / 2.2 VAE state dict to diffusers' `AutoencoderKLWan` names."""
    names = official_vae_names(sd)
    return {names[k]: v for k, v in sd.items()}


def diffusers_to_official(sd: dict) -> dict:
    """Rename a diffusers `AutoencoderKLWan` state dict to the official names (Wan 2.2 when `is_residual`)."""
    cfg = diffusers_vae_config(sd)
    n_res, nested = cfg["num_res_blocks"], cfg["is_residual"]
    out = {_guess_official(k, n_res, nested): v for k, v in sd.items()}
    forward = official_vae_names(out)
    bad = [k for k, v in forward.items() if v not in sd]
    if bad:
        raise UserError(f"{bad[0]}: not a Wan VAE key this converter knows; expected diffusers AutoencoderKLWan names")
    return out


def _guess_official(key: str, n_res: int, nested: bool) -> str:
    """Invert `_rename` for one diffusers key (used only by diffusers_to_official)."""
    for new, old in ((v, k) for k, v in _TOP.items()):
        if key.startswith(new):
            return old + key[len(new):]
    for new, old in ((v, k) for k, v in _RESIDUAL.items()):
        key = key.replace(f".{new}.", f".{old}.")
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.*)", key)
    if m:
        idx = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{m.group(2)}.{m.group(3)}"]
        return f"{m.group(1)}.middle.{idx}.{m.group(4)}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(?:(resnets)\.(\d+)|downsampler)\.(.*)", key)
    if m and nested:
        j = int(m.group(3)) if m.group(2) else n_res
        return f"encoder.downsamples.{m.group(1)}.downsamples.{j}.{m.group(4)}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(.*)", key)
    if m:
        return f"encoder.downsamples.{m.group(1)}.{m.group(2)}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(?:resnets\.(\d+)|upsamplers?(?:\.0)?)\.(.*)", key)
    if m:
        i, j = int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else n_res + 1)
        if nested:
            return f"decoder.upsamples.{i}.upsamples.{j}.{m.group(3)}"
        return f"decoder.upsamples.{i * (n_res + 2) + j}.{m.group(3)}"
    return key


def diffusers_vae_config(sd: dict) -> dict:
    """`AutoencoderKLWan` constructor arguments read from a diffusers-named state dict's shapes."""
    try:
        conv_in = sd["encoder.conv_in.weight"].shape
        z_dim = sd["post_quant_conv.weight"].shape[0]
        dec_out = sd["decoder.conv_out.weight"].shape
    except KeyError as e:
        raise UserError(f"{e.args[0]}: missing from the VAE weights; not a complete Wan VAE") from None
    nested = any(k.startswith("encoder.down_blocks.0.resnets.") for k in sd)
    base_dim = conv_in[0]
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.up_blocks."))
    n_res = _count(sd, r"decoder\.up_blocks\.0\.resnets\.(\d+)\.") - 1
    dim_mult = [_level_dim(sd, i, nested, n_res) // base_dim for i in range(levels)]
    temporal = [_halves_time(sd, i, nested, n_res) for i in range(levels - 1)]
    patch = 2 if conv_in[1] == 12 else None
    return {
        "base_dim": base_dim, "decoder_base_dim": dec_out[1] // dim_mult[0], "z_dim": z_dim,
        "dim_mult": dim_mult, "num_res_blocks": n_res, "attn_scales": [], "temperal_downsample": temporal,
        "dropout": 0.0, "is_residual": nested, "in_channels": conv_in[1], "out_channels": dec_out[0],
        "patch_size": patch, "scale_factor_temporal": 4, "scale_factor_spatial": 16 if patch else 8,
    }


def _count(sd: dict, pattern: str) -> int:
    """Number of distinct indices matched by pattern's group."""
    return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


def _level_dim(sd: dict, level: int, nested: bool, n_res: int) -> int:
    """Output channels of encoder level `level`'s residual blocks."""
    if nested:
        return sd[f"encoder.down_blocks.{level}.resnets.0.conv2.weight"].shape[0]
    return sd[f"encoder.down_blocks.{level * (n_res + 1)}.conv2.weight"].shape[0]


def _halves_time(sd: dict, level: int, nested: bool, n_res: int) -> bool:
    """Whether encoder level `level`'s downsampler also halves time (has a `time_conv`)."""
    if nested:
        return f"encoder.down_blocks.{level}.downsampler.time_conv.weight" in sd
    return f"encoder.down_blocks.{level * (n_res + 1) + n_res}.time_conv.weight" in sd
