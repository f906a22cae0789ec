"""`wantune bench speed`: the full-size training-step speed benchmark (GPU). `bench learn` lives in toy/."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks: training-step speed (and learning, where present)")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    p = sub.add_parser("speed", help="time a full-size LoRA training step on the GPU (random weights)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", default="wan2.2-i2v-a14b")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", default="bf16",
                   help="bf16, fp8 (fp8 forward matmuls), fp8-all (fp8 input-gradient matmuls too), or several "
                        "comma separated (bf16,fp8,fp8-all: the same weights)")
    p.add_argument("--memory-cap-gib", type=float, default=None,
                   help="cap GPU memory for our runs (torch.cuda.set_per_process_memory_fraction)")
    p.add_argument("--block-swap", type=int, default=0, help="blocks whose frozen weights stream from CPU")
    p.add_argument("--offload", choices=("auto", "on", "off"), default="auto",
                   help="keep checkpointed block inputs in pinned CPU memory (auto: on under a memory cap)")
    p.add_argument("--save-attention", choices=("auto", "on", "off"), default="auto",
                   help="selective checkpointing: keep self-attention outputs (auto: off under a memory cap)")
    p.add_argument("--plain-blocks", default="0",
                   help="blocks that skip checkpointing (keep all activations; the last N); auto: as many as "
                        "the memory estimate fits in 90%% of the GPU")
    p.add_argument("--idle-expert", action="store_true",
                   help="keep a second expert's frozen weights resident during our runs (an A14B pair on one GPU)")
    p.add_argument("--no-compile", action="store_true", help="run the fused kernels eagerly")
    p.add_argument("--attention", default="auto",
                   choices=("auto", "cudnn", "flash", "efficient", "math", "default"))
    p.add_argument("--mode", choices=("fast", "plain"), default="fast")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--reference", action="store_true", help="also time diffusers WanTransformer3DModel + peft")
    p.add_argument("--check", action="store_true", help="compare loss and LoRA grads with the plain path")
    p.add_argument("--no-fused-lora", action="store_true", help="plain LoRA adapters (an extra add and scale pass)")
    p.add_argument("--profile", action="store_true",
                   help="profile one more step of each run: device time by kernel category, top kernels")
    p.add_argument("--layers", type=int, default=None, help="override the block count (smoke tests)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    p.set_defaults(func=_speed)
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
    try:
        from wantune.toy.bench_cli import register_learn
    except ModuleNotFoundError as exc:
        if exc.name not in ("wantune.toy.bench_cli", "wantune.toy"):
            raise
    else:
        register_learn(sub)


def _tri(value: str) -> bool | None:
    return {"auto": None, "on": True, "off": False}[value]


def _plain_blocks(value: str) -> int | None:
    if value == "auto":
        return None
    if not value.isdigit():
        from wantune.errors import UserError

        raise UserError(f"--plain-blocks {value}: give a block count (0, 1, ...) or auto")
    return int(value)


def _speed(args) -> int:
    from wantune.perf.bench import SpeedConfig, run_speed

    cfg = SpeedConfig(
        variant=args.variant, frames=args.frames, height=args.height, width=args.width, rank=args.rank,
        batch=args.batch, precision=tuple(p.strip() for p in args.precision.split(",") if p.strip()),
        memory_cap_gib=args.memory_cap_gib, block_swap=args.block_swap, offload=_tri(args.offload),
        save_attention=_tri(args.save_attention), compile=not args.no_compile, attention=args.attention,
        mode=args.mode, warmup=args.warmup, steps=args.steps, reference=args.reference, check=args.check,
        layers=args.layers, profile=args.profile, fused_lora=not args.no_fused_lora,
        plain_blocks=_plain_blocks(args.plain_blocks), idle_expert=args.idle_expert)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else print
    def save(result: dict) -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")

    result = run_speed(cfg, log=log, progress=save)
    save(result)
    text = json.dumps(result, indent=2)
    if args.json:
        print(text)
    return 0
