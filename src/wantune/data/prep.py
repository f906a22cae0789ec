"""`wantune dataset prep`: raw videos -> training clips in the standard `videos/` + `captions/` layout.

Two decoding passes per source. Pass 1 decodes every frame small (plus full-resolution row/column means for
letterbox bars) to find scene cuts, still heads/tails, camera shake and lighting changes, and plans clips
(scene pieces of at most `max_seconds`, resampled to `fps` by timestamp). Pass 2 decodes again, resizes
(cover + center crop) the frames each clip needs, encodes it to a temporary file, measures blur and the
dHash of its keyframes, then renames it into place or drops it if flagged. Every file is written atomically.

Legend: F = source frames, H/W = height/width (analysis size unless `full`), C = 3 colour channels.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wantune.data import quality, scenes
from wantune.data.quality import Thresholds
from wantune.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
                    ".ts", ".gif")
ANALYSIS_SIDE = 160
BLUR_SAMPLES = 8


@dataclass
class PrepOptions:
    """What `prep` makes of each source video."""

    fps: float = 16.0
    """Output frame rate (16 for Wan 2.1 / A14B, 24 for TI2V-5B)."""
    width: int | None = None
    """Output width; None keeps the source size (center-cropped to a multiple of 16)."""
    height: int | None = None
    """Output height; set together with width."""
    min_frames: int = 17
    """Clips with fewer output frames are flagged too_short."""
    max_seconds: float = 10.0
    """Longer scenes are split into clips of at most this many seconds (0: no limit)."""
    keep_flagged: bool = False
    """Write flagged clips too (they stay listed in the report)."""
    crop_bars: bool = False
    """Crop letterbox bars off instead of flagging the clip."""
    thresholds: Thresholds = field(default_factory=Thresholds)
    """Limits of the quality checks."""

    def validate(self) -> None:
        if self.fps <= 0:
            raise UserError(f"--fps {self.fps}: must be positive")
        if (self.width is None) != (self.height is None):
            raise UserError("--width/--height: give both, or --resolution WxH")
        if self.width is not None and (self.width < 2 or self.height < 2 or self.width % 2 or self.height % 2):
            raise UserError(f"--resolution {self.width}x{self.height}: width and height must be even and "
                            f"positive (multiples of 16 suit the Wan VAE)")
        if self.min_frames < 1:
            raise UserError(f"--min-frames {self.min_frames}: must be at least 1")
        if self.max_seconds < 0:
            raise UserError(f"--max-seconds {self.max_seconds}: must be 0 (no limit) or positive")


@dataclass
class Analysis:
    """Pass-1 view of one source video."""

    width: int
    """Source width in pixels."""
    height: int
    """Source height in pixels."""
    source_fps: float
    """Frame rate from the stream (or the timestamps)."""
    frame_duration: float
    """Seconds each source frame is shown."""
    times_F: np.ndarray
    """Presentation time of each frame in seconds, from the first frame."""
    gray_FHW: np.ndarray
    """Small grey frames (uint8) for motion, shake and lighting."""
    distances_F: np.ndarray
    """Colour-histogram distance to the previous frame (0 for frame 0)."""
    rows_FH: np.ndarray
    """Full-resolution mean luminance of each row, per frame (uint8)."""
    cols_FW: np.ndarray
    """Full-resolution mean luminance of each column, per frame (uint8)."""


@dataclass
class Clip:
    """One planned output clip, its measures and its fate."""

    name: str
    """Output base name `<source stem>_<k>`."""
    source: str
    """Source video path."""
    start: int
    """First source frame."""
    end: int
    """Source frame after the last one."""
    start_s: float
    """Start time in the source (seconds)."""
    end_s: float
    """End time in the source (seconds)."""
    indices: list[int]
    """Source frame of each output frame."""
    box: tuple[float, float, float, float]
    """Source region (left, top, right, bottom) resized to the output size."""
    size: tuple[int, int]
    """Output (width, height)."""
    bars: tuple[int, int, int, int]
    """Black bars found (top, bottom, left, right) in source pixels."""
    metrics: dict = field(default_factory=dict)
    """Measured values (shake, lighting, blur, dhash...)."""
    flags: list[dict] = field(default_factory=list)
    """Failed checks: {'reason', 'detail'}."""
    written: bool = False
    """The clip file exists in DST/videos."""
    caption: str | None = None
    """Caption file written beside it, if the source had one."""

    def flag(self, reason: str, detail: str) -> None:
        self.flags.append({"reason": reason, "detail": detail})


def find_videos(src: Path) -> list[Path]:
    """Video files directly in SRC and in SRC/videos, sorted."""
    folders = [src] + ([src / "videos"] if (src / "videos").is_dir() else [])
    found = [p for d in folders for p in sorted(d.iterdir())
             if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")]
    return found


def find_caption(video: Path) -> str | None:
    """Caption text beside the video, in a sibling captions/ folder, or in ../captions for videos/."""
    candidates = [video.with_suffix(".txt"), video.parent / "captions" / f"{video.stem}.txt"]
    if video.parent.name in ("videos", "images"):
        candidates.append(video.parent.parent / "captions" / f"{video.stem}.txt")
    for path in candidates:
        if path.is_file():
            try:
                text = path.read_bytes().decode("utf-8-sig").strip()
            except UnicodeDecodeError:
                raise UserError(f"{path}: caption is not UTF-8 text; re-save it as UTF-8") from None
            if text:
                return text
    return None


def analyse(path: Path) -> Analysis:
    """Pass 1: decode every frame small; UserError naming the file if it cannot be read."""
    import av

    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    times, grays, hists, rows, cols = [], [], [], [], []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 0) or None
            size = None
            for frame in container.decode(stream):
                if size is None:
                    size, first = _analysis_size(frame.width, frame.height), (frame.width, frame.height)
                elif (frame.width, frame.height) != first:
                    raise UserError(f"{path}: frame size changes from {first[0]}x{first[1]} to {frame.width}x"
                                    f"{frame.height} at frame {len(times)}; re-encode it at one size")
                full = frame.to_ndarray(format="gray")
                rows.append(np.round(full.mean(axis=1)).astype(np.uint8))
                cols.append(np.round(full.mean(axis=0)).astype(np.uint8))
                rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                grays.append(_to_gray(rgb))
                hists.append(scenes.colour_histogram(rgb))
                times.append(frame.time)
            width, height = first if size else (0, 0)
    except UserError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, IndexError) as exc:
        done = f" after {len(times)} frames" if times else ""
        raise UserError(f"{path}: unreadable video{done} ({_short(exc)})") from None
    if not times:
        raise UserError(f"{path}: no decodable video frames")
    times_F, frame_duration = _timeline(times, rate)
    distances_F = np.zeros(len(hists), dtype=np.float32)
    for i in range(1, len(hists)):
        distances_F[i] = scenes.histogram_distance(hists[i - 1], hists[i])
    return Analysis(width, height, 1.0 / frame_duration, frame_duration, times_F, np.stack(grays),
                    distances_F, np.stack(rows), np.stack(cols))


def _timeline(times: list, rate: float | None) -> tuple[np.ndarray, float]:
    """Frame times from 0 and the frame duration; falls back to the stream rate for missing timestamps."""
    fallback = 1.0 / rate if rate else 1.0 / 25.0
    if any(t is None for t in times):
        return np.arange(len(times)) * fallback, fallback
    times_F = np.asarray(times, dtype=np.float64) - float(times[0])
    steps = np.diff(times_F)
    if len(steps) and np.any(steps <= 0):
        return np.arange(len(times)) * fallback, fallback
    return times_F, float(np.median(steps)) if len(steps) else fallback


def _analysis_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, ANALYSIS_SIDE / max(width, height))
    return max(8, round(width * scale)), max(8, round(height * scale))


def _to_gray(rgb_HWC: np.ndarray) -> np.ndarray:
    gray = rgb_HWC.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.round(gray), 0, 255).astype(np.uint8)


def plan_clips(path: Path, analysis: Analysis, options: PrepOptions) -> tuple[list[int], list[Clip]]:
    """Scene cuts and the clips cut from them, with every check that needs no encoding applied."""
    th = options.thresholds
    energy_F = scenes.motion_energy(analysis.gray_FHW)
    cuts = scenes.find_cuts(analysis.distances_F, th.cut, energy_F)
    ranges: list[tuple[tuple[int, int], bool]] = []
    for start, end in scenes.scenes_from_cuts(len(analysis.times_F), cuts):
        trimmed = scenes.trim_static(energy_F, start, end, th.static)
        if trimmed is None:
            ranges.append(((start, end), True))
            continue
        ranges += [(r, False) for r in scenes.split_long(analysis.times_F, *trimmed, analysis.frame_duration,
                                                         options.max_seconds)]
    clips = [_make_clip(path, k, a, b, still, analysis, options) for k, ((a, b), still) in enumerate(ranges)]
    return cuts, clips


def _make_clip(path: Path, k: int, start: int, end: int, still: bool, an: Analysis,
               options: PrepOptions) -> Clip:
    th = options.thresholds
    bars = quality.letterbox_bars(an.rows_FH[start:end].astype(np.float32),
                                  an.cols_FW[start:end].astype(np.float32), th.black)
    top, bottom, left, right = bars if options.crop_bars else (0, 0, 0, 0)
    region = (left, top, an.width - right, an.height - bottom)
    size = _output_size(region, options)
    indices = scenes.resample_indices(an.times_F, start, end, an.frame_duration, options.fps)
    clip = Clip(f"{path.stem}_{k}", str(path), start, end, round(float(an.times_F[start]), 4),
                round(float(an.times_F[end - 1] + an.frame_duration), 4), indices,
                _cover_box(region, size), size, bars)
    gray = an.gray_FHW[start:end]
    window = max(3, round(0.3 * an.source_fps) | 1)
    clip.metrics["shake"] = round(quality.shake_jitter(gray, window), 3)
    clip.metrics["lighting"] = round(quality.luminance_range(gray), 2)
    if still:
        clip.flag("static", f"no frame changes by {th.static} or more (mean abs luminance)")
    if len(indices) < options.min_frames:
        clip.flag("too_short", f"{len(indices)} frames at {options.fps:g} fps < --min-frames {options.min_frames}")
    shortest = min(region[2] - region[0], region[3] - region[1])
    if shortest < th.min_size:
        clip.flag("tiny", f"{region[2] - region[0]}x{region[3] - region[1]} frames, shortest side "
                          f"{shortest} < {th.min_size}")
    if any(bars) and not options.crop_bars:
        clip.flag("letterboxed", "black bars top/bottom/left/right = {}/{}/{}/{} px; use --crop-bars "
                                 "to crop them off".format(*bars))
    if clip.metrics["shake"] > th.shake:
        clip.flag("shake", f"camera path jitter {clip.metrics['shake']:.2f}% of width > {th.shake}")
    if clip.metrics["lighting"] > th.lighting:
        clip.flag("lighting", f"mean luminance range {clip.metrics['lighting']:.1f} > {th.lighting}")
    return clip


def _output_size(region: tuple[int, int, int, int], options: PrepOptions) -> tuple[int, int]:
    if options.width is not None:
        return options.width, options.height
    w, h = region[2] - region[0], region[3] - region[1]
    return max(16, w // 16 * 16), max(16, h // 16 * 16)


def _cover_box(region: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centered part of `region` with the output's aspect ratio (resize to cover, then crop)."""
    left, top, right, bottom = region
    w, h = right - left, bottom - top
    aspect = size[0] / size[1]
    if w / h > aspect:
        cw = h * aspect
        return (left + (w - cw) / 2, float(top), left + (w + cw) / 2, float(bottom))
    ch = w / aspect
    return (float(left), top + (h - ch) / 2, float(right), top + (h + ch) / 2)


def encode_clips(path: Path, clips: list[Clip], options: PrepOptions, videos_dir: Path) -> dict[str, Path]:
    """Pass 2: decode again and encode each clip to a temporary file; name -> temporary path."""
    import av

    from wantune.data.video import write_video

    todo = sorted(clips, key=lambda c: c.start)
    pending: dict[int, list[tuple[Clip, int]]] = {}
    for clip in todo:
        for j, i in enumerate(clip.indices):
            pending.setdefault(i, []).append((clip, j))
    buffers = {c.name: [None] * len(c.indices) for c in todo}
    temps: dict[str, Path] = {}
    last = max(pending) if pending else -1
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i > last:
                    break
                if i not in pending:
                    continue
                image = frame.to_image()
                for clip, j in pending.pop(i):
                    buffers[clip.name][j] = _resize(image, clip)
                    if j == len(clip.indices) - 1:
                        temps[clip.name] = _finish(clip, buffers.pop(clip.name), options, videos_dir,
                                                   write_video)
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        raise UserError(f"{path}: decoding failed in pass 2 ({_short(exc)})") from None
    return temps


def _resize(image, clip: Clip) -> np.ndarray:
    from PIL import Image

    return np.asarray(image.resize(clip.size, Image.BICUBIC, box=clip.box), dtype=np.uint8)


def _finish(clip: Clip, frames: list[np.ndarray], options: PrepOptions, videos_dir: Path, write_video) -> Path:
    """Encode to a temporary file and measure blur and keyframe hashes on the output frames."""
    frames_FHWC = np.stack(frames)
    n = len(frames_FHWC)
    picks = sorted(set(np.linspace(0, n - 1, min(n, BLUR_SAMPLES)).round().astype(int).tolist()))
    clip.metrics["blur"] = round(float(np.median([quality.laplacian_variance(_to_gray(frames_FHWC[i]))
                                                   for i in picks])), 2)
    clip.metrics["dhash"] = [f"{quality.dhash(_to_gray(frames_FHWC[i])):016x}" for i in (0, n // 2, n - 1)]
    temp = videos_dir / f".{clip.name}.partial.mp4"
    write_video(temp, frames_FHWC, options.fps,
                metadata={"comment": f"wantune prep of {Path(clip.source).name} frames {clip.start}-{clip.end}"})
    return temp


def check_encoded(clip: Clip, kept: list[Clip], th: Thresholds) -> None:
    """Blur and near-duplicate checks, which need the encoded output frames."""
    if clip.metrics["blur"] < th.blur:
        clip.flag("blur", f"variance of Laplacian {clip.metrics['blur']:.1f} < {th.blur}")
    mine = [int(h, 16) for h in clip.metrics["dhash"]]
    for other in kept:
        theirs = [int(h, 16) for h in other.metrics["dhash"]]
        distance = max(quality.hamming(a, b) for a, b in zip(mine, theirs))
        if distance <= th.duplicate:
            clip.flag("duplicate", f"near-duplicate of {other.name} (dHash distance {distance} <= {th.duplicate})")
            return


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary name and a rename."""
    temp = path.with_name(f".{path.name}.partial")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def clip_record(clip: Clip) -> dict:
    """The clip as a JSON-friendly dict (without the per-frame index list)."""
    record = asdict(clip)
    record["frames"] = len(record.pop("indices"))
    record["box"] = [round(v, 2) for v in clip.box]
    record["size"], record["bars"] = list(clip.size), list(clip.bars)
    return record


def _short(exc: BaseException) -> str:
    """One line for an exception; FFmpeg errors without the errno and repeated path."""
    text = getattr(exc, "strerror", None) or str(exc)
    return (" ".join(str(text).split()) or type(exc).__name__)[:200]


def prep(src: Path, dst: Path, options: PrepOptions, progress: bool = True) -> dict:
    """Prepare every video of SRC into DST; returns the report (also written to DST/prep_report.json)."""
    import json

    from tqdm import tqdm

    options.validate()
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"{src}: source folder not found")
    if dst.resolve() == src.resolve():
        raise UserError(f"{dst}: DST must differ from SRC")
    videos = find_videos(src)
    if not videos:
        raise UserError(f"{src}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in it or in {src / 'videos'}")
    videos_dir, captions_dir = dst / "videos", dst / "captions"
    videos_dir.mkdir(parents=True, exist_ok=True)
    captions_dir.mkdir(parents=True, exist_ok=True)
    report = {"src": str(src), "dst": str(dst), "options": asdict(options), "videos": [], "clips": []}
    kept: list[Clip] = []
    for path in tqdm(videos, desc="prep", unit="video", disable=not progress):
        entry = {"path": str(path)}
        report["videos"].append(entry)
        try:
            clips = _prep_one(path, options, videos_dir, captions_dir, kept, entry)
        except UserError as exc:
            entry["error"] = str(exc)
            continue
        report["clips"] += [clip_record(c) for c in clips]
    report["summary"] = _summary(report)
    atomic_write_text(dst / "prep_report.json", json.dumps(report, indent=2))
    return report


def _prep_one(path: Path, options: PrepOptions, videos_dir: Path, captions_dir: Path, kept: list[Clip],
              entry: dict) -> list[Clip]:
    caption = find_caption(path)
    analysis = analyse(path)
    cuts, clips = plan_clips(path, analysis, options)
    entry.update(frames=len(analysis.times_F), fps=round(analysis.source_fps, 3), width=analysis.width,
                 height=analysis.height, duration=round(float(analysis.times_F[-1] + analysis.frame_duration), 3),
                 cuts=cuts, caption=caption is not None)
    wanted = [c for c in clips if c.indices and (options.keep_flagged or not c.flags)]
    temps = encode_clips(path, wanted, options, videos_dir) if wanted else {}
    for clip in wanted:
        temp = temps.get(clip.name)
        if temp is None:
            clip.flag("error", "frames missing in pass 2 (the file changed or decodes differently)")
            continue
        check_encoded(clip, kept, options.thresholds)
        if clip.flags and not options.keep_flagged:
            temp.unlink(missing_ok=True)
            continue
        os.replace(temp, videos_dir / f"{clip.name}.mp4")
        clip.written = True
        kept.append(clip)
        if caption is not None:
            atomic_write_text(captions_dir / f"{clip.name}.txt", caption + "\n")
            clip.caption = str(captions_dir / f"{clip.name}.txt")
    return clips


def _summary(report: dict) -> dict:
    clips = report["clips"]
    by_reason: dict[str, int] = {}
    for clip in clips:
        for flag in clip["flags"]:
            by_reason[flag["reason"]] = by_reason.get(flag["reason"], 0) + 1
    return {"videos": len(report["videos"]), "unreadable": sum("error" in v for v in report["videos"]),
            "clips": len(clips), "written": sum(c["written"] for c in clips),
            "flagged": sum(bool(c["flags"]) for c in clips), "by_reason": by_reason}


def format_report(report: dict) -> str:
    """The report as text: one line per source and per clip, flags with their reasons."""
    s = report["summary"]
    lines = [f"prep {report['src']} -> {report['dst']}: {s['videos']} videos ({s['unreadable']} unreadable), "
             f"{s['clips']} clips, {s['written']} written, {s['flagged']} flagged"]
    by_source: dict[str, list[dict]] = {}
    for clip in report["clips"]:
        by_source.setdefault(clip["source"], []).append(clip)
    for video in report["videos"]:
        if "error" in video:
            lines.append(f"ERROR {video['error']}")
            continue
        lines.append(f"{video['path']}: {video['frames']} frames, {video['fps']:g} fps, {video['width']}x"
                     f"{video['height']}, {video['duration']:g} s, cuts at frames {video['cuts'] or 'none'}"
                     f"{'' if video['caption'] else ', no caption'}")
        for clip in by_source.get(video["path"], []):
            state = "written" if clip["written"] else "skipped"
            lines.append(f"  {clip['name']}: frames {clip['start']}-{clip['end']} ({clip['start_s']:g}-"
                         f"{clip['end_s']:g} s) -> {clip['frames']} frames {clip['size'][0]}x{clip['size'][1]}, "
                         f"{state}")
            lines += [f"    {f['reason']}: {f['detail']}" for f in clip["flags"]]
    if s["by_reason"]:
        lines.append("flags: " + ", ".join(f"{k} {v}" for k, v in sorted(s["by_reason"].items())))
    return "\n".join(lines)
