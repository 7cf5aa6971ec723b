"""``python shards/build.py SOURCE --root RAW --out SHARDS``: one command for every corpus.

Each source adds its own flags (``python shards/build.py tau22 --help``). The build is parallel (``--workers``),
deterministic (same input, same bytes) and resumable: run the same command again after an interruption. With the
launcher's flags (``--nodes N``, ``--partition``, ``--time`` ...) it runs as a job array instead: N tasks build
disjoint ranges of the same shards, and the last to finish writes the manifest (:mod:`shards.cluster`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from launch.common.errors import BadInput
from launch.submit import CLUSTERS
from shards.sources import SOURCES, get_source

CLUSTER_FLAGS = ("nodes", "cluster", "partition", "time", "cpus_per_task", "mem_gb", "account", "qos", "dry_run",
                 "no_wait")
"""The launcher's flags (argparse names): any of them submits the build; none is recorded in the manifest."""


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
    parser.add_argument("--workers", type=_positive, default=None,
                        help="worker processes (default: all cores; in a job array, each task's cores)")
    parser.add_argument("--shard-size", type=_positive, default=1000, help="clips per shard (default 1000)")
    parser.add_argument("--bits", type=int, choices=(16, 24), default=16, help="FLAC bit depth in the shards")
    _add_cluster_arguments(parser)
    if source is not None:
        module = get_source(source)
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser.add_argument_group(f"{source} options"))
    return parser


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``launch/submit.py`` that mean something for a shard build (no GPUs, one task per node)."""
    g = parser.add_argument_group("cluster (any of these submits the build as a job array; without them it runs here)")
    g.add_argument("--nodes", type=int, default=None,
                   help="array tasks, each on one node building a disjoint range of the shards (default 1)")
    g.add_argument("--cluster", choices=CLUSTERS, default=None,
                   help="slurm when a SLURM controller answers, else local (tasks as processes here); debug: one "
                        "after another in this process")
    g.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    g.add_argument("--time", default=None, help="time limit per task, HH:MM:SS or D-HH:MM:SS (default 24:00:00); "
                                                 "a task near its limit finishes the shards under way and is requeued")
    g.add_argument("--cpus-per-task", type=int, default=None,
                   help="CPU cores per task (default on SLURM: a whole node, --exclusive; locally: cores / tasks)")
    g.add_argument("--mem-gb", type=int, default=None, help="memory per task in GB (default: the cluster's)")
    g.add_argument("--account", default=None, help="SLURM account")
    g.add_argument("--qos", default=None, help="SLURM QOS")
    g.add_argument("--dry-run", action="store_true", help="print the plan and the sbatch parameters, submit nothing")
    g.add_argument("--no-wait", action="store_true", help="return after submitting (default: wait for local runs)")


def load_inputs(args: argparse.Namespace):
    """The corpus named by ``args.source``, loaded, and what else the build needs (a :class:`BuildInputs`)."""
    from shards.writer import BuildInputs, BuildOptions

    check_sample_rate(args.sample_rate)
    if args.root is not None and not args.root.exists():
        raise BadInput(f"--root {args.root}: no such directory")
    root = args.root.resolve() if args.root else None
    corpus = get_source(args.source).load(root, args)
    options = BuildOptions(sample_rate=args.sample_rate, shard_size=args.shard_size,
                           workers=args.workers or max(1, os.cpu_count() or 1), flac_subtype=f"PCM_{args.bits}")
    common = {"root", "out", "splits", "sample_rate", "workers", "shard_size", "bits", "source", *CLUSTER_FLAGS}
    source_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items()) if k not in common}
    return BuildInputs(corpus, args.out, tuple(args.splits or corpus.splits), options, root, source_args)


def run(args: argparse.Namespace):
    """Build the requested splits here (returns the manifest), or submit them as a job array (see
    :func:`shards.cluster.submit` for what it returns)."""
    from rich.console import Console

    console = Console(stderr=True)
    # a flag given (--nodes 0 too: it is refused, not ignored); the store_true ones when set
    array = any(getattr(args, name) is not None and getattr(args, name) is not False for name in CLUSTER_FLAGS)
    if array:
        from shards.cluster import check_flags

        check_flags(args)  # before listing what may be two million clips
    inputs = load_inputs(args)
    if array:
        from shards.cluster import submit

        manifest = submit(args, inputs, console)
    else:
        from shards.writer import build

        manifest = build(inputs.corpus, inputs.out, inputs.splits, inputs.options, root=inputs.root,
                         source_args=inputs.source_args, console=console)
    if isinstance(manifest, dict):
        _report(console, manifest, inputs.splits, args.out)
    return manifest


def build_range(request, stop=None) -> dict:
    """One task of a job array (called on the node by :class:`launch.job.Job`): load the corpus from the request's
    command line, build the request's range, write the manifest if the set is then complete."""
    from rich.console import Console

    from shards.cluster import run_range

    return run_range(load_inputs(request.args), request, Console(stderr=True), stop)


def _report(console, manifest: dict, splits, out: Path) -> None:
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
