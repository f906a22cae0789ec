"""Data-parallel training on 2 CPU ranks (torchrun, gloo) against one process with the same global batch.

One process with batch 2 and two ranks with batch 1 each see the same samples, σ and noise at every step,
so gradient averaging (DDP for LoRA, FSDP2 for full fine-tuning) must give the same weights; a run resumed
on 2 ranks from a checkpoint must end exactly where the uninterrupted 2-rank run ended; and only rank 0
writes the run folder's files.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wantune.train.config import load_train_config
from wantune.train.recipe import main

CONFIG = """
[model]
variant = "{variant}"
tiny = true
dtype = "fp32"
[data]
caption_dropout = 0.25
[data.synthetic]
samples = 8
[network]
type = "{network}"
rank = 4
alpha = 4.0
[optimizer]
lr = 1e-2
[schedule]
name = "cosine"
warmup_steps = 2
[regularisation]
ema_decay = 0.9
[regularisation.dop]
enabled = {dop}
trigger = "sks"
class_word = "person"
[validation]
split = 0.25
every_steps = 2
[saving]
output_dir = "{out}"
name = "{name}"
every_steps = 3
keep_last = 5
[logging]
tensorboard = false
progress_bar = false
[experts]
train = "both"
[training]
steps = 6
batch_size = {batch}
grad_accumulation = {accumulation}
mixed_precision = "no"
"""
KINDS = {"lora": ("lora", "wan2.1-t2v-1.3b", 1), "full": ("full", "wan2.1-t2v-1.3b", 1),
         "a14b": ("lora", "wan2.2-t2v-a14b", 2)}
"""Run kinds: (network type, variant, gradient accumulation); a14b trains both experts, switching every step."""
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
"""Weights after 6 Adam steps at lr 1e-2: Adam divides each gradient by its running RMS, so on a coordinate whose
gradient is near zero the rounding of a different reduction order (two ranks' all-reduce against one batch of
two) moves the weight by up to ~1e-5-1e-4 (1.9e-5 seen on one of 256 elements of an A14B LoRA on one CPU model);
gradients left unsynchronised or averaged wrongly move weights by ~lr."""


def _config(tmp: Path, kind: str, name: str, batch: int) -> Path:
    network, variant, accumulation = KINDS[kind]
    path = tmp / f"{name}.toml"
    path.write_text(CONFIG.format(network=network, variant=variant, dop="true" if kind == "lora" else "false",
                                  out=tmp, name=name, batch=batch, accumulation=accumulation))
    return path


def _torchrun(config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "wantune", "train", str(config), *extra],
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _final(run: Path) -> dict[str, torch.Tensor]:
    """Every final file's tensors, keyed `<file suffix>/<tensor>` (EMA files too)."""
    files = sorted(run.glob("wan*.safetensors"))
    assert files
    return {f"{p.stem.split(run.name)[-1]}/{k}": v for p in files for k, v in load_file(str(p)).items()}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(got: dict, want: dict, **tol) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], **tol, msg=lambda m, k=key: f"{k}: {m}")


@pytest.fixture(scope="module", params=list(KINDS))
def runs(request, tmp_path_factory):
    """(network type, single-process run folder, 2-rank run folder, 2-rank torchrun stdout)."""
    tmp = tmp_path_factory.mktemp(request.param)
    main(load_train_config(_config(tmp, request.param, "single", batch=2)))
    done = _torchrun(_config(tmp, request.param, "ranks", batch=1))
    return request.param, tmp / "single", tmp / "ranks", done.stdout


def test_two_ranks_batch_1_train_as_one_process_batch_2(runs):
    """DDP (LoRA with DOP; A14B experts with accumulation) / FSDP2 (full): same weights and losses as one process."""
    kind, single, ranks, _ = runs
    _assert_same_weights(_final(ranks), _final(single), **TOLERANCE)
    want, got = _records(single), _records(ranks)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, 7))
    for a, b in zip(got, want, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a.get("val/loss") == pytest.approx(b.get("val/loss"), rel=1e-4)
    if kind == "full":  # the checkpoint's sharded state (DCP) is there; no stray whole-model copies
        assert (ranks / "checkpoints" / "step_000006" / "dcp").is_dir()
        assert not list((ranks / "checkpoints" / "step_000006").glob("*.trainable.safetensors"))


def test_only_rank_0_writes(runs):
    """One metrics record per step, every log line once, files printed once, no leftover temp folders."""
    _, single, ranks, stdout = runs
    assert len(_records(ranks)) == 6
    lines = (ranks / "train.log").read_text().splitlines()
    assert len(lines) == len(set(lines)) and any("2 ranks" in line for line in lines)
    names = sorted(p.name.replace("ranks", "single") for p in ranks.iterdir())
    assert names == sorted(p.name for p in single.iterdir())
    assert [p.name for p in (ranks / "checkpoints").iterdir()] and \
        not [p for p in (ranks / "checkpoints").iterdir() if ".tmp" in p.name]
    printed = [line for line in stdout.splitlines() if line.endswith(".safetensors")]
    assert len(printed) == len(set(printed)) >= 1


def test_resume_on_two_ranks_is_exact(runs, tmp_path):
    """Resuming the 2-rank run from its step-3 checkpoint ends with exactly the uninterrupted weights."""
    kind, _, ranks, _ = runs
    config = _config(tmp_path, kind, "resumed", batch=1)
    shutil.copytree(ranks / "checkpoints" / "step_000003", tmp_path / "resumed" / "checkpoints" / "step_000003")
    _torchrun(config, "--resume", "latest")
    _assert_same_weights(_final(tmp_path / "resumed"), _final(ranks), rtol=0, atol=0)
    got = [(r["step"], r["loss"]) for r in _records(tmp_path / "resumed")]
    assert got == [(r["step"], r["loss"]) for r in _records(ranks)][3:]
