"""`wantune generate`: text/image to video with a Wan checkpoint, LoRAs and the official defaults."""

from __future__ import annotations

import argparse

from wantune.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate a video (T2V, I2V, FLF2V, TI2V) with optional LoRAs",
        description="Generate videos with a Wan 2.1/2.2 checkpoint. Unset settings take the variant's "
                    "official defaults. See docs/generate.md.")
    m = p.add_argument_group("model")
    m.add_argument("--model", required=True, help="transformer file or folder (A14B: high-noise expert, or a "
                                                   "folder holding both experts)")
    m.add_argument("--model-low", help="A14B low-noise expert file or folder")
    m.add_argument("--vae", help="VAE file or folder")
    m.add_argument("--text-encoder", help="UMT5-XXL encoder weights")
    m.add_argument("--tokenizer", help="folder of the umt5-xxl tokenizer")
    m.add_argument("--clip", help="CLIP ViT-H/14 vision weights (Wan 2.1 I2V/FLF2V)")
    m.add_argument("--variant", help="model variant (inferred from the checkpoint when omitted)")
    m.add_argument("--variant-override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a variant field (custom or tiny test models), repeatable")
    m.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="LoRA for the model (A14B: the high-noise expert), repeatable")
    m.add_argument("--lora-low", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="LoRA for the A14B low-noise expert, repeatable")
    m.add_argument("--fp8", action="store_true", help="store the blocks' Linear weights in float8_e4m3fn")
    g = p.add_argument_group("generation (unset: the variant's official defaults)")
    g.add_argument("--prompt", help="text prompt")
    g.add_argument("--prompts", help="file with one prompt per line and musubi-style flags "
                                     "(--w --h --f --d --s --g --n --i)")
    g.add_argument("--negative-prompt", help="negative prompt (default: the official one for the variant)")
    g.add_argument("--image", help="first frame (I2V, FLF2V, TI2V)")
    g.add_argument("--last-image", help="last frame (FLF2V)")
    g.add_argument("--frames", type=int, help="number of frames, 4n+1")
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance", type=float, help="guidance scale (A14B: high-noise expert)")
    g.add_argument("--guidance-low", type=float, help="A14B low-noise expert guidance")
    g.add_argument("--shift", type=float, help="flow shift")
    g.add_argument("--sampler", default="unipc", choices=("unipc", "dpm++", "euler"))
    g.add_argument("--seed", type=int, help="noise seed (random when omitted; stored in the metadata)")
    g.add_argument("--out", required=True, help="output .mp4, or .png for one frame (numbered for --prompts)")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    r.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="transformer precision")
    r.add_argument("--offload", action="store_true",
                   help="A14B: keep only the active expert on the GPU, the other on the CPU")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_generate)


def parse_overrides(items: list[str]) -> dict:
    """`KEY=VALUE` strings -> typed variant field overrides (int, float, or string)."""
    import dataclasses

    from wantune.models.variants import WanVariant

    fields = [f.name for f in dataclasses.fields(WanVariant) if f.name != "name"]
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--variant-override {item!r}: expected KEY=VALUE, e.g. dim=64")
        if key not in fields:
            raise UserError(f"--variant-override {key}: not a variant field; known: {', '.join(fields)}")
        for kind in (int, float):
            try:
                out[key] = kind(raw)
                break
            except ValueError:
                continue
        else:
            out[key] = raw
    return out


def build_requests(args: argparse.Namespace) -> list:
    """The prompt requests: --prompt, or every line of --prompts, with command-line values as defaults."""
    from wantune.sample.prompts import PromptSpec, read_prompt_file

    if (args.prompt is None) == (args.prompts is None):
        raise UserError("give exactly one of --prompt TEXT or --prompts FILE")
    cli = dict(width=args.width, height=args.height, frames=args.frames, seed=args.seed, steps=args.steps,
               guidance=args.guidance, guidance_low=args.guidance_low, shift=args.shift,
               negative_prompt=args.negative_prompt, image=args.image, last_image=args.last_image)
    if args.prompt is not None:
        return [PromptSpec(prompt=args.prompt, **cli)]
    return [spec.with_defaults(**cli) for spec in read_prompt_file(args.prompts)]


def run_generate(args: argparse.Namespace) -> int:
    from wantune.lora.cli import parse_lora_arg
    from wantune.sample.pipeline import ModelSpec, RunSettings, generate

    spec = ModelSpec(
        model=args.model, model_low=args.model_low, vae=args.vae, text_encoder=args.text_encoder,
        tokenizer=args.tokenizer, clip=args.clip, variant=args.variant,
        variant_overrides=parse_overrides(args.variant_override),
        loras=[parse_lora_arg(x) for x in args.lora], loras_low=[parse_lora_arg(x) for x in args.lora_low],
        fp8=args.fp8)
    settings = RunSettings(sampler=args.sampler, device=args.device, dtype=args.dtype,
                           progress=not args.no_progress, offload=args.offload)
    generate(spec, build_requests(args), args.out, settings)
    return 0
