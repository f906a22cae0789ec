"""Checkpoints for exact resume, written atomically; final LoRA / model files.

A checkpoint is a folder `checkpoints/step_NNNNNN/` holding, per unit, the trainable weights, the EMA and
(LoRA runs) a ComfyUI-layout LoRA file, plus `state.pt` (optimisers, schedulers, loss scaler, RNG states of
torch / numpy / python and the σ/noise generator, data position, step). It is written into a `.tmp` folder,
every file fsynced, then renamed into place: a kill at any moment leaves the previous checkpoint intact, and
a half-written `.tmp` folder is never read. The last `keep_last` checkpoints are kept.

Several ranks (torchrun): LoRA (DDP) units are identical on every rank, so rank 0 writes them; FSDP units
are written by every rank in parallel (`dcp/`, `wantune.dist.checkpoint`). `state.pt` holds every rank's
RNG states, so a run resumed on the same number of ranks continues exactly. Resuming needs the checkpoint
visible to every rank (a shared filesystem across machines).

`WANTUNE_TEST_SAVE_SLEEP="STEP:SECONDS"` (tests only) sleeps inside the save of STEP, before the rename, so
a test can kill the process mid-save at a known moment.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from wantune.dist import env as dist
from wantune.dist.checkpoint import full_state_dict, load_sharded, save_sharded
from wantune.dist.parallel import is_sharded
from wantune.errors import UserError
from wantune.train.loop import StepContext, TrainUnit

STATE_FILE = "state.pt"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (folders with `.tmp` in the name are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and ".tmp" not in p.name
            and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """`--resume latest` -> the newest complete checkpoint of the run; a path -> that checkpoint."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise UserError(f"--resume latest: no checkpoint in {run_dir / 'checkpoints'}; start without --resume")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"--resume {path}: not a checkpoint folder (no {STATE_FILE}); pass latest or a step_N folder")
    return path


def save_checkpoint(run_dir: Path, step: int, units: list[TrainUnit], ctx: StepContext, data_state: dict,
                    extra: dict, lora_metadata: dict, keep_last: int) -> Path:
    """Write a complete, atomic checkpoint for `step`; prune old ones; returns its folder."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + f".tmp{dist.broadcast_object(os.getpid())}")
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    sharded = [u for u in units if is_sharded(u.model)]
    if sharded:
        save_sharded(tmp, sharded)
    rng = dist.gather_objects(rng_state(ctx))
    if dist.is_main():
        _write_checkpoint(tmp, step, [u for u in units if u not in sharded], lora_metadata)
        torch.save({"step": step, "units": {u.name: unit_state(u) for u in units}, "rng": rng[0], "rng_ranks": rng,
                    "scaler": ctx.scaler.state_dict() if ctx.scaler else None, "recent": list(ctx.recent),
                    "data": data_state, "extra": extra}, tmp / STATE_FILE)
        _test_pause(step)
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _write_checkpoint(tmp: Path, step: int, units: list[TrainUnit], lora_metadata: dict) -> None:
    """Rank 0: the whole (unsharded) units' weights, EMA and LoRA files."""
    from safetensors.torch import save_file

    for unit in units:
        save_file(unit.trainable_state(), str(tmp / f"{unit.name}.trainable.safetensors"))
        if unit.ema is not None:
            save_file(unit.ema.state_dict(), str(tmp / f"{unit.name}.ema.safetensors"))
        if unit.network is not None:
            from wantune.lora import save_lora

            save_lora(tmp / f"{unit.name}.lora.safetensors", unit.network, {**lora_metadata, "step": step},
                      expert=unit.name if unit.name in ("high", "low") else "none")


def load_checkpoint(path: Path, units: list[TrainUnit], ctx: StepContext) -> dict:
    """Restore every unit and the RNG states from a checkpoint; returns the saved state (step, data, extra)."""
    from safetensors.torch import load_file

    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    missing = [u.name for u in units if u.name not in state["units"]]
    if missing:
        raise UserError(f"--resume {path}: has no state for {missing[0]}; resume with the same experts.train")
    sharded = [u for u in units if is_sharded(u.model)]
    if sharded:
        load_sharded(path, sharded)
    for unit in units:
        saved = state["units"][unit.name]
        unit.scheduler.load_state_dict(saved["scheduler"])
        if unit in sharded:
            continue
        unit.load_trainable_state(load_file(str(path / f"{unit.name}.trainable.safetensors")))
        if unit.ema is not None and (path / f"{unit.name}.ema.safetensors").is_file():
            unit.ema.load_state_dict(load_file(str(path / f"{unit.name}.ema.safetensors")))
        unit.optimizer.load_state_dict(saved["optimizer"])
    if ctx.scaler and state["scaler"]:
        ctx.scaler.load_state_dict(state["scaler"])
    ctx.recent.clear()
    ctx.recent.extend(state["recent"])
    ranks = state.get("rng_ranks") or [state["rng"]]
    if len(ranks) != dist.world() and dist.is_main():
        print(f"--resume {path}: saved by {len(ranks)} rank(s), resumed on {dist.world()}: the weights and "
              "optimiser state carry over, but the data order and noise differ from an uninterrupted run")
    set_rng_state(ranks[dist.rank()] if len(ranks) == dist.world() else state["rng"], ctx)
    return state


def unit_state(unit: TrainUnit) -> dict:
    """Optimiser and schedule state for state.pt (a sharded unit's optimiser state is in dcp/)."""
    if is_sharded(unit.model):
        return {"scheduler": unit.scheduler.state_dict()}
    return {"optimizer": unit.optimizer.state_dict(), "scheduler": unit.scheduler.state_dict()}


def rng_state(ctx: StepContext) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "generator": ctx.generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, ctx: StepContext) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    ctx.generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _test_pause(step: int) -> None:
    spec = os.environ.get("WANTUNE_TEST_SAVE_SLEEP", "")
    if spec:
        at, _, seconds = spec.partition(":")
        if int(at) == step:
            time.sleep(float(seconds))


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir():
            _fsync_tree(path)
            continue
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def final_name(cfg, unit_name: str, variant) -> str:
    """`wan2.2_<type>_<name>_v<N>[_high|_low].safetensors` (the guides' naming convention)."""
    family = variant.family.replace("wan", "wan")
    suffix = f"_{unit_name}" if unit_name in ("high", "low") else ""
    return f"{family}_{variant.model_type}_{cfg.saving.name}_v{cfg.saving.version}{suffix}.safetensors"


def save_final(run_dir: Path, cfg, units: list[TrainUnit], variant, metadata: dict) -> list[Path]:
    """The run's deliverables: one LoRA (or full transformer) file per unit, plus EMA versions.

    Rank 0 writes them (sharded weights are first gathered to it); every rank returns the paths.
    """
    from safetensors.torch import save_file

    written = []
    for unit in units:
        path = run_dir / final_name(cfg, unit.name, variant)
        expert = unit.name if unit.name in ("high", "low") else "none"
        if unit.network is not None:
            from wantune.lora import save_lora

            if dist.is_main():
                save_lora(path, unit.network, metadata, expert=expert)
                if unit.ema is not None:
                    _save_ema_lora(path, unit, metadata, expert)
            written += [path] + ([_ema_path(path)] if unit.ema is not None else [])
        else:
            weights = full_state_dict(unit.model) if is_sharded(unit.model) else unit.model.state_dict()
            files = {path: weights}
            if unit.ema is not None:  # full fine-tuning: the averaged weights as a second model file
                shadow = {n: _gathered(t) for n, t in unit.ema.shadow.items()}  # collective when sharded
                files[_ema_path(path)] = {n: shadow.get(n, w).to(w.dtype) for n, w in weights.items()}
            for target, tensors in files.items():
                if dist.is_main():
                    tmp = target.with_name("." + target.name + ".tmp")
                    save_file({n: p.detach().cpu().contiguous() for n, p in tensors.items()}, str(tmp),
                              metadata={k: str(v) for k, v in metadata.items()})
                    os.replace(tmp, target)
                written.append(target)
    dist.barrier()
    return written


def _gathered(tensor: torch.Tensor) -> torch.Tensor:
    """A whole CPU tensor: FSDP2 shards (DTensor) are all-gathered first (every rank must call this)."""
    full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return full.detach().cpu()


def _ema_path(path: Path) -> Path:
    return path.with_name(path.stem + "_ema.safetensors")


def _save_ema_lora(path: Path, unit: TrainUnit, metadata: dict, expert: str) -> Path:
    """The EMA weights as a second LoRA file (`..._ema.safetensors`)."""
    from wantune.lora import save_lora

    live = unit.trainable_state()
    unit.load_trainable_state(unit.ema.state_dict())
    try:
        return save_lora(_ema_path(path), unit.network, {**metadata, "ema": True},
                         expert=expert)
    finally:
        unit.load_trainable_state(live)
