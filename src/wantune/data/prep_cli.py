"""`wantune dataset prep SRC DST`: raw videos -> checked training clips (see wantune.data.prep)."""

from __future__ import annotations

import argparse

from wantune.errors import UserError


def register_prep(dataset_subparsers) -> None:
    """Add `prep` under the `wantune dataset` sub-command group."""
    p = dataset_subparsers.add_parser(
        "prep", help="cut raw videos into checked training clips (videos/ + captions/ layout)",
        description="Split raw videos at scene cuts, trim still heads and tails, resample to the model fps, "
                    "resize and center-crop, and write DST/videos, DST/captions and DST/prep_report.json.")
    p.add_argument("src", help="folder of raw videos (captions as <name>.txt beside them or in captions/)")
    p.add_argument("dst", help="output folder")
    p.add_argument("--fps", type=float, default=16.0, help="output frame rate (16; 24 for TI2V-5B)")
    p.add_argument("--width", type=int, help="output width (with --height)")
    p.add_argument("--height", type=int, help="output height (with --width)")
    p.add_argument("--resolution", help="output size WxH, e.g. 832x480 (default: source size)")
    p.add_argument("--min-frames", type=int, default=17, help="shortest clip in output frames (17)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="split longer scenes (10; 0 = no limit)")
    p.add_argument("--keep-flagged", action="store_true", help="write clips that fail a check too")
    p.add_argument("--crop-bars", action="store_true", help="crop letterbox bars off instead of flagging")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of text")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    t = p.add_argument_group("thresholds")
    t.add_argument("--cut-threshold", type=float, default=0.45, help="histogram distance of a scene cut (0..1)")
    t.add_argument("--static-threshold", type=float, default=1.0, help="mean abs luminance change of a still frame")
    t.add_argument("--blur-threshold", type=float, default=100.0, help="min variance of Laplacian")
    t.add_argument("--shake-threshold", type=float, default=1.0, help="max shift jitter, %% of width")
    t.add_argument("--lighting-threshold", type=float, default=40.0, help="max mean-luminance range (0..255)")
    t.add_argument("--duplicate-distance", type=int, default=6, help="max dHash distance of a near-duplicate")
    t.add_argument("--min-size", type=int, default=256, help="min shortest side in pixels")
    t.add_argument("--black-level", type=float, default=32.0, help="luminance below which borders are bars")
    p.set_defaults(func=run_prep)


def parse_resolution(text: str) -> tuple[int, int]:
    """'832x480' -> (832, 480)."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.strip().isdigit() or not h.strip().isdigit():
        raise UserError(f"--resolution {text!r}: expected WxH, e.g. 832x480")
    return int(w), int(h)


def options_from_args(args: argparse.Namespace):
    """PrepOptions from the parsed command line."""
    from wantune.data.prep import PrepOptions
    from wantune.data.quality import Thresholds

    width, height = args.width, args.height
    if args.resolution:
        if width is not None or height is not None:
            raise UserError("--resolution: give either --resolution or --width/--height")
        width, height = parse_resolution(args.resolution)
    thresholds = Thresholds(cut=args.cut_threshold, static=args.static_threshold, blur=args.blur_threshold,
                            shake=args.shake_threshold, lighting=args.lighting_threshold,
                            duplicate=args.duplicate_distance, min_size=args.min_size, black=args.black_level)
    return PrepOptions(fps=args.fps, width=width, height=height, min_frames=args.min_frames,
                       max_seconds=args.max_seconds, keep_flagged=args.keep_flagged, crop_bars=args.crop_bars,
                       thresholds=thresholds)


def run_prep(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from wantune.data.prep import format_report, prep

    report = prep(Path(args.src), Path(args.dst), options_from_args(args), progress=not args.no_progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["summary"]["unreadable"] else 0
