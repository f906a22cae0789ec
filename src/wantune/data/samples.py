"""Training samples: every (file, frame window, bucket) a dataset config yields, and every file it skips.

`enumerate_samples(cfg) -> (samples, skipped)` never raises for a bad file: each one becomes a `Skipped`
(path, reason) unless its dataset has `strict = true`, which raises `UserError` naming the first one.
`load_sample_pixels(sample)` decodes, resizes and center-crops a sample for the VAE.

Tensor legend: C = 3 RGB channels, F = frames, H/W = bucket height/width, K = conditioning frames.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from wantune.data import buckets as bucketing
from wantune.data.captions import find_caption, missing_caption_reason
from wantune.data.config import DatasetConfig, DatasetEntry
from wantune.data.frames import frame_windows, resample_timeline, resample_times, too_short_targets
from wantune.data.sources import MediaItem, list_media
from wantune.data.video import MediaInfo, probe, read_frames, read_image, replace
from wantune.errors import UserError


@dataclass(frozen=True)
class Sample:
    """One training item: a frame window of a file in a bucket, with its caption and conditioning."""

    sample_id: str
    """Stable id: hash of the source bytes identity, frame window, bucket and control."""
    path: Path
    """The image or video file."""
    kind: str
    """'image' or 'video'."""
    caption: str
    """Caption with the trigger substituted."""
    frame_indices: tuple[int, ...]
    """Source frame index of each training frame, after resampling to the model fps ((0,) for images)."""
    fps: float
    """Frame rate of the training frames (the model fps)."""
    bucket: tuple[int, int]
    """Training (width, height)."""
    source_size: tuple[int, int]
    """Source (width, height)."""
    source_fps: float = 0.0
    """Frame rate of the source video (0 for images)."""
    source_id: str = ""
    """Identity of the source bytes (size + hash of the first and last MiB)."""
    control_frames: tuple[int, ...] = ()
    """Positions within the window used as conditioning frames ((0,) I2V, (0, F-1) FLF2V, () T2V)."""
    control_path: Path | None = None
    """A control file used instead of the sample's own frames."""
    caption_source: str = "file"
    """Where the caption came from: 'file', 'inline' (JSONL) or 'default'."""
    caption_dropout: float = 0.0
    """Probability of replacing the caption by '' in a step."""
    weight: float = 1.0
    """Loss weight."""
    is_regularization: bool = False
    """Regularisation sample."""
    flip_x: bool = False
    """The loader may mirror it left-right."""
    flip_y: bool = False
    """The loader may mirror it top-bottom."""
    repeats: int = 1
    """Occurrences per epoch (num_repeats)."""
    dataset: str = ""
    """Label of the dataset it comes from."""
    variable_rate: bool = False
    """The source has a variable frame rate (frames were picked by timestamp; decode without seeking)."""
    mask_path: Path | None = None
    """Its loss mask (the dataset's `mask_path`), or None."""
    mask_id: str = ""
    """Identity of the mask file's bytes ('' without a mask)."""

    @property
    def num_frames(self) -> int:
        return len(self.frame_indices)

    @property
    def flip(self) -> tuple[bool, bool]:
        """(flip_x, flip_y) augmentation flags."""
        return self.flip_x, self.flip_y


@dataclass(frozen=True)
class Skipped:
    """A file (or a window of it) left out, and why."""

    path: Path | str
    """The file (or dataset path, or 'file.jsonl:LINE')."""
    reason: str
    """Why, in words."""
    dataset: str = ""
    """Label of the dataset."""


@dataclass
class FileRecord:
    """What the scan found for one file (for `dataset check`)."""

    path: Path
    dataset: str
    info: MediaInfo | None = None
    caption_source: str | None = None
    samples: int = 0
    buckets: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class ScanResult:
    """Samples, skips and per-file records of a whole config."""

    samples: list[Sample] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)


def enumerate_samples(cfg: DatasetConfig, strict: bool | None = None) -> tuple[list[Sample], list[Skipped]]:
    """Every sample of the config and every skipped file with its reason (strict overrides each entry)."""
    result = scan(cfg, strict)
    return result.samples, result.skipped


def scan(cfg: DatasetConfig, strict: bool | None = None) -> ScanResult:
    """Like `enumerate_samples`, also returning per-file records for reports."""
    from wantune.models.variants import get_variant

    variant = get_variant(cfg.variant)
    result = ScanResult()
    seen: dict[str, Path] = {}
    memo: dict[Path, MediaInfo | UserError] = {}
    for entry, label in zip(cfg.datasets, dataset_labels(cfg)):
        before_samples, before_skips = len(result.samples), len(result.skipped)
        items, problems = list_media(entry)
        _record_skips(result, [Skipped(where, reason) for where, reason in problems], label)
        for item in items:
            record = FileRecord(item.path, label)
            result.files.append(record)
            samples, skips = _item_samples(item, entry, variant, record, memo)
            samples = _dedupe(samples, seen, skips)
            result.samples.extend(samples)
            _record_skips(result, skips, label)
        if len(result.samples) == before_samples:
            _record_skips(result, [Skipped(entry.path, "empty dataset: no usable samples")], label)
        if strict if strict is not None else entry.strict:
            if len(result.skipped) > before_skips:
                first = result.skipped[before_skips]
                raise UserError(f"{first.path}: {first.reason} (strict dataset {label!r}; fix or remove "
                                f"it, or set strict = false to skip it)")
    return result


def dataset_labels(cfg: DatasetConfig) -> list[str]:
    """A unique report label per entry (its name or folder name, suffixed with #index when repeated)."""
    labels = [entry.label for entry in cfg.datasets]
    return [f"{label}#{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def _record_skips(result: ScanResult, skips: list[Skipped], label: str) -> None:
    result.skipped.extend(Skipped(s.path, s.reason, label) for s in skips)


def _dedupe(samples: list[Sample], seen: dict[str, Path], skips: list[Skipped]) -> list[Sample]:
    kept = []
    for sample in samples:
        if sample.sample_id in seen:
            skips.append(Skipped(sample.path, f"duplicate of {seen[sample.sample_id]} (same bytes, window "
                                              f"and bucket)"))
            continue
        seen[sample.sample_id] = sample.path
        kept.append(sample)
    return kept


def _probe_once(path: Path, memo: dict) -> MediaInfo:
    """probe(path), once per scan even when several entries share a file."""
    if path not in memo:
        try:
            memo[path] = probe(path)
        except UserError as exc:
            memo[path] = exc
    if isinstance(memo[path], UserError):
        raise memo[path]
    return memo[path]


def _item_samples(item: MediaItem, entry: DatasetEntry, variant, record: FileRecord, memo: dict
                  ) -> tuple[list[Sample], list[Skipped]]:
    try:
        info = _probe_once(item.path, memo)
        if info.kind == "video" and entry.source_fps:
            info = replace(info, fps=float(entry.source_fps), timestamps=None)
        record.info = info
        caption = find_caption(item.path, entry.caption_extension, entry.default_caption, entry.trigger,
                               item.caption)
        if caption is None:
            raise UserError(missing_caption_reason(item.path, entry.caption_extension))
        record.caption_source = caption.source
        bucket = _bucket_for(info, entry, variant.pixel_multiple)
        control_path = _control_for(item, entry, memo)
        mask_path = _mask_for(item, entry, memo)
        identity = source_identity(item.path)
    except UserError as exc:
        return [], [Skipped(item.path, _strip_path(str(exc), item.path))]
    windows, skips = _windows(info, entry, variant.fps)
    if mask_path is not None:
        windows, skips = _fit_mask(windows, skips, mask_path, memo, item.path)
    control_id = source_identity(control_path) if control_path else ""
    mask_id = source_identity(mask_path) if mask_path else ""
    samples = []
    for frame_indices in windows:
        sample_id = _sample_id(identity, frame_indices, bucket, control_id)
        samples.append(Sample(
            sample_id, item.path, info.kind, caption.text, frame_indices, float(variant.fps), bucket,
            (info.width, info.height), info.fps, identity, _control_frames(entry, variant, len(frame_indices)),
            control_path, caption.source, entry.caption_dropout, entry.weight, entry.is_regularization,
            entry.flip_x, entry.flip_y, entry.num_repeats, record.dataset, info.timestamps is not None, mask_path,
            mask_id))
    record.samples, record.buckets = len(samples), [bucket] if samples else []
    return samples, skips


def _control_for(item: MediaItem, entry: DatasetEntry, memo: dict) -> Path | None:
    """The item's control file (JSONL column, else control_path), checked readable; None without one."""
    control = item.control or _companion_file(item.path, entry.control_path)
    if control is None:
        if entry.control_path is not None:
            raise UserError(f"no control file for it in {entry.control_path}")
        return None
    try:
        _probe_once(control, memo)
    except UserError as exc:
        raise UserError(f"control {exc}") from None
    return control


def _mask_for(item: MediaItem, entry: DatasetEntry, memo: dict) -> Path | None:
    """The item's loss mask in the dataset's mask_path, checked readable; None when the dataset has none."""
    if entry.mask_path is None:
        return None
    mask = _companion_file(item.path, entry.mask_path)
    if mask is None:
        raise UserError(f"no mask file for it in {entry.mask_path} (same base name, image or video)")
    try:
        _probe_once(mask, memo)
    except UserError as exc:
        raise UserError(f"mask {exc}") from None
    return mask


def _fit_mask(windows: list, skips: list, mask: Path, memo: dict, path: Path) -> tuple[list, list]:
    """The windows a video mask covers (an image mask covers any); each other one becomes a Skipped."""
    info = memo[mask]
    if info.kind == "image":
        return windows, skips
    kept = [w for w in windows if max(w) < info.num_frames]
    skips = skips + [Skipped(path, f"mask {mask} has {info.num_frames} frames; the {len(w)}-frame window needs "
                                   f"{max(w) + 1}; make the mask as long as the clip")
                     for w in windows if w not in kept]
    return kept, skips


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _windows(info: MediaInfo, entry: DatasetEntry, model_fps: int) -> tuple[list[tuple[int, ...]], list[Skipped]]:
    if info.kind == "image":
        return [(0,)], []
    if info.timestamps:
        timeline = resample_times(info.timestamps, model_fps)
    else:
        timeline = resample_timeline(info.num_frames, info.fps, model_fps)
    spans = frame_windows(len(timeline), entry.frame_extraction, entry.target_frames, entry.frame_stride,
                          entry.frame_sample, entry.max_frames)
    short = too_short_targets(len(timeline), entry.frame_extraction, entry.target_frames)
    where = f"{len(timeline)} frames at {model_fps} fps (source: {info.num_frames} at {info.fps:g} fps)"
    if not spans:
        return [], [Skipped(info.path, f"clip too short: {where}; shortest target_frames is {min(short)}")]
    skips = [Skipped(info.path, f"clip too short for {n}-frame windows: {where}") for n in short]
    return [tuple(timeline[start:start + n]) for start, n in spans], skips


def _bucket_for(info: MediaInfo, entry: DatasetEntry, multiple: int) -> tuple[int, int]:
    size = (info.width, info.height)
    if min(size) < multiple:
        raise UserError(f"{size[0]}x{size[1]} is too small: a side is under the {multiple} px pixel multiple")
    if not entry.enable_bucket:
        buckets, generated = [bucketing.fixed_bucket(entry.resolution, multiple)], False
    elif entry.buckets:
        buckets, generated = [tuple(b) for b in entry.buckets], False
    else:
        buckets = bucketing.generate_buckets(entry.resolution, multiple, entry.min_bucket_side,
                                             entry.max_bucket_side)
        generated = True
    area = entry.resolution[0] * entry.resolution[1] if generated else None
    bucket = bucketing.assign_bucket(size, buckets, multiple, entry.bucket_no_upscale, area, generated)
    if bucket is None:
        smallest = min(buckets, key=lambda b: b[0] * b[1])
        raise UserError(f"{size[0]}x{size[1]} fits no bucket without upscaling (smallest {smallest[0]}x"
                        f"{smallest[1]}; bucket_no_upscale = true)")
    return bucket


def _control_frames(entry: DatasetEntry, variant, num_frames: int) -> tuple[int, ...]:
    mode = entry.control
    if mode == "auto":
        mode = {"i2v": "first", "ti2v": "first", "flf2v": "first_last"}.get(variant.model_type, "none")
    if mode == "first":
        return (0,)
    if mode == "first_last":
        return (0,) if num_frames == 1 else (0, num_frames - 1)
    return ()


def _companion_file(media: Path, root: Path | None) -> Path | None:
    """The file in `root` with `media`'s base name (any image or video extension), `root` itself when it is a
    file, or None."""
    if root is None:
        return None
    if root.is_file():
        return root
    from wantune.data.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    for ext in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
        candidate = root / (media.stem + ext)
        if candidate.is_file():
            return candidate
    return None


def source_identity(path: Path, chunk: int = 1 << 20) -> str:
    """Identity of a file's bytes: its size and a hash of its first and last MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(chunk))
        if size > chunk:
            handle.seek(max(chunk, size - chunk))
            digest.update(handle.read(chunk))
    return digest.hexdigest()[:24]


def _sample_id(identity: str, frame_indices: tuple[int, ...], bucket: tuple[int, int], control: str) -> str:
    key = json.dumps({"source": identity, "frames": list(frame_indices), "bucket": list(bucket),
                      "control": control}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def samples_per_epoch(samples: list[Sample]) -> int:
    """Number of items an epoch draws (each sample counted `repeats` times)."""
    return sum(s.repeats for s in samples)


def require_samples(samples: list[Sample], skipped: list[Skipped]) -> None:
    """UserError when a config yields nothing to train on, naming the first reason."""
    if not samples:
        first = f"; first skip: {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise UserError(f"datasets: no usable samples{first}; run `wantune dataset check` for the full report")


# -------------------------------------------------------------------------------------------- pixels

def _to_unit_range(frames_FHWC, bucket):
    pixels_FCHW = bucketing.resize_crop(frames_FHWC, bucket)
    return (pixels_FCHW / 127.5 - 1.0).permute(1, 0, 2, 3).contiguous()


def load_sample_pixels(sample: Sample):
    """The sample's frames decoded, resized and center-cropped: tensor (C, F, H, W) float32 in [-1, 1]."""
    import numpy as np

    if sample.kind == "image":
        frames_FHWC = read_image(sample.path)[None]
    else:
        frames_FHWC = read_frames(sample.path, sample.frame_indices, seek=not sample.variable_rate)
    if frames_FHWC.shape[2] != sample.source_size[0] or frames_FHWC.shape[1] != sample.source_size[1]:
        raise UserError(f"{sample.path}: frame size changed since the scan; run `wantune dataset check` again")
    return _to_unit_range(np.asarray(frames_FHWC), sample.bucket)


def load_control_pixels(sample: Sample):
    """Conditioning frames (C, K, H, W) in [-1, 1]: the control file, or the window frames at
    `control_frames`; None for a sample without conditioning."""
    from wantune.data.video import media_kind

    if sample.control_path is not None:
        if media_kind(sample.control_path) == "image":
            frames_FHWC = read_image(sample.control_path)[None]
        else:
            frames_FHWC = read_frames(sample.control_path, sample.frame_indices)
        return _to_unit_range(frames_FHWC, sample.bucket)
    if not sample.control_frames:
        return None
    if sample.kind == "image":
        return _to_unit_range(read_image(sample.path)[None], sample.bucket)
    indices = [sample.frame_indices[p] for p in sample.control_frames]
    return _to_unit_range(read_frames(sample.path, indices, seek=not sample.variable_rate), sample.bucket)
