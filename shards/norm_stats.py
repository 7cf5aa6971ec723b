"""python -m shards.norm_stats SHARDS [--split train]: mean and std of the log-mel over a shard set.

Prints them with the config override to paste (``data.features.norm_mean=... data.features.norm_std=...``): the
(x - mean) / (2 std) normalisation of SSAST and Audio-MAE expects a corpus's own statistics (SSAST issue #3).
"""
from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from shards.features import FeatureConfig, RunningStats, cpjku_mel, crop_or_pad, fbank


def shard_urls(sources: Sequence[str], split: str) -> tuple[list[str], Optional[int]]:
    """Shard URLs and the clip count when known: a folder uses its manifest (else ``{split}-*.tar``); anything else
    (a tar, a brace pattern ``train-{000000..000009}.tar``, a URL) is passed to WebDataset as it is."""
    import webdataset as wds

    from launch.common.errors import BadInput
    from shards.stream import ShardSetConfig, open_shard_set
    from shards.writer import MANIFEST

    urls: list[str] = []
    total: Optional[int] = 0
    for src in sources:
        path = Path(src)
        if path.is_dir():
            if (path / MANIFEST).exists():
                s = open_shard_set(ShardSetConfig(str(path), split))
                urls += s.urls
                total = None if total is None else total + s.num_clips
            else:
                found = sorted(glob.glob(str(path / f"{split}-*.tar")))
                if not found:
                    raise BadInput(f"{path}: no manifest.json and no {split}-*.tar shards")
                urls += found
                total = None
        else:
            expanded = list(wds.shardlists.expand_urls(src))
            missing = [u for u in expanded if ":" not in u and not Path(u).is_file()]  # local paths only
            if missing:
                raise BadInput(f"{missing[0]}: no such shard file or folder")
            urls += expanded
            total = None
    return urls, total


def iter_waves(urls: Sequence[str], limit: Optional[int] = None) -> Iterator[tuple[Tensor, int]]:
    """``(wave [n] float32, rate)`` of each sample's ``flac`` field, in shard order (plain WebDataset reading)."""
    import webdataset as wds

    from shards.audio import decode_flac

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(urls)),  # every shard once, in order
        wds.tarfile_to_samples(),  # tar members grouped by key into {"__key__", "flac", "json"}
    )
    for i, sample in enumerate(pipeline):
        if limit is not None and i >= limit:
            return
        x, rate = decode_flac(sample["flac"])
        yield torch.from_numpy(x), rate


def iter_logmel_batches(waves: Iterable[tuple[Tensor, int]], cfg: FeatureConfig, batch_size: int = 32,
                        device: str = "cpu", target_frames: Optional[int] = None) -> Iterator[Tensor]:
    """Log-mel batches ``[b, T, F]`` of consecutive clips of equal length (a new batch starts when the length or rate
    changes); cropped / zero-padded to ``target_frames`` when given, as training sees them."""
    pending: list[Tensor] = []
    key = None

    def flush() -> Optional[Tensor]:
        if not pending:
            return None
        rate = key[1]
        if cfg.kind == "cpjku" and rate != 32000:
            from launch.common.errors import BadInput

            raise BadInput(f"the cpjku front end needs 32 kHz shards; these hold {rate} Hz audio")
        wave = torch.stack(pending).to(device)  # [b, n]
        pending.clear()
        # kaldi takes the rate from the audio, as SSAST's loader takes it from the file
        x = cpjku_mel(wave, 32000, cfg.num_mel_bins, fast_norm=False) if cfg.kind == "cpjku" else \
            fbank(wave, rate, cfg.num_mel_bins)
        return x if target_frames is None else crop_or_pad(x, target_frames)

    for wave, rate in waves:
        if key is not None and (key != (wave.numel(), rate) or len(pending) == batch_size):
            yield flush()
        key = (wave.numel(), rate)
        pending.append(wave)
    out = flush()
    if out is not None:
        yield out


def stats_main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    console = Console()
    cfg = FeatureConfig(kind=args.kind, sample_rate=32000 if args.kind == "cpjku" else 16000, num_mel_bins=args.mel)
    urls, total = shard_urls(args.sources, args.split)
    if args.clips is not None:
        total = args.clips if total is None else min(total, args.clips)
    stats, clips, frames, t0 = RunningStats(), 0, 0, time.perf_counter()
    columns = (TextColumn("[bold]stats"), BarColumn(), MofNCompleteColumn(), TextColumn("clips"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("clips", total=total)
        for x in iter_logmel_batches(iter_waves(urls, args.clips), cfg, args.batch, args.device, args.target_frames):
            stats.update(x)
            clips += x.shape[0]
            frames += x.shape[0] * x.shape[1]
            progress.update(task, advance=x.shape[0])
    if clips == 0:
        console.print(f"[red]no clips in {len(urls)} shard(s)")
        return 1
    table = Table(title=f"log-mel statistics ({cfg.kind}, {cfg.num_mel_bins} bins)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("shards", str(len(urls)))
    table.add_row("clips", str(clips))
    table.add_row("frames", f"{frames}" + (f" (padded/cropped to {args.target_frames})" if args.target_frames else ""))
    table.add_row("mean", f"{stats.mean:.7f}")
    table.add_row("std", f"{stats.std:.7f}")
    table.add_row("seconds", f"{time.perf_counter() - t0:.1f}")
    console.print(table)
    console.print("override:")
    console.print(f"data.features.norm_mean={stats.mean:.7f} data.features.norm_std={stats.std:.7f}", markup=False,
                  highlight=False, soft_wrap=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    st = argparse.ArgumentParser(prog="python -m shards.norm_stats", description=__doc__.splitlines()[0])
    st.add_argument("sources", nargs="+", help="shard folder(s) with manifest.json, tar files or brace patterns")
    st.add_argument("--split", default="train", help="split whose {split}-NNNNNN.tar shards are read (default: train)")
    st.add_argument("--clips", type=int, default=None, help="stop after this many clips (default: all)")
    st.add_argument("--kind", choices=("kaldi", "cpjku"), default="kaldi", help="front end (default: kaldi)")
    st.add_argument("--mel", type=int, default=128, help="mel bins (default: 128)")
    st.add_argument("--target-frames", type=int, default=None,
                    help="crop/zero-pad each clip's log-mel first, as training does (SSAST's constants include the "
                         "padding of 998 -> 1024 frames); default: the clip's own frames only")
    st.add_argument("--batch", type=int, default=32, help="clips per fbank call (default: 32)")
    st.add_argument("--device", default="cpu", help="where the fbank runs (default: cpu)")
    args = st.parse_args(argv)
    from launch.common.errors import BadInput

    try:
        return stats_main(args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
