"""Exact resume: a `wantune train` killed with SIGKILL in the middle of a checkpoint save, then resumed with
`--resume latest`, ends with the same weights and the same loss curve as a run never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from wantune.train.config import load_train_config
from wantune.train.recipe import main

CONFIG = """
[model]
variant = "wan2.1-t2v-1.3b"
tiny = true
dtype = "fp32"
[data]
caption_dropout = 0.25
[data.synthetic]
samples = 6
[network]
rank = 4
alpha = 4.0
dropout = 0.1
[optimizer]
lr = 1e-2
[schedule]
name = "cosine"
warmup_steps = 2
[regularisation]
ema_decay = 0.9
[validation]
split = 0.34
every_steps = 2
[saving]
output_dir = "{out}"
name = "resume"
every_steps = 3
keep_last = 5
[logging]
tensorboard = false
progress_bar = false
[training]
steps = 8
batch_size = 2
mixed_precision = "no"
"""


def _write(tmp_path: Path, out: Path) -> Path:
    f = tmp_path / f"{out.name}.toml"
    f.write_text(CONFIG.format(out=out))
    return f


def _train(config: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wantune", "train", str(config), *extra],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _losses(run: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r.get("val/loss")) for r in records]


def test_sigkill_mid_save_then_resume_matches_uninterrupted_run(tmp_path):
    reference = main(load_train_config(_write(tmp_path, tmp_path / "ref")))

    config = _write(tmp_path, tmp_path / "killed")
    run = tmp_path / "killed" / "resume"
    proc = _train(config, env={"WANTUNE_TEST_SAVE_SLEEP": "6:120"})
    deadline = time.time() + 240
    while not any((p / "state.pt").is_file() for p in run.glob("checkpoints/step_000006.tmp*")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the run never reached the save of step 6"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (run / "checkpoints").iterdir() if ".tmp" not in p.name)
    assert done == ["step_000003"]  # the half-written step 6 is not a checkpoint

    resumed = _train(config, "--resume", "latest")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()
    assert "resuming at step 3" in (run / "train.log").read_text()

    assert _losses(run) == _losses(tmp_path / "ref" / "resume")
    for ref_file in reference:
        ours, theirs = load_file(str(run / ref_file.name)), load_file(str(ref_file))
        assert ours.keys() == theirs.keys() and len(ours) > 0
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    ema_ref = load_file(str(tmp_path / "ref/resume/checkpoints/step_000006/model.ema.safetensors"))
    ema_ours = load_file(str(run / "checkpoints/step_000006/model.ema.safetensors"))
    assert all(torch.equal(ema_ours[k], ema_ref[k]) for k in ema_ref)
