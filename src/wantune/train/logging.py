"""Run metrics: a JSONL log in the run folder (one record per step / validation) and TensorBoard scalars,
plus the progress bar (s/step and ETA) and plain-words messages to the console and `train.log`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    """Appends `{"step": N, ...}` records to metrics.jsonl and mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.text_path = run_dir / "train.log"
        if resume_step is not None:
            self._truncate_after(resume_step)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop records logged after the resumed checkpoint (they will be logged again, identically)."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip()
                and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, values: dict) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def message(self, text: str, bar=None) -> None:
        """A plain-words line for the user: console (above the bar) and train.log."""
        (bar.write if bar is not None else print)(text)
        with open(self.text_path, "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class NullLog:
    """The log of ranks other than 0: they train, rank 0 writes."""

    def log(self, step: int, values: dict) -> None:
        pass

    def message(self, text: str, bar=None) -> None:
        pass

    def close(self) -> None:
        pass


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def progress_bar(start: int, total: int, enabled: bool):
    """A tqdm bar over steps showing s/step and the ETA."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_inv_fmt}{postfix}]")
