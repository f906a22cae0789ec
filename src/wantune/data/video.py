"""Media I/O: probe, decode and write videos (PyAV) and read images (Pillow).

Frames are numpy arrays `frames_FHWC` of uint8 RGB. Frame index i of a video is the i-th decoded frame
(presentation order). Every unreadable file raises `UserError("<path>: why")`; callers that enumerate a
dataset turn those into skip reasons.

Image pixel formats: RGB is used as is; grayscale, palette and 1-bit are expanded to RGB; CMYK is converted
to RGB; 16-bit (I;16*) and 32-bit integer images are scaled down to 8 bits; images with alpha (RGBA, LA,
palette transparency) are composited over white. 32-bit float images ("F") and unknown modes are refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from wantune.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")


def media_kind(path: Path) -> str | None:
    """'image', 'video' or None from the file extension."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


@dataclass(frozen=True)
class MediaInfo:
    """What a file holds, read without decoding every frame."""

    path: Path
    """The file."""
    kind: str
    """'image' or 'video'."""
    width: int
    """Width in pixels."""
    height: int
    """Height in pixels."""
    num_frames: int
    """Decodable frames (1 for an image)."""
    fps: float
    """Frames per second from the stream (0.0 for an image)."""
    pixel_format: str
    """Pillow mode of an image or FFmpeg pix_fmt of a video."""
    codec: str = ""
    """Video codec name ('' for an image)."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Conversions applied when reading (e.g. 'CMYK converted to RGB')."""
    timestamps: tuple[float, ...] | None = None
    """Frame times in seconds from the first frame, only for a variable frame rate (else i / fps)."""

    @property
    def duration(self) -> float:
        """Seconds covered by the frames (0.0 for an image)."""
        return self.num_frames / self.fps if self.fps else 0.0


def probe(path: str | Path) -> MediaInfo:
    """Size, frame count, fps and pixel format of an image or video; UserError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    kind = media_kind(path)
    if kind == "image":
        image = read_image(path)
        return MediaInfo(path, "image", image.shape[1], image.shape[0], 1, 0.0,
                         _image_mode(path), notes=image_notes(path))
    if kind == "video":
        return _probe_video(path)
    raise UserError(f"{path}: not an image or video extension ({', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})")


def _probe_video(path: Path) -> MediaInfo:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            times = _frame_times(container, stream)
            num_frames = stream.frames or len(times)
            first = next(container.decode(stream), None)
            if first is None:
                raise UserError(f"{path}: no decodable video frame")
            pix_fmt = first.format.name
            first.to_ndarray(format="rgb24")
            info = MediaInfo(path, "video", first.width, first.height, int(num_frames),
                             float(rate) if rate else 0.0, pix_fmt, stream.codec_context.name,
                             notes=_video_notes(pix_fmt))
    except UserError:
        raise
    except (av.error.FFmpegError, ValueError, StopIteration, OSError) as exc:
        raise UserError(f"{path}: unreadable video ({_short(exc)})") from None
    if info.num_frames <= 0:
        raise UserError(f"{path}: no video frames")
    info = _variable_rate(info, times)
    if info.fps <= 0:
        raise UserError(f"{path}: the stream has no frame rate; set source_fps in the dataset")
    return info


def _frame_times(container, stream) -> list[float | None]:
    """Presentation times (s, from the first frame) of every packet, by demuxing without decoding."""
    stamps = [packet.pts for packet in container.demux(stream) if packet.size]
    container.seek(0)
    if not stamps or any(t is None for t in stamps):
        return [None] * len(stamps)
    stamps.sort()
    return [float((t - stamps[0]) * stream.time_base) for t in stamps]


def _variable_rate(info: MediaInfo, times: list[float | None]) -> MediaInfo:
    """`info` with timestamps (and the mean fps) when the frame times are not i / fps."""
    if len(times) != info.num_frames or len(times) < 2 or times[0] is None or times[-1] <= 0:
        return info
    fps = info.fps
    if fps > 0 and all(abs(t - i / fps) <= 0.25 / fps for i, t in enumerate(times)):
        return info
    mean_fps = (len(times) - 1) / times[-1]
    return dataclasses.replace(info, fps=mean_fps, timestamps=tuple(times),
                               notes=(*info.notes, f"variable frame rate (mean {mean_fps:.3g} fps): "
                                                   f"frames picked by timestamp"))


def _video_notes(pix_fmt: str) -> tuple[str, ...]:
    if pix_fmt.startswith(("yuva", "rgba", "bgra", "argb", "abgr", "gbrap")):
        return (f"{pix_fmt} video: alpha dropped",)
    if any(tag in pix_fmt for tag in ("10", "12", "16")):
        return (f"{pix_fmt} video: converted to 8-bit RGB",)
    return ()


SEEK_AFTER = 48
"""read_frames seeks (to the keyframe before the first wanted frame) only when that frame is at least this far in."""


def read_frames(path: str | Path, indices: list[int] | tuple[int, ...] | None = None,
                seek: bool = True) -> np.ndarray:
    """Decoded RGB frames `frames_FHWC` uint8 at the given frame indices (repeats allowed), or all.
    seek=False decodes from the start (needed for variable-frame-rate files)."""
    import av

    path = Path(path)
    wanted = None if indices is None else set(indices)
    found: dict[int, np.ndarray] = {}
    try:
        if seek and wanted and min(wanted) >= SEEK_AFTER:
            found = _read_after_seek(path, wanted)
        if wanted is None or not found:
            found = _read_sequential(path, wanted)
    except (av.error.FFmpegError, ValueError, IndexError, OSError) as exc:
        raise UserError(f"{path}: unreadable video ({_short(exc)})") from None
    if wanted is None:
        if not found:
            raise UserError(f"{path}: no decodable video frame")
        return np.stack([found[i] for i in sorted(found)])
    missing = sorted(wanted - found.keys())
    if missing:
        raise UserError(f"{path}: frame {missing[0]} cannot be decoded ({len(wanted) - len(missing)} of the "
                        f"requested {len(wanted)} frames decoded); the file is truncated or its frame count is wrong")
    return np.stack([found[i] for i in indices])


def _read_sequential(path: Path, wanted: set[int] | None) -> dict[int, np.ndarray]:
    import av

    found = {}
    last = max(wanted) if wanted else None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if wanted is None or i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")
            if last is not None and i >= last:
                break
    return found


def _read_after_seek(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """Frames after seeking near the first wanted one, indexed from the first frame's timestamp; {} when the
    timestamps do not give whole frame indices (variable frame rate) so the caller decodes from the start."""
    import av

    first, last = min(wanted), max(wanted)
    found = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate, base, start = stream.average_rate, stream.time_base, stream.start_time or 0
        if not rate or not base:
            return {}
        container.seek(start + int((first - 1) / rate / base), stream=stream, backward=True)
        index = None
        for frame in container.decode(stream):
            if index is None:
                if frame.pts is None:
                    return {}
                position = float((frame.pts - start) * base * rate)
                if abs(position - round(position)) > 0.1 or round(position) > first:
                    return {}
                index = round(position)
            if index in wanted:
                found[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
            index += 1
    return found


def write_video(path: str | Path, frames_FHWC: np.ndarray, fps: float, metadata: dict | None = None,
                codec: str = "libx264", crf: int = 18) -> Path:
    """Encode uint8 RGB frames to a video file with container metadata (strings); returns the path."""
    import av

    path = Path(path)
    frames_FHWC = np.asarray(frames_FHWC)
    if frames_FHWC.ndim != 4 or frames_FHWC.shape[-1] != 3 or frames_FHWC.dtype != np.uint8:
        raise UserError(f"{path}: write_video needs uint8 frames (F, H, W, 3), got "
                        f"{frames_FHWC.dtype} {tuple(frames_FHWC.shape)}")
    height, width = frames_FHWC.shape[1:3]
    if codec != "ffv1" and (height % 2 or width % 2):
        raise UserError(f"{path}: {width}x{height} frames cannot be encoded as {codec} (yuv420p needs even "
                        f"sizes); crop to {width // 2 * 2}x{height // 2 * 2} or use codec='ffv1'")
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        for key, value in (metadata or {}).items():
            container.metadata[str(key)] = str(value)
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if codec != "ffv1" else "yuv444p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        elif codec == "mpeg4":
            stream.options = {"qscale": "2"}
            stream.codec_context.qmin, stream.codec_context.qmax = 1, 3
        for frame_HWC in frames_FHWC:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HWC), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """Container metadata of a video (what `write_video` stored)."""
    import av

    with av.open(str(path)) as container:
        return dict(container.metadata)


# ----------------------------------------------------------------------------------------------- images

def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({_short(exc)})") from None
    return image


def _image_mode(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return image.mode


def image_notes(path: Path) -> tuple[str, ...]:
    """The conversions `read_image` applies to this file, in words."""
    mode = _image_mode(path)
    notes = {
        "CMYK": "CMYK converted to RGB", "I;16": "16-bit converted to 8-bit", "I;16B": "16-bit converted to 8-bit",
        "I;16L": "16-bit converted to 8-bit", "I": "32-bit integer converted to 8-bit",
        "RGBA": "alpha composited over white", "LA": "alpha composited over white",
        "PA": "alpha composited over white", "RGBa": "alpha composited over white",
    }
    return (notes[mode],) if mode in notes else ()


def read_image(path: str | Path) -> np.ndarray:
    """An image as `HWC` uint8 RGB after the conversions listed in the module docstring."""
    from PIL import Image, ImageOps

    path = Path(path)
    image = _open_image(path)
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError):
        pass
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
        gray = np.clip(np.round(array / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise UserError(f"{path}: 32-bit float image (mode F) is not supported; save it as 8-bit or 16-bit PNG")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    try:
        rgb = image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: unsupported pixel format {mode} ({_short(exc)})") from None
    return np.asarray(rgb, dtype=np.uint8).copy()


def _short(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def replace(info: MediaInfo, **changes) -> MediaInfo:
    """A copy of `info` with fields changed (e.g. fps from a source_fps override)."""
    return dataclasses.replace(info, **changes)
