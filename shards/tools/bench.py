"""python shards/tools/bench.py [--device auto|cpu|cuda] [--batch N] [--repeats N] [--quick] [--only a,b,c]: input throughput.

(a) Per DataLoader worker (one process, one thread): FLAC decode + random crop of 10 s and 1 s clips, and the same
    plus SSAST/Audio-MAE's per-clip ``torchaudio.compliance.kaldi.fbank`` (what their workers do).
(b) Batched :func:`shards.features.fbank` against the per-clip torchaudio loop, at ``--batch`` clips of 1 s and 10 s,
    on CPU and (when there is one) GPU: medians over ``--repeats`` after a warm-up, CUDA synchronised.
(c) Per worker, the whole training stream (tar reading, shuffle, FLAC decode, random crop, batching) of one shard set
    read from a local folder, from the same folder served by ``python -m http.server`` on the loopback, and through
    ``pipe:cat``: what a URL shard set costs a worker, transport included ("vs ref": against the local folder).
"""
import sys
from pathlib import Path

# Run by path, Python puts shards/tools/ first on sys.path, where a module named like a dependency or a sibling package
# would shadow it. Put the repository root there instead (the trampoline every entry script shares).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchaudio  # noqa: E402
import torchaudio.compliance.kaldi as kaldi  # noqa: E402

from shards.audio import decode_flac, encode_flac  # noqa: E402
from shards.features import fbank  # noqa: E402

RATE = 16000


def median_seconds(fn, repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (cuFFT plans, caches, allocator)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kaldi_loop(wave: torch.Tensor) -> torch.Tensor:
    """SSAST / Audio-MAE ``_wav2fbank``, one clip at a time."""
    return torch.stack([
        kaldi.fbank((w - w.mean())[None], htk_compat=True, sample_frequency=RATE, use_energy=False,
                    window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
        for w in wave
    ])


def test_clip(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Tones plus noise: compresses like real audio (pure noise would be the worst case for FLAC)."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = sum(0.1 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) for f in rng.uniform(100, 4000, 5))
    return (x + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def bench_decode(args, rows: list) -> None:
    """(a): clips/s of one worker: decode FLAC bytes + crop (as shards/stream.py does), optionally + kaldi fbank."""
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs torch on one thread
    try:
        for src, dst in ((10.0, 10.0), (10.0, 1.0), (1.0, 1.0)):
            n_clips = max(4, int((8 if args.quick else 24) / src))
            blobs = [encode_flac(test_clip(src, rng), RATE) for _ in range(n_clips)]
            target = int(dst * RATE)

            def decode_crop():
                out = []
                for b in blobs:
                    x, _ = decode_flac(b)
                    offset = int(rng.integers(0, len(x) - target + 1))
                    out.append(x[offset : offset + target])
                return out

            def decode_crop_fbank():
                return [kaldi_loop(torch.from_numpy(np.ascontiguousarray(x))[None]) for x in decode_crop()]

            label = f"{src:g} s FLAC -> {dst:g} s"
            t = median_seconds(decode_crop, args.repeats, torch.device("cpu"))
            rows.append(("(a) decode+crop", "cpu, 1 worker", label, n_clips / t, 1e3 * t / n_clips, ""))
            t = median_seconds(decode_crop_fbank, args.repeats, torch.device("cpu"))
            rows.append(("(a) decode+crop+kaldi", "cpu, 1 worker", label, n_clips / t, 1e3 * t / n_clips, ""))
    finally:
        torch.set_num_threads(threads)


def _bench_clip(index: int, seconds: float) -> tuple[np.ndarray, int]:
    """Clip ``index`` of the (c) shard set (a module-level function: the shard writer may pickle it)."""
    return test_clip(seconds, np.random.default_rng(index)), RATE


@contextlib.contextmanager
def loopback_http(folder: Path):
    """``python -m http.server`` serving ``folder`` on a free loopback port; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory",
                             str(folder)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = re.search(r"port (\d+)", proc.stdout.readline()).group(1)  # "Serving HTTP on 127.0.0.1 port N ..."
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def bench_remote(args, rows: list) -> None:
    """(c): clips/s of one worker's training stream from a local folder, loopback HTTP and ``pipe:cat``."""
    from shards.clip import Clip, Corpus
    from shards.stream import ShardSetConfig, StreamConfig, train_loader
    from shards.writer import BuildOptions, build

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs torch on one thread
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for seconds in (10.0, 1.0):
                n_clips = (48 if args.quick else 160) * (4 if seconds < 5 else 1)
                out = Path(tmp) / f"set-{seconds:g}s"
                clips = [Clip(key=f"bench-{i:05d}", render=functools.partial(_bench_clip, i, seconds))
                         for i in range(n_clips)]
                corpus = Corpus(name="bench", classes=[], splits={"train": lambda clips=clips: iter(clips)})
                build(corpus, out, ["train"], BuildOptions(sample_rate=RATE, shard_size=max(4, n_clips // 8)),
                      root=None, source_args={}, console=_quiet_console())
                cfg = StreamConfig(clip_seconds=1.0, sample_rate=RATE, batch_size=16, num_workers=0,
                                   shuffle_buffer=16)
                n_batches = max(2, n_clips // cfg.batch_size)

                def take(path: str) -> float:
                    t0 = time.perf_counter()
                    for _ in itertools.islice(train_loader([ShardSetConfig(path)], cfg), n_batches):
                        pass
                    return time.perf_counter() - t0

                with loopback_http(Path(tmp)) as server:
                    sources = (("local folder", str(out)), ("loopback HTTP", f"{server}/{out.name}"),
                               ("pipe:cat", f"pipe:cat {out}/{{}}"))
                    times: dict[str, list[float]] = {where: [] for where, _ in sources}
                    for repeat in range(args.repeats + 1):  # round-robin, so a change of machine load hits all three
                        for where, path in sources:
                            seconds_taken = take(path)
                            if repeat:  # the first round warms caches and imports
                                times[where].append(seconds_taken)
                rates = [(where, n_batches * cfg.batch_size / statistics.median(ts)) for where, ts in times.items()]
                for where, rate in rates:
                    rows.append(("(c) shards+decode+crop", f"{where}, 1 worker", f"{seconds:g} s FLAC -> 1 s", rate,
                                 1e3 / rate, f"{rate / rates[0][1]:.2f}x"))
    finally:
        torch.set_num_threads(threads)


def _quiet_console():
    from rich.console import Console

    return Console(file=io.StringIO())


def bench_fbank(args, device: torch.device, rows: list) -> None:
    """(b): batched fbank vs the per-clip torchaudio loop, same device, same batch."""
    g = torch.Generator().manual_seed(0)
    where = f"{device.type}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    for seconds in (1, 10):
        wave = (0.1 * torch.randn(args.batch, seconds * RATE, generator=g)).to(device)
        loop = median_seconds(lambda: kaldi_loop(wave), args.repeats, device)
        batched = median_seconds(lambda: fbank(wave), args.repeats, device, warmup=2)
        label = f"{args.batch} x {seconds} s"
        rows.append(("(b) kaldi.fbank loop", where, label, args.batch / loop, 1e3 * loop / args.batch, "1.0x"))
        rows.append(("(b) batched fbank", where, label, args.batch / batched, 1e3 * batched / args.batch,
                     f"{loop / batched:.1f}x"))


def describe_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores visible)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores visible)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python shards/tools/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the CPU, and the GPU when torch.cuda.is_available() (default)")
    parser.add_argument("--batch", type=int, default=64, help="clips per batch in (b) (default: 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported (default: 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for (b) (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="fewer clips and 2 repeats")
    parser.add_argument("--only", default="a,b,c", help="comma-separated sections to run: a, b, c (default: all)")
    args = parser.parse_args(argv)
    sections = set(args.only.split(","))
    if not sections <= {"a", "b", "c"}:
        parser.error(f"--only {args.only}: expected a comma-separated subset of a, b, c")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = min(args.repeats, 2)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 110)
    console.print(f"command  python {shlex.join(sys.argv if argv is None else ['shards/tools/bench.py', *argv])}")
    console.print(f"date     {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    console.print(f"torch    {torch.__version__}, torchaudio {torchaudio.__version__}, "
                  f"{torch.get_num_threads()} CPU threads")
    console.print(f"cpu      {describe_cpu()}")
    if torch.cuda.is_available():
        console.print(f"gpu      {torch.cuda.get_device_name()}")
    rows: list = []
    t0 = time.perf_counter()
    if "a" in sections:
        with console.status("(a) decode + crop per worker"):
            bench_decode(args, rows)
    for device in devices if "b" in sections else []:
        with console.status(f"(b) fbank on {device.type}"):
            bench_fbank(args, device, rows)
    if "c" in sections:
        with console.status("(c) shard stream per worker: local folder, loopback HTTP, pipe:cat"):
            bench_remote(args, rows)
    table = Table(title=f"input pipeline throughput (median of {args.repeats})")
    for name, justify in (("measurement", "left"), ("where", "left"), ("clips", "left"), ("clips/s", "right"),
                          ("ms/clip", "right"), ("vs ref", "right")):
        table.add_column(name, justify=justify)
    for what, where, clips, rate, ms, speedup in rows:
        table.add_row(what, where, clips, f"{rate:,.0f}", f"{ms:.2f}", speedup)
    console.print(table)
    console.print(f"took {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
