"""`wantune dataset check`: what a dataset config yields, what it skips and why, and what to train with.

The recommendations follow ../shared/GUIDES.md: rank and epochs by dataset size (samples per epoch),
steps = samples x epochs / batch, alpha = rank; below 100 samples the AI Toolkit guide's small-dataset
values (rank 16-32, 1500-3000 steps at lr 1e-4).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

from wantune.data.config import DatasetConfig
from wantune.data.samples import ScanResult, dataset_labels, samples_per_epoch, scan

# (lowest samples, rank range, epoch range) from the guides' "by dataset size" tables.
SIZE_TABLE = (
    (800, (96, 128), (8, 12)),
    (400, (64, 96), (10, 15)),
    (200, (48, 64), (12, 18)),
    (100, (32, 48), (15, 20)),
)
SMALL_SET = dict(rank=(16, 32), steps=(1500, 3000), lr=1e-4)


@dataclass
class Recommendation:
    """Training settings the guides suggest for this dataset size."""

    samples_per_epoch: int
    """Dataset size the advice is for."""
    rank: tuple[int, int]
    """LoRA rank range (alpha = rank)."""
    epochs: tuple[int, int]
    """Epoch range."""
    steps: tuple[int, int]
    """Optimizer steps range = samples x epochs / batch."""
    batch_size: int
    """Batch size the steps assume."""
    source: str
    """Which guide table the figures come from."""
    lr: float | None = None
    """Learning rate, where the guide gives one for this size."""
    notes: list[str] = field(default_factory=list)
    """Other advice in words."""


def recommend(num_samples: int, batch_size: int = 1) -> Recommendation:
    """Rank, epochs and steps for `num_samples` samples per epoch (GUIDES.md tables)."""
    batch_size = max(1, batch_size)
    for lowest, rank, epochs in SIZE_TABLE:
        if num_samples >= lowest:
            steps = tuple(math.ceil(num_samples * e / batch_size) for e in epochs)
            return Recommendation(num_samples, rank, epochs, steps, batch_size,
                                  "guide 1: rank and epochs by dataset size (alpha = rank)")
    if num_samples <= 0:
        return Recommendation(0, (0, 0), (0, 0), (0, 0), batch_size, "no samples", notes=["nothing to train on"])
    steps = SMALL_SET["steps"]
    epochs = tuple(max(1, math.ceil(s * batch_size / num_samples)) for s in steps)
    return Recommendation(num_samples, SMALL_SET["rank"], epochs, steps, batch_size,
                          "AI Toolkit guide (small datasets): rank 16-32, 1500-3000 steps", lr=SMALL_SET["lr"],
                          notes=["motion/style 1500-2500 steps, character 2000-3000 steps"])


@dataclass
class CheckReport:
    """Everything `dataset check` prints."""

    variant: str
    model_fps: int
    pixel_multiple: int
    samples: int
    samples_per_epoch: int
    datasets: list[dict]
    files: list[dict]
    buckets: dict[str, int]
    skipped: list[dict]
    missing_captions: list[str]
    recommendation: Recommendation

    def to_dict(self) -> dict:
        return asdict(self)


def check_dataset(cfg: DatasetConfig, batch_size: int = 1, strict: bool | None = None) -> CheckReport:
    """Scan `cfg` and build the report (UserError only when a strict dataset has a bad file)."""
    from wantune.models.variants import get_variant

    variant = get_variant(cfg.variant)
    result = scan(cfg, strict)
    per_epoch = samples_per_epoch(result.samples)
    rec = recommend(per_epoch, batch_size)
    rec.notes.extend(_notes(cfg, result, variant.fps))
    buckets = Counter()
    for s in result.samples:
        buckets[f"{s.bucket[0]}x{s.bucket[1]}x{s.num_frames}"] += s.repeats
    missing = [str(s.path) for s in result.skipped if s.reason.startswith("no caption")]
    return CheckReport(cfg.variant, variant.fps, variant.pixel_multiple, len(result.samples), per_epoch,
                       _dataset_rows(cfg, result), [_file_row(r) for r in result.files], dict(sorted(buckets.items())),
                       [{"path": str(s.path), "dataset": s.dataset, "reason": s.reason} for s in result.skipped],
                       missing, rec)


def _dataset_rows(cfg: DatasetConfig, result: ScanResult) -> list[dict]:
    rows = []
    for entry, label in zip(cfg.datasets, dataset_labels(cfg)):
        mine = [s for s in result.samples if s.dataset == label]
        files = [f for f in result.files if f.dataset == label]
        rows.append({
            "name": label, "path": str(entry.path), "files": len(files),
            "images": sum(1 for f in files if f.info and f.info.kind == "image"),
            "videos": sum(1 for f in files if f.info and f.info.kind == "video"),
            "samples": len(mine), "samples_per_epoch": samples_per_epoch(mine),
            "skipped": sum(1 for s in result.skipped if s.dataset == label),
            "frame_extraction": entry.frame_extraction, "target_frames": list(entry.target_frames),
            "masked_samples": sum(1 for s in mine if s.mask_path is not None),
        })
    return rows


def _file_row(record) -> dict:
    info = record.info
    row = {"path": str(record.path), "dataset": record.dataset, "samples": record.samples,
           "caption": record.caption_source, "buckets": [f"{w}x{h}" for w, h in record.buckets]}
    if info is not None:
        row.update(kind=info.kind, width=info.width, height=info.height, frames=info.num_frames,
                   fps=round(info.fps, 3), duration=round(info.duration, 3), pixel_format=info.pixel_format,
                   notes=list(info.notes))
    return row


def _notes(cfg: DatasetConfig, result: ScanResult, model_fps: int) -> list[str]:
    notes = []
    slow = sorted({str(r.path) for r in result.files if r.info and r.info.kind == "video" and r.info.fps < model_fps})
    if slow:
        notes.append(f"{len(slow)} video(s) below {model_fps} fps: frames are repeated to keep motion speed")
    if any(e.caption_dropout > 0 for e in cfg.datasets):
        notes.append("caption dropout 5-10% is typical, but use 0 when text embeddings are cached")
    if any(s.num_frames > 81 for s in result.samples):
        notes.append("windows longer than 81 frames: the guides use 41 to start and 81 at most")
    upscaled = [s for s in result.samples if s.bucket[0] * s.bucket[1] > 2 * s.source_size[0] * s.source_size[1]]
    if upscaled:
        notes.append(f"{len({s.path for s in upscaled})} file(s) upscaled more than 2x in area to their bucket; "
                     f"use bucket_no_upscale = true or a lower resolution")
    short = [s for s in result.skipped if s.reason.startswith("clip too short for")]
    if short:
        notes.append(f"{len(short)} window target(s) dropped because clips are a few frames short; trim targets "
                     f"or extend the clips to keep every sample")
    return notes


def format_report(report: CheckReport) -> str:
    """The report as text for a terminal."""
    lines = [f"variant {report.variant}: {report.model_fps} fps, sizes multiple of {report.pixel_multiple} px", ""]
    for d in report.datasets:
        lines.append(f"dataset {d['name']} ({d['path']}): {d['files']} files ({d['images']} images, "
                     f"{d['videos']} videos), {d['samples']} samples, {d['samples_per_epoch']} per epoch, "
                     f"{d['skipped']} skipped; {d['frame_extraction']} {d['target_frames']}"
                     + (f"; {d['masked_samples']} with loss masks" if d["masked_samples"] else ""))
    lines += ["", "files:"]
    for f in report.files:
        if "kind" not in f:
            continue
        timing = f"{f['frames']} frames @ {f['fps']:g} fps = {f['duration']:.2f}s" if f["kind"] == "video" else "image"
        notes = f"  [{'; '.join(f['notes'])}]" if f.get("notes") else ""
        lines.append(f"  {f['path']}: {f['width']}x{f['height']} {timing}, caption {f['caption'] or 'none'}, "
                     f"{f['samples']} sample(s) -> {', '.join(f['buckets']) or '-'}{notes}")
    lines += ["", "buckets (width x height x frames: samples per epoch):"]
    lines += [f"  {key}: {count}" for key, count in report.buckets.items()] or ["  none"]
    lines += ["", f"skipped ({len(report.skipped)}):"]
    lines += [f"  {s['path']}: {s['reason']}" for s in report.skipped] or ["  none"]
    if report.missing_captions:
        lines += ["", f"missing captions ({len(report.missing_captions)}):"]
        lines += [f"  {p}" for p in report.missing_captions]
    lines += ["", *_format_recommendation(report.recommendation)]
    return "\n".join(lines)


def _format_recommendation(rec: Recommendation) -> list[str]:
    lines = [f"samples per epoch: {rec.samples_per_epoch}", f"recommended ({rec.source}):"]
    if rec.samples_per_epoch:
        lines += [f"  rank {rec.rank[0]}-{rec.rank[1]} (alpha = rank)",
                  f"  epochs {rec.epochs[0]}-{rec.epochs[1]}",
                  f"  steps {rec.steps[0]}-{rec.steps[1]} at batch {rec.batch_size}"]
        if rec.lr:
            lines.append(f"  learning rate {rec.lr:g}")
    lines += [f"  note: {n}" for n in rec.notes]
    return lines
