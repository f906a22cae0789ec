"""The dataset section of a run config: `[[datasets]]` entries plus run-level `variant` and `seed`.

A dataset TOML (or a run config that holds `[[datasets]]`) reads as:

    variant = "wan2.1-t2v-14b"     # model fps (16, 24 for TI2V-5B) and pixel multiple (16, 32 for the 2.2 VAE)
    seed = 42

    [[datasets]]
    path = "data/ghibli/videos"
    target_frames = [1, 21]
    resolution = [768, 416]

Relative paths are relative to the TOML file's folder (`load_dataset_config` resolves them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wantune import config as typed_config
from wantune.errors import UserError

FrameExtraction = Literal["head", "chunk", "slide", "uniform", "full"]
ControlMode = Literal["auto", "none", "first", "first_last"]


@dataclass
class DatasetEntry:
    """One image folder, video folder or JSONL list of media files."""

    path: Path
    """Folder of images and/or videos (or with images/, videos/, captions/ inside), or a .jsonl file."""
    kind: Literal["auto", "images", "videos", "jsonl"] = "auto"
    """What `path` holds: auto decides from the path (a .jsonl file, else a folder of both kinds)."""
    name: str | None = None
    """A label for reports; defaults to the folder name."""
    caption_extension: str = ".txt"
    """Caption file extension, looked up beside the file and in a sibling captions/ folder."""
    default_caption: str | None = None
    """Caption for files without one; without it such files are skipped."""
    trigger: str | None = None
    """Replaces `[trigger]` in every caption."""
    caption_dropout: float = 0.0
    """Probability of training a sample with an empty caption (0 when text embeddings are cached)."""
    num_repeats: int = 1
    """How many times each sample appears per epoch."""
    weight: float = 1.0
    """Loss weight of this dataset's samples."""
    is_regularization: bool = False
    """Samples are regularisation (prior preservation) data."""
    flip_x: bool = False
    """Randomly mirror samples left-right (augmentation flag handed to the loader)."""
    flip_y: bool = False
    """Randomly mirror samples top-bottom (augmentation flag handed to the loader)."""
    resolution: tuple[int, int] = (512, 512)
    """Target [width, height]; its area bounds the generated buckets."""
    buckets: list[tuple[int, int]] | None = None
    """Explicit [width, height] buckets instead of generated ones."""
    enable_bucket: bool = True
    """False: every item is resized and center-cropped to exactly `resolution`."""
    bucket_no_upscale: bool = False
    """Never pick a bucket larger than the source in either dimension."""
    min_bucket_side: int | None = None
    """Smallest bucket side for generated buckets (default: half the square side of the area)."""
    max_bucket_side: int | None = None
    """Largest bucket side for generated buckets (default: no limit beyond the area)."""
    target_frames: list[int] = field(default_factory=lambda: [41])
    """Video window lengths in frames at the model fps, each 4n+1 (images are always 1 frame)."""
    frame_extraction: FrameExtraction = "head"
    """head: first window; chunk: back-to-back windows; slide: every frame_stride; uniform: frame_sample
    windows spread evenly; full: the whole clip rounded down to 4n+1, at most max_frames."""
    frame_stride: int = 1
    """Step between window starts for `slide`."""
    frame_sample: int = 1
    """Number of windows for `uniform`."""
    max_frames: int = 129
    """Longest window for `full` (4n+1)."""
    source_fps: float | None = None
    """Override the fps read from the video files."""
    control: ControlMode = "auto"
    """Conditioning frames: auto (first for I2V/TI2V, first+last for FLF2V, none for T2V), none, first,
    first_last."""
    control_path: Path | None = None
    """Folder of control files with the same base names (or a single file) used instead of the clip's frames."""
    mask_path: Path | None = None
    """Folder of loss masks with the same base names, or one file for all (image: every frame; video: frame by
    frame): white counts fully in the loss, black at `training.mask_min_weight`, grey in between (masked loss)."""
    strict: bool = False
    """Stop with an error at the first unusable file instead of skipping it."""

    def validate(self) -> None:
        where = f"datasets entry {self.path}"
        for frames in self.target_frames:
            if frames < 1 or (frames - 1) % 4:
                near = max(1, (frames - 1) // 4 * 4 + 1)
                raise UserError(f"{where}: target_frames value {frames} is not 4n+1; use {near} or {near + 4}")
        if not self.target_frames:
            raise UserError(f"{where}: target_frames is empty; use e.g. [41]")
        if self.max_frames < 1 or (self.max_frames - 1) % 4:
            raise UserError(f"{where}: max_frames {self.max_frames} is not 4n+1; use "
                            f"{max(1, (self.max_frames - 1) // 4 * 4 + 1)}")
        _positive(where, frame_stride=self.frame_stride, frame_sample=self.frame_sample,
                  num_repeats=self.num_repeats, width=self.resolution[0], height=self.resolution[1])
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise UserError(f"{where}: caption_dropout {self.caption_dropout} must be within [0, 1]")
        if self.weight <= 0:
            raise UserError(f"{where}: weight {self.weight} must be > 0")
        if self.source_fps is not None and self.source_fps <= 0:
            raise UserError(f"{where}: source_fps {self.source_fps} must be > 0")
        if self.buckets is not None and not self.buckets:
            raise UserError(f"{where}: buckets is empty; remove it to generate buckets from resolution")
        for w, h in self.buckets or []:
            _positive(where, bucket_width=w, bucket_height=h)
        if not self.caption_extension.startswith("."):
            raise UserError(f"{where}: caption_extension {self.caption_extension!r} must start with '.'")

    @property
    def label(self) -> str:
        """The name shown in reports."""
        return self.name or self.path.name


def _positive(where: str, **values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise UserError(f"{where}: {key} must be >= 1, got {value}")


@dataclass
class DatasetConfig:
    """The datasets of a run and the run-level settings they depend on."""

    datasets: list[DatasetEntry] = field(default_factory=list)
    """The `[[datasets]]` entries, mixed kinds allowed."""
    variant: str = "wan2.1-t2v-14b"
    """Model variant: gives the model fps (16, or 24 for TI2V-5B) and the pixel multiple (16 or 32)."""
    seed: int = 42
    """Seed of the data order and of random augmentations."""

    def validate(self) -> None:
        from wantune.models.variants import get_variant

        variant = get_variant(self.variant)
        if not self.datasets:
            raise UserError("datasets: no [[datasets]] entries; add at least one with a path")
        multiple = variant.pixel_multiple
        for entry in self.datasets:
            for w, h in entry.buckets or []:
                if w % multiple or h % multiple:
                    raise UserError(
                        f"datasets entry {entry.path}: bucket [{w}, {h}] is not a multiple of {multiple} px "
                        f"({variant.name} uses the {variant.vae} VAE); use [{_snap(w, multiple)}, "
                        f"{_snap(h, multiple)}]")


def _snap(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


def load_dataset_config(path: str | Path, overrides: list[str] | None = None,
                        variant: str | None = None) -> DatasetConfig:
    """Read the dataset part of a TOML file: a dataset file, a run config holding `[[datasets]]`, or a run
    config whose `[data] dataset_config` names one (its `[model] variant` then wins); resolve relative paths."""
    path = Path(path)
    data = typed_config.read_toml(path)
    model = data.get("model")
    run_variant = model.get("variant") if isinstance(model, dict) else None
    if "datasets" not in data:
        section = data.get("data")
        ref = section.get("dataset_config") if isinstance(section, dict) else None
        if isinstance(ref, str):  # a run config pointing at its dataset TOML
            target = Path(ref) if Path(ref).is_absolute() else path.parent / ref
            return load_dataset_config(target, overrides, variant=variant or run_variant)
        raise UserError(f"{path}: no [[datasets]] entries (nor [data] dataset_config); add at least one "
                        f"[[datasets]] with a path")
    picked = {"datasets": data["datasets"]}
    name = data.get("variant") or run_variant
    if variant or name:
        picked["variant"] = variant or name
    if isinstance(data.get("seed"), int):
        picked["seed"] = data["seed"]
    cfg = typed_config.load(DatasetConfig, picked, overrides)
    return resolve_paths(cfg, path.parent)


def resolve_paths(cfg: DatasetConfig, base: Path) -> DatasetConfig:
    """A copy with every relative dataset path made absolute against `base`."""
    def absolute(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p)).resolve()

    entries = [dataclasses.replace(e, path=absolute(e.path), control_path=absolute(e.control_path),
                                   mask_path=absolute(e.mask_path))
               for e in cfg.datasets]
    return dataclasses.replace(cfg, datasets=entries)


def folder_config(path: str | Path, variant: str | None = None) -> DatasetConfig:
    """A one-entry config for a bare folder (or .jsonl), as `dataset check DIR` uses."""
    entry = DatasetEntry(path=Path(path).resolve())
    entry.validate()
    cfg = DatasetConfig(datasets=[entry], variant=variant or DatasetConfig.variant)
    cfg.validate()
    return cfg
