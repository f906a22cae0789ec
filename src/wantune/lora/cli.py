"""`wantune lora inspect | convert | merge`: look into, re-layout and bake LoRA files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wantune.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("lora", help="inspect, convert and merge LoRA files")
    sp = p.add_subparsers(dest="lora_command", metavar="ACTION", required=True)

    inspect = sp.add_parser("inspect", help="print a LoRA file's layout, ranks, targets and metadata as JSON")
    inspect.add_argument("file", help="LoRA .safetensors (comfyui, kohya/musubi or diffusers layout)")
    inspect.set_defaults(func=run_inspect)

    convert = sp.add_parser("convert", help="rewrite a LoRA in another layout (weights unchanged)")
    convert.add_argument("file", help="LoRA .safetensors in any supported layout")
    convert.add_argument("--to", required=True, choices=["comfyui", "kohya", "diffusers"], help="target layout")
    convert.add_argument("-o", "--out", required=True, help="output .safetensors")
    convert.set_defaults(func=run_convert)

    merge = sp.add_parser("merge", help="fold LoRAs into a base checkpoint and save it in the official layout")
    merge.add_argument("--model", required=True, help="base transformer: a file or folder (one A14B expert)")
    merge.add_argument("--lora", required=True, action="append", metavar="FILE[:STRENGTH]",
                       help="LoRA to fold in, strength 1.0 unless given (repeatable)")
    merge.add_argument("-o", "--out", required=True, help="output .safetensors (official names, input dtype)")
    merge.set_defaults(func=run_merge)


def parse_lora_arg(text: str) -> tuple[str, float]:
    """`FILE[:STRENGTH]` -> (file, strength)."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            if not any(c in tail for c in "/\\") and not Path(text).exists():  # not a drive or path colon
                raise UserError(f"LoRA '{text}': strength '{tail}' is not a number; write FILE:0.8") from None
    return text, 1.0


def _refuse_overwrite(out: str, *inputs: str) -> None:
    """One line instead of overwriting an input file with the output."""
    target = Path(out).resolve()
    for item in inputs:
        if Path(item).resolve() == target:
            raise UserError(f"-o {out}: is also an input file; write the output to another path")


def run_inspect(args: argparse.Namespace) -> int:
    from wantune.lora.io import load_lora

    print(json.dumps(describe(load_lora(args.file)), indent=2, ensure_ascii=False))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from wantune.lora.io import load_lora, write_lora

    _refuse_overwrite(args.out, args.file)
    weights = load_lora(args.file)
    out = write_lora(args.out, weights, args.to)
    print(f"wrote {out} ({args.to} layout, {len(weights.modules)} modules)")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from wantune.lora.io import load_lora
    from wantune.lora.merge import merge_into_state_dict, read_base_state_dict, write_checkpoint

    loras = [(load_lora(path), strength) for path, strength in map(parse_lora_arg, args.lora)]
    _refuse_overwrite(args.out, args.model, *(w.source for w, _ in loras))
    state_dict = read_base_state_dict(args.model)
    for weights, strength in loras:
        merge_into_state_dict(state_dict, weights, strength)
    metadata = {"format": "pt", "wantune.merged_loras": json.dumps([[w.source, s] for w, s in loras])}
    out = write_checkpoint(args.out, state_dict, metadata)
    print(f"wrote {out} ({len(loras)} LoRA(s) merged)")
    return 0


def describe(weights) -> dict:
    """The JSON `lora inspect` prints."""
    from wantune.models.variants import VARIANTS

    dim, ffn_dim = _base_dims(weights)
    has_img = any(p.endswith(("k_img", "v_img")) for p in weights.modules)
    candidates = [v.name for v in VARIANTS.values()
                  if v.dim == dim and (v.ffn_dim == ffn_dim or ffn_dim is None)
                  and (v.has_image_embedding or not has_img)]
    return {
        "file": weights.source,
        "format": weights.format,
        "ranks": weights.ranks,
        "modules": len(weights.modules),
        "blocks": len(weights.blocks),
        "block_indices": weights.blocks,
        "targets": weights.targets,
        "base_dim": dim,
        "base_ffn_dim": ffn_dim,
        "variant_candidates": candidates,
        "dtype": str(next(iter(weights.modules.values()))[0].dtype).removeprefix("torch."),
        "metadata": weights.metadata,
    }


def _base_dims(weights) -> tuple[int | None, int | None]:
    dim = ffn_dim = None
    for path, (a, b) in weights.modules.items():
        if path.endswith("ffn.0"):
            dim, ffn_dim = a.shape[1], b.shape[0]
        elif path.startswith("blocks."):
            dim = b.shape[0]
    return dim, ffn_dim

