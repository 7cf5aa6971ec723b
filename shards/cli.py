"""``python shards/build.py SOURCE --root RAW --out SHARDS``: one command for every corpus.

Each source adds its own flags (``python shards/build.py tau22 --help``). The build is parallel (``--workers``),
deterministic (same input, same bytes) and resumable: run the same command again after an interruption.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from launch.common.errors import BadInput
from shards.sources import SOURCES, get_source


def check_sample_rate(rate: int) -> int:
    from shards.audio import SAMPLE_RATES  # here, not at the top: shards.audio loads torch, `--help` need not

    low, high = SAMPLE_RATES
    if not low <= rate <= high:
        raise BadInput(f"--sample-rate {rate}: expected a rate in Hz between {low} and {high} (e.g. 16000 or 32000)")
    return rate


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def make_parser(source: str | None = None) -> argparse.ArgumentParser:
    """The parser for one source (its own flags included), or, without one, the top-level parser for ``--help``.

    Only the chosen source's module is imported, so a broken or heavy reader never slows down the others.
    """
    parser = argparse.ArgumentParser(
        prog=f"python shards/build.py {source or 'SOURCE'}",
        description="Turn a raw audio corpus into WebDataset shards (FLAC + json [+ cls]) and a manifest.json.",
    )
    parser.add_argument("source", choices=list(SOURCES), metavar="SOURCE", help="one of: " + ", ".join(SOURCES))
    parser.add_argument("--root", type=Path, help="root of the raw corpus tree (not needed for synthetic)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for {split}-%%06d.tar + manifest.json")
    parser.add_argument("--split", action="append", dest="splits", metavar="SPLIT",
                        help="build only this split (repeatable; default: all splits of the source)")
    parser.add_argument("--sample-rate", type=_positive, default=16000, help="target sample rate in Hz (default 16000)")
    parser.add_argument("--workers", type=_positive, default=max(1, (os.cpu_count() or 1)),
                        help="worker processes (default: all cores)")
    parser.add_argument("--shard-size", type=_positive, default=1000, help="clips per shard (default 1000)")
    parser.add_argument("--bits", type=int, choices=(16, 24), default=16, help="FLAC bit depth in the shards")
    if source is not None:
        module = get_source(source)
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser.add_argument_group(f"{source} options"))
    return parser


def run(args: argparse.Namespace) -> dict:
    """Load the corpus named by ``args.source`` and build the requested splits; returns the manifest."""
    from rich.console import Console

    from shards.writer import BuildOptions, build

    console = Console(stderr=True)
    check_sample_rate(args.sample_rate)
    if args.root is not None and not args.root.exists():
        raise BadInput(f"--root {args.root}: no such directory")
    module = get_source(args.source)
    corpus = module.load(args.root.resolve() if args.root else None, args)
    splits = args.splits or list(corpus.splits)
    options = BuildOptions(sample_rate=args.sample_rate, shard_size=args.shard_size, workers=args.workers,
                           flac_subtype=f"PCM_{args.bits}")
    common = {"root", "out", "splits", "sample_rate", "workers", "shard_size", "bits", "source"}
    source_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items()) if k not in common}
    manifest = build(corpus, args.out, splits, options, root=args.root.resolve() if args.root else None,
                     source_args=source_args, console=console)
    _report(console, manifest, splits, args.out)
    return manifest


def _report(console, manifest: dict, splits: list[str], out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{manifest['source']} -> {out}")
    for col in ("split", "shards", "clips", "hours", "skipped", "classes"):
        table.add_column(col, justify="right" if col not in ("split",) else "left")
    for split in splits:
        s = manifest["splits"][split]
        table.add_row(split, str(len(s["shards"])), str(s["count"]), f"{s['hours']:.3f}", str(len(s["skipped"])),
                      str(len(s["label_histogram"])))
    console.print(table)
    for split in splits:
        skipped = manifest["splits"][split]["skipped"]
        if skipped:
            console.print(f"[yellow]{split}: skipped {len(skipped)} input(s)[/] (all listed in {out / 'manifest.json'})")
            for s in skipped[:5]:
                console.print(f"  {s['path'] or s['key']}: {s['reason']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    source = argv[0] if argv and argv[0] in SOURCES else None
    try:
        args = make_parser(source).parse_args(argv)
        run(args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
