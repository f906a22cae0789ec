"""`wantune dataset check` (and, when their modules exist, `dataset prep` and `caption`)."""

from __future__ import annotations

import argparse
import importlib


def register(subparsers) -> None:
    """Add the `dataset` group (check, plus prep from wantune.data.prep_cli) and `caption`."""
    parser = subparsers.add_parser("dataset", help="inspect and prepare datasets")
    group = parser.add_subparsers(dest="dataset_command", metavar="COMMAND")
    check = group.add_parser(
        "check", help="report files, samples, buckets, skipped files and recommended settings",
        description="Scan a dataset config (or a bare folder / .jsonl) and report what training would use.")
    check.add_argument("source", metavar="CONFIG_OR_DIR", help="dataset or run TOML, a media folder or a .jsonl")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--variant", default=None, help="model variant (fps, pixel multiple); overrides the config")
    check.add_argument("--batch-size", type=int, default=1, help="batch size for the recommended step counts")
    check.add_argument("--strict", action="store_true", help="stop with an error at the first unusable file")
    check.set_defaults(func=run_check)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    _optional("wantune.data.prep_cli", "register_prep", group)
    _optional("wantune.data.caption_cli", "register", subparsers)


def _optional(module_name: str, function: str, subparsers) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return
    getattr(module, function)(subparsers)


def run_check(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from wantune.data.check import check_dataset, format_report
    from wantune.data.config import folder_config, load_dataset_config

    from wantune.errors import UserError

    source = Path(args.source)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if source.is_file() and source.suffix.lower() == ".toml":
        cfg = load_dataset_config(source, variant=args.variant)
    else:
        if not source.exists():
            raise UserError(f"{source}: not found; give a dataset TOML, a media folder or a .jsonl file")
        if source.is_file() and source.suffix.lower() != ".jsonl":
            raise UserError(f"{source}: not a dataset TOML, media folder or .jsonl file")
        cfg = folder_config(source, args.variant)
    report = check_dataset(cfg, batch_size=args.batch_size, strict=True if args.strict else None)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0
