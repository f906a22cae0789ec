"""The training recipe: `main(config)` sets up, loops over steps, saves. Read it top to bottom.

What happens in one step is `wantune.train.loop.train_step`; what happens between steps (metrics,
diagnostics, validation, previews, checkpoints) is `after_step` below.

Launched with torchrun, every rank runs this same recipe on its share of the data (docs/distributed.md);
rank 0 alone writes the run folder's files, logs and previews.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wantune import config as typed
from wantune.dist import env as dist
from wantune.dist.parallel import is_sharded, resolve_strategy
from wantune.train.config import TrainConfig, save_resolved
from wantune.train.diagnostics import Diagnostics, lora_update_norm
from wantune.train.experts import ExpertSchedule, build_models, build_unit, plan_offload, run_variant
from wantune.train.logging import MetricsLog, NullLog, progress_bar
from wantune.train.loop import StepContext, StepResult, TrainUnit, train_step
from wantune.train.performance import memory_line, resolve_plain_blocks
from wantune.train.sources import RunData, build_data
from wantune.train.state import (checkpoint_dir, list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint,
                                 save_final)
from wantune.train.validation import timestep_owners, validation_loss


def main(cfg: TrainConfig, resume: str | None = None) -> list[Path]:
    """Train as configured (optionally resuming `latest` or a checkpoint folder); returns the final files."""
    cfg.check_files()
    env = dist.setup(cfg.training.device, cfg.distributed.timeout_minutes)
    seed_everything(cfg.training.seed)
    device = env.device
    variant = run_variant(cfg)
    data = build_data(cfg, variant, env.rank, env.world)
    total = total_steps(cfg, data)
    strategy = resolve_strategy(cfg.distributed.strategy, cfg.network.type, env.world)
    models = build_models(cfg, variant)
    offload = plan_offload(cfg, models, device) and strategy != "fsdp"  # sharded experts both fit
    idle_experts = int(len(models) > 1 and not offload)
    plain_note = resolve_plain_blocks(cfg, variant, data.largest_FHW, device, idle_experts)  # before the blocks wrap
    units = [build_unit(name, model, cfg, variant, total, device, on_device=not offload, strategy=strategy)
             for name, model in models.items()]
    experts = ExpertSchedule(units, cfg.experts.switch_every, offload, device)
    ctx = StepContext(cfg, device, torch.Generator().manual_seed(cfg.training.seed), make_scaler(cfg, device),
                      rank=env.rank, world=env.world)
    run_dir = prepare_run_dir(cfg)
    run = Run(cfg, run_dir, units, ctx, data, Diagnostics(cfg.optimizer.lr), variant=variant, total=total)
    start = run.restore(dist.broadcast_object(resolve_resume(run_dir, resume) if env.is_main else None))
    run.open_log(resumed_at=start if resume else None)
    run.announce(start, offload, strategy)
    bar = progress_bar(start, total, cfg.logging.progress_bar and env.is_main)
    for step in range(start, total):
        unit = experts.unit_for(step)
        epochs_before = data.completed_epochs
        micro_batches = [data.loader.next_batch() for _ in range(cfg.training.grad_accumulation)]
        if step == start:
            if plain_note:
                run.log.message(plain_note)
            run.log.message(memory_line(cfg, variant, micro_batches[0]["latents_BCFHW"], device, idle_experts))
        result = train_step(unit, micro_batches, ctx)
        run.after_step(step + 1, unit, result, data.completed_epochs > epochs_before, bar)
        bar.update(1)
    bar.close()
    files = save_final(run_dir, cfg, units, variant, run.lora_metadata())
    run.finish(files)
    dist.teardown()
    return files


@dataclass
class Run:
    """The state shared between steps: where to write, what to log, when to validate and save."""

    cfg: TrainConfig
    run_dir: Path
    units: list[TrainUnit]
    ctx: StepContext
    data: RunData
    diagnostics: Diagnostics
    variant: object = None
    total: int = 0
    log: MetricsLog | None = None
    last_checkpoint: str | None = None
    frozen_experts: dict = field(default_factory=dict)
    """A14B previews: the expert not trained, loaded once."""

    def restore(self, checkpoint: Path | None) -> int:
        if checkpoint is None:
            return 0
        state = load_checkpoint(checkpoint, self.units, self.ctx)
        self.data.loader.load_state_dict(state["data"])
        self.diagnostics.load_state_dict(state["extra"]["diagnostics"])
        self.last_checkpoint = checkpoint.name
        return int(state["step"])

    def open_log(self, resumed_at: int | None) -> None:
        self.log = MetricsLog(self.run_dir, self.cfg.logging.tensorboard, resume_step=resumed_at) \
            if dist.is_main() else NullLog()

    def announce(self, start: int, offload: bool = False, strategy: str = "none") -> None:
        from wantune.train.presets import recommend

        n = self.data.num_samples
        rec = recommend(n)
        where = f"resuming at step {start}" if start else "starting"
        self.log.message(f"{where}: {self.total} steps, {n} training samples, {len(self.data.validation)} "
                         f"validation samples; run folder {self.run_dir}. Guide advice for this size: {rec.reason}.")
        if strategy != "none":
            self.log.message(f"{dist.world()} ranks, {strategy}: {self.cfg.training.batch_size} samples per rank "
                             f"per micro-batch, {self.cfg.training.batch_size * dist.world()} in all.")
        if offload:
            self.log.message("A14B: the waiting expert is kept in pinned CPU memory and moved to the GPU when "
                             f"its turn comes (every {self.cfg.experts.switch_every} steps).")
        for unit in self.units:
            if unit.sigma_range is None:
                self.log.message(f"expert {unit.name}: no allowed timestep falls in its range "
                                 f"(min/max_timestep); it is not trained and is saved unchanged.")

    def after_step(self, step: int, unit: TrainUnit, result: StepResult, epoch_ended: bool, bar) -> None:
        """Metrics, diagnostics, validation, previews, then the checkpoint due after `step` steps.

        The checkpoint comes last so that it holds this step's diagnostics and the metrics line is already
        written: a resumed run neither loses nor repeats a record.
        """
        cfg = self.cfg
        record = {"loss": result.loss, "lr": result.lr, "expert": unit.name, **result.parts}
        if result.grad_norm is not None:
            record["grad_norm"] = result.grad_norm
        if result.skipped:
            record["skipped"] = result.skipped
        messages = self.diagnostics.on_step(step, result.loss, result.skipped)
        bar.set_postfix(loss=f"{result.loss:.4f}", refresh=False)
        saving = _due(step, cfg.saving.every_steps) or (epoch_ended and cfg.saving.every_epochs > 0 and
                                                        self.data.completed_epochs % cfg.saving.every_epochs == 0)
        if _due(step, cfg.validation.every_steps) and self.data.validation:
            owners = timestep_owners(cfg.validation.timesteps, self.units)
            record.update(validation_loss(self.data.validation, owners, self.ctx))
            if "val/loss" in record:
                messages += self.diagnostics.on_validation(step, record["val/loss"], result.loss,
                                                           checkpoint_dir(self.run_dir, step).name if saving else None)
        if step == max(20, self.total // 5) or step == self.total:
            for u in self.units:
                messages += self.diagnostics.on_lora(step, u.network)
                record[f"lora_norm/{u.name}"] = lora_update_norm(u.network)
        if _due(step, cfg.previews.every_steps):
            self.preview(step)
        self.log.log(step, record)
        for text in messages:
            self.log.message(text, bar)
        if saving:
            self.last_checkpoint = self.save(step).name

    def save(self, step: int) -> Path:
        extra = {"diagnostics": self.diagnostics.state_dict()}
        return save_checkpoint(self.run_dir, step, self.units, self.ctx, self.data.loader.state_dict(), extra,
                               self.lora_metadata(step), self.cfg.saving.keep_last)

    def preview(self, step: int) -> None:
        """Rank 0 samples the previews (not with sharded weights: generate from a checkpoint instead)."""
        from wantune.train.previews import render_previews

        if any(is_sharded(u.model) for u in self.units):
            self.log.message(f"step {step}: previews skipped (FSDP-sharded weights); generate from a checkpoint")
            return
        if not dist.is_main():
            return

        files = render_previews({u.name: u.model for u in self.units}, self.cfg, self.variant, step, self.run_dir,
                                self.ctx.device, self.frozen_experts)
        self.log.message(f"step {step}: previews written: {', '.join(str(f) for f in files)}")

    def lora_metadata(self, step: int | None = None) -> dict:
        """Training settings carried by every LoRA file (self-describing artifacts)."""
        cfg = self.cfg
        return {"wantune.train.steps": step if step is not None else self.total,
                "wantune.train.samples": self.data.num_samples,
                "wantune.train.lr": cfg.optimizer.lr, "wantune.train.optimizer": cfg.optimizer.name,
                "wantune.train.timesteps": f"{cfg.timesteps.sampling}/{cfg.timesteps.bias}",
                "wantune.train.config": typed.dumps(cfg)}

    def finish(self, files: list[Path]) -> None:
        best = self.diagnostics.best_checkpoint
        tail = f"; best validation loss {self.diagnostics.best_val:.4g} at step {self.diagnostics.best_val_step}" \
               f" ({best or 'no checkpoint at that step'})" if self.diagnostics.best_val is not None else ""
        self.log.message(f"done: {', '.join(str(f) for f in files)}{tail}")
        self.log.close()
        if not dist.is_main():
            return
        result = {"files": [str(f) for f in files], "checkpoints": [p.name for p in list_checkpoints(self.run_dir)]}
        (self.run_dir / "result.json").write_text(json.dumps(result, indent=1))


def prepare_run_dir(cfg: TrainConfig) -> Path:
    """`<output_dir>/<name>/` with the resolved config saved in it."""
    run_dir = Path(cfg.saving.output_dir) / cfg.saving.name
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir / "config.toml")
    dist.barrier()
    return run_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_scaler(cfg: TrainConfig, device: torch.device):
    """Loss scaling for fp16 autocast only."""
    return torch.amp.GradScaler(device.type) if cfg.training.mixed_precision == "fp16" else None


def total_steps(cfg: TrainConfig, data: RunData) -> int:
    if cfg.training.steps is not None:
        return cfg.training.steps
    per_epoch = math.ceil(data.loader.batches_per_epoch / cfg.training.grad_accumulation)
    return cfg.training.epochs * per_epoch


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0
