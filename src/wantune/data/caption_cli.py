"""`wantune caption DIR`: write `.txt` captions with a vision-language model (see wantune.data.caption)."""

from __future__ import annotations

import argparse
import sys

from wantune.errors import UserError


def register(subparsers) -> None:
    """Add the top-level `caption` command."""
    p = subparsers.add_parser(
        "caption", help="write .txt captions for images/videos with a vision-language model",
        description="Caption every image and video under DIR through an OpenAI-compatible server "
                    "(vLLM, Ollama...) or a local transformers model folder. Files that already have a "
                    "caption are skipped unless --overwrite.")
    p.add_argument("dir", help="folder of images/videos (searched recursively; captions/ folders ignored)")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model name the server knows (with --endpoint)")
    p.add_argument("--local-model", help="local transformers vision-language model folder (instead of --endpoint)")
    p.add_argument("--api-key-env", help="environment variable holding the API key (sent as a Bearer token)")
    p.add_argument("--prefix", default="", help="fixed text before each caption, e.g. 'Studio Ghibli style. '")
    p.add_argument("--trigger", help="trigger word filled into {trigger} (default: keep the [trigger] placeholder)")
    p.add_argument("--template", help="caption layout with {prefix} {trigger} {caption} "
                                      "(default '{prefix}{caption}', or '{prefix}{trigger}, {caption}' with --trigger)")
    p.add_argument("--instruction", help="text sent to the model instead of the built-in instruction")
    p.add_argument("--overwrite", action="store_true", help="replace existing captions")
    p.add_argument("--frames", type=int, default=4, help="evenly spaced frames sent per video (4)")
    p.add_argument("--max-side", type=int, default=768, help="downscale images to this longest side (768)")
    p.add_argument("--max-tokens", type=int, default=300, help="longest answer in tokens (300)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (120)")
    p.add_argument("--retries", type=int, default=3, help="retries on server errors/unreachable (3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_caption)


def make_captioner(args: argparse.Namespace):
    """The back end the flags ask for."""
    from wantune.data.caption import HttpCaptioner, LocalCaptioner

    if bool(args.endpoint) == bool(args.local_model):
        raise UserError("caption: give either --endpoint URL --model NAME or --local-model PATH")
    if args.local_model:
        return LocalCaptioner(args.local_model, max_tokens=args.max_tokens)
    if not args.model:
        raise UserError("--endpoint: needs --model NAME (the model the server serves)")
    return HttpCaptioner(args.endpoint, args.model, api_key_env=args.api_key_env, max_tokens=args.max_tokens,
                         timeout=args.timeout, retries=max(0, args.retries))


def run_caption(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wantune.data.caption import CaptionOptions, caption_folder

    options = CaptionOptions(prefix=args.prefix, trigger=args.trigger, template=args.template,
                             instruction=args.instruction, overwrite=args.overwrite, frames=args.frames,
                             max_side=args.max_side)
    options.validate()
    if not Path(args.dir).is_dir():
        raise UserError(f"{args.dir}: folder not found")
    summary = caption_folder(Path(args.dir), make_captioner(args), options, progress=not args.no_progress)
    print(f"captioned {len(summary['written'])}, skipped {len(summary['skipped'])} already captioned, "
          f"failed {len(summary['failed'])}")
    for reason in summary["failed"].values():
        print(f"skipped: {reason}", file=sys.stderr)
    return 1 if summary["failed"] else 0
