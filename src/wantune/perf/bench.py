"""`wantune bench speed`: time a full-size LoRA training step, ours against plain diffusers + peft.

One process: micro-benchmarks of the step's shapes (rates, best attention backend), then our step for each
requested precision (bf16 builds once and is quantised in place for fp8, so both train the same weights from
the same LoRA start), then optionally the reference step. Each step is forward + MSE loss against a random
target + backward + AdamW on the LoRA parameters, with gradient checkpointing; the losses stay on the GPU
until the timing is over (no host syncs inside the timed steps).

Legend: B batch, C channels, F/H/W latent frames/height/width, S text tokens, E CLIP width.
"""

from __future__ import annotations

import gc
import math
import statistics
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from wantune.errors import UserError
from wantune.models.variants import get_variant
from wantune.perf import numerics
from wantune.perf.build import build_wan
from wantune.perf.flops import latent_grid, roofline_seconds, step_flops
from wantune.perf.fp8 import set_fp8_backward
from wantune.perf.memory import GIB, estimate_memory, memory_message
from wantune.perf.micro import measure_rates
from wantune.perf.plain import plain_blocks_that_fit
from wantune.perf.setup import TrainSetup, prepare_fast, prepare_plain

PRECISIONS = ("bf16", "fp8", "fp8-all")
"""bf16; fp8 frozen weights with fp8 forward matmuls; the same with fp8 input-gradient matmuls too."""


@dataclass
class SpeedConfig:
    """What `wantune bench speed` runs."""

    variant: str = "wan2.2-i2v-a14b"
    frames: int = 81
    height: int = 480
    width: int = 832
    rank: int = 32
    batch: int = 1
    precision: tuple[str, ...] = ("bf16",)
    """One run per precision ("bf16", "fp8": fp8 forward matmuls, "fp8-all": fp8 input-gradient matmuls too)."""
    memory_cap_gib: float | None = None
    """torch.cuda.set_per_process_memory_fraction cap for our runs (the reference runs uncapped)."""
    block_swap: int = 0
    offload: bool | None = None
    """Keep block inputs in pinned CPU memory; None: on when a memory cap is set."""
    save_attention: bool | None = None
    """Selective checkpointing (keep self-attention outputs); None: on unless a memory cap is set."""
    compile: bool = True
    attention: str = "auto"
    """SDPA backend: auto (fastest measured), cudnn, flash, efficient, math, default (PyTorch's choice)."""
    mode: str = "fast"
    """fast (all of the above) or plain (per-block checkpointing, default SDPA, eager: the baseline)."""
    warmup: int = 2
    steps: int = 5
    reference: bool = False
    plain_blocks: int | None = 0
    """Blocks that skip checkpointing (keep all activations); None: as many as fit (`wantune.perf.plain`)."""
    idle_expert: bool = False
    """Keep a second expert's frozen weights resident on the GPU during our runs (an A14B pair, both in memory;
    fp8 unless the run is bf16)."""
    check: bool = False
    """Numerics: loss and LoRA grads of the fast path against the plain path on the same weights."""
    layers: int | None = None
    """Override the number of blocks (smoke tests)."""
    fused_lora: bool = True
    """LoRA fused into its base Linear (`wantune.perf.lora_fused`) in the fast mode."""
    profile: bool = False
    """Profile one more step of each of our runs: device time by kernel category (`wantune.perf.profile`)."""
    seed: int = 0

    def validate(self) -> None:
        bad = [p for p in self.precision if p not in PRECISIONS]
        if bad:
            raise UserError(f"--precision {bad[0]}: choose bf16, fp8 or fp8-all (comma separated for several)")
        if self.mode not in ("fast", "plain"):
            raise UserError(f"--mode {self.mode}: choose fast or plain")
        if self.steps < 1 or self.warmup < 0:
            raise UserError("--steps must be >= 1 and --warmup >= 0")


def run_speed(cfg: SpeedConfig, log=print, progress=None) -> dict:
    """Run the benchmark; returns the JSON-able result (`progress(result)` after each run: partial saves)."""
    cfg.validate()
    if not torch.cuda.is_available():
        raise UserError("wantune bench speed needs a CUDA GPU (none is visible to PyTorch)")
    device = torch.device("cuda", torch.cuda.current_device())
    overrides = {"num_layers": cfg.layers} if cfg.layers else {}
    variant = get_variant(cfg.variant, **overrides)
    grid = latent_grid(variant, cfg.frames, cfg.height, cfg.width)
    tokens = math.prod(grid)
    flops = step_flops(variant, cfg.frames, cfg.height, cfg.width, cfg.batch, cfg.rank)
    props = torch.cuda.get_device_properties(device)
    result = {"device": props.name, "device_memory_gib": round(props.total_memory / GIB, 1),
              "torch": torch.__version__, "config": asdict(cfg), "grid": grid, "tokens": tokens,
              "flops": flops.as_dict(), "runs": []}
    rates, details = measure_rates(variant, cfg.batch, tokens, cfg.rank, device,
                                   fp8=any(p != "bf16" for p in cfg.precision))
    result["micro"] = _jsonable(details)
    backend = details["best_attention"] if cfg.attention == "auto" else cfg.attention
    log(f"grid {grid} = {tokens} tokens; useful {flops.total / 1e15:.2f} PFLOP/step; attention backend {backend}")
    progress = progress or (lambda result: None)
    progress(result)
    baseline = _our_runs(cfg, variant, device, backend, rates, flops, result, log, progress)
    if cfg.reference:
        ref = _reference_run(cfg, variant, device, flops, rates, log)
        result["runs"].append(ref)
        result["speedup_vs_reference"] = {
            r["name"]: round(ref["s_per_step"] / r["s_per_step"], 3)
            for r in result["runs"] if r is not ref and r.get("s_per_step")}
    if baseline:
        result["loss_curve_vs_bf16"] = baseline
    return result


def _our_runs(cfg, variant, device, backend, rates, flops, result, log, progress) -> dict:
    """Our step for each precision; returns the fp8-vs-bf16 loss-curve comparison when both ran."""
    capped = cfg.memory_cap_gib is not None
    offload = capped if cfg.offload is None else cfg.offload
    save_attention = (not capped) if cfg.save_attention is None else cfg.save_attention
    if cfg.mode == "plain":
        save_attention, offload = False, False
    in_place = len(cfg.precision) > 1 and cfg.precision[0] == "bf16" and not cfg.block_swap
    setup, losses, idle = None, {}, None
    for precision in cfg.precision:
        shape = (variant, cfg.frames, cfg.height, cfg.width, cfg.batch, cfg.rank, precision, cfg.block_swap,
                 save_attention, offload)
        estimate = estimate_memory(*shape, idle_experts=int(cfg.idle_expert))
        if cfg.idle_expert:  # the other expert of the pair: its frozen weights, resident, never run
            idle = None
            _free()
            idle = build_wan(variant, device, cfg.rank, precision, seed=cfg.seed + 1)[0].requires_grad_(False)
        available = cfg.memory_cap_gib or torch.cuda.get_device_properties(device).total_memory / GIB
        plain_blocks = cfg.plain_blocks or 0
        if cfg.plain_blocks is None and cfg.mode == "fast" and not capped and not cfg.block_swap:
            plain_blocks = plain_blocks_that_fit(
                lambda n: estimate_memory(*shape, plain_blocks=n, idle_experts=int(cfg.idle_expert)).total_gib,
                available, variant.num_layers)
            log(f"plain blocks: {plain_blocks} (the most whose estimate fits 0.9 of {available:.1f} GiB)")
        if plain_blocks:
            estimate = estimate_memory(*shape, plain_blocks=plain_blocks, idle_experts=int(cfg.idle_expert))
        log(memory_message(estimate, available))
        _set_cap(cfg.memory_cap_gib, device)
        run = {}
        try:
            if setup is None or not in_place:
                setup = TrainSetup.build(variant, cfg, device, precision)
            else:
                setup.to_fp8()
            if precision != "bf16":
                set_fp8_backward(setup.model, precision == "fp8-all")
            run = {"name": f"wantune-{precision}-{cfg.mode}", "precision": precision,
                   "memory_estimate": estimate.as_dict(), "attention_backend": backend,
                   "settings": {"save_attention": save_attention, "offload": offload, "block_swap": cfg.block_swap,
                                "plain_blocks": plain_blocks, "idle_expert": cfg.idle_expert,
                                "compile": cfg.compile and cfg.mode == "fast", "mode": cfg.mode,
                                "fused_lora": cfg.fused_lora and cfg.mode == "fast"}}
            if cfg.check and not cfg.block_swap:
                setup.reset_lora()  # the same LoRA weights the plain reference was measured with
                run["numerics"] = numerics.compare(setup, backend, cfg.compile, save_attention, offload,
                                                   precision != "bf16", plain_blocks, cfg.fused_lora)
                log(f"numerics {precision}: {run['numerics']}")
            if cfg.mode == "fast":
                run["compile_error"] = prepare_fast(setup, backend, cfg.compile, save_attention, offload,
                                                    plain_blocks, cfg.fused_lora)
            else:
                prepare_plain(setup)
            setup.reset_lora()
            run.update(_time_steps(setup.step, cfg, device, tokens=cfg.batch * math.prod(
                latent_grid(variant, cfg.frames, cfg.height, cfg.width)), attention=backend))
            run.update(_price(flops, rates, run["s_per_step"], precision))
            losses[precision] = run["losses"]
            if cfg.profile:
                run["profile"] = _profile(setup.step, device, backend)
                log(f"profile {precision}: " + ", ".join(
                    f"{k} {v['seconds']:.3f}s" for k, v in run["profile"]["categories"].items()))
        except torch.OutOfMemoryError as exc:
            run = {"name": f"wantune-{precision}-{cfg.mode}", "precision": precision, "error": "out of memory",
                   "detail": str(exc).splitlines()[0][:200], "memory_estimate": estimate.as_dict(),
                   **{k: run[k] for k in ("settings",) if k in run}}
            setup = None
        result["runs"].append(run)
        progress(result)
        log(_summary(run))
        if not in_place:
            setup = None
            _free()
    setup = idle = None
    _free()
    _set_cap(None, device)
    curves = {}
    for name in (p for p in losses if p != "bf16" and "bf16" in losses):
        rel = [abs(a - b) / abs(a) for a, b in zip(losses["bf16"], losses[name])]
        curves[name] = {"max_relative_diff": max(rel), "steps": len(rel)}
    # one fp8 mode: its comparison at the top level, as before
    return next(iter(curves.values())) if len(curves) == 1 else curves


def _reference_run(cfg, variant, device, flops, rates, log) -> dict:
    from wantune.perf.reference import ReferenceSetup

    setup = ReferenceSetup.build(variant, cfg, device)
    run = {"name": "reference-diffusers-peft", "precision": "bf16"}
    run.update(_time_steps(setup.step, cfg, device, tokens=cfg.batch * math.prod(
        latent_grid(variant, cfg.frames, cfg.height, cfg.width)), attention="default"))
    run.update(_price(flops, rates, run["s_per_step"], "bf16"))
    log(_summary(run))
    del setup
    _free()
    return run


def _time_steps(step, cfg: SpeedConfig, device, tokens: int, attention: str) -> dict:
    """Warm-up, then `steps` CUDA-event-timed steps; median seconds, tokens/s, peak memory, losses."""
    from wantune.perf.micro import backend_context

    context = backend_context(attention)
    losses = []
    with context:
        for _ in range(cfg.warmup):
            losses.append(step())
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        events = []
        for _ in range(cfg.steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            losses.append(step())
            end.record()
            events.append((start, end))
        torch.cuda.synchronize(device)
    times = [s.elapsed_time(e) / 1e3 for s, e in events]
    median = statistics.median(times)
    return {"s_per_step": median, "step_times": times, "tokens_per_s": tokens / median,
            "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
            "losses": [float(x) for x in losses]}


def _profile(step, device, attention: str) -> dict:
    from wantune.perf.micro import backend_context
    from wantune.perf.profile import profile_step

    with backend_context(attention):
        return profile_step(step, device)


def _price(flops, rates, seconds: float, precision: str) -> dict:
    """Roofline priced at the rates of the precision's matmuls: bf16 everywhere, fp8 forward, or fp8 both ways."""
    from dataclasses import replace
    priced = {"bf16": replace(rates, matmul_fwd=rates.matmul_bwd), "fp8": rates,
              "fp8-all": replace(rates, matmul_bwd=rates.matmul_fwd)}[precision]
    roofline = roofline_seconds(flops, priced)
    return {"achieved_tflops": flops.total / seconds / 1e12, "roofline_s": roofline,
            "efficiency": roofline / seconds}


def _summary(run: dict) -> str:
    if "error" in run:
        return f"{run['name']}: {run['error']} ({run.get('detail', '')})"
    return (f"{run['name']}: {run['s_per_step']:.3f} s/step, {run['tokens_per_s']:.0f} tok/s, "
            f"peak {run['peak_allocated_gib']:.1f} GiB, {run['achieved_tflops']:.0f} TFLOP/s, "
            f"roofline {run['roofline_s']:.2f} s, efficiency {run['efficiency']:.2f}")


def _set_cap(cap_gib: float | None, device) -> None:
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = 1.0 if cap_gib is None else min(1.0, cap_gib * GIB / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, float):
        return round(obj, 4) if abs(obj) < 1e6 else float(f"{obj:.5g}")
    return obj


def reference_loss(out, target) -> torch.Tensor:
    return F.mse_loss(out.float(), target)
