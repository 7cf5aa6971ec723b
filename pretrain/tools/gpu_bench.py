"""python pretrain/tools/gpu_bench.py [--tiny] [--out FILE.md]: the prepared GPU benchmark (``bash
pretrain/tools/gpu_bench.sh``), one H100/H200 in under 8 minutes, one markdown file with device, date and command.

1. Training steps of SSAST-Base and Audio-MAE-Base (batch 64, 1024 frames x 128 mel), ours against the official-style
   path: ours in bf16 eager, with activation checkpointing of every block, compiled (inductor), compiled +
   checkpointing, and Audio-MAE's window attention explicit instead of folded: ms/step, clips/s, TFLOP/s, MFU, peak
   memory (what each means: pretrain/tools/bench_steps.py).
2. The batched fbank (shards/features.py) on the device against the per-clip kaldi loop (shards/tools/bench.py (b)).
3. The data wait of the training stream of 10 s FLAC clips at 4 and 8 DataLoader workers: the share of each step the
   loop waits for its next batch, when a step takes as long as the measured Audio-MAE-Base one (the loop's
   ``data_wait``), and the stream's own clips/s.

Rows run in order of importance; once ``--budget-s`` has passed, the rest are listed as skipped, never half-written
(a compiled row starts only with :data:`COMPILE_RESERVE_S` left).
``--tiny`` (or ``TESSERA_BENCH_TINY=1``): tiny models, 2 clips, 1-2 workers, one timed step, the compiled rows
through Dynamo's "eager" backend: it runs on a CPU in seconds and checks the script, not the machine
(tests/integration/test_compile.py runs it).
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # pretrain/tools/ ; put the repository root there instead (entry trampoline)
sys.path[:] = [str(_HERE.parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import torch  # noqa: E402

from launch.common.files import atomic_write  # noqa: E402
from pretrain.encoder import BlockExecution  # noqa: E402
from pretrain.tools.bench_steps import (  # noqa: E402
    BASE,
    PEAK_TFLOPS,
    TINY,
    Sizes,
    count_flops,
    device_name,
    device_peak,
    make_ours_step,
    ours_model,
    reference_step,
    result,
    time_step,
    tokens_per_clip,
)

METHODS = {"ssast": "SSAST", "audiomae": "Audio-MAE"}
COMPILE_RESERVE_S = 120.0
"""A compiled row starts only with this much of the budget left (inductor builds every block shape first)."""


@dataclass
class Plan:
    """What one run measures."""

    sizes: Sizes
    warmup: int
    iters: int
    compile_backend: str
    workers: tuple[int, ...]
    clip_seconds: float
    stream_batches: int
    fbank_batch: int
    budget_s: float
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def step_cases(method: str, backend: str) -> list[tuple[str, BlockExecution | None, str]]:
    """(label, our block execution or None for the official-style path, window attention), most important first."""
    cases = [("ours, bf16", BlockExecution(), "auto"), ("official-style", None, "")]
    if method == "audiomae":
        cases.append(("ours, bf16, explicit windows", BlockExecution(), "explicit"))
    cases += [("ours, bf16, checkpointing every block", BlockExecution(activation_checkpointing=1), "auto"),
              (f"ours, bf16, compiled ({backend})", BlockExecution(compile=True, compile_backend=backend), "auto"),
              (f"ours, bf16, compiled ({backend}) + checkpointing",
               BlockExecution(compile=True, compile_backend=backend, activation_checkpointing=1), "auto")]
    return cases


def bench_steps(plan: Plan, device: torch.device, started: float, console) -> dict[str, float]:
    """Section 1; returns the measured seconds per step of each method's plain bf16 row."""
    sizes, peak, dtype = plan.sizes, device_peak(device), torch.bfloat16
    fbank = torch.randn(sizes.batch, sizes.frames, sizes.mel, device=device)
    plain_seconds: dict[str, float] = {}
    cases = {m: step_cases(m, plan.compile_backend) for m in METHODS}
    # rank by rank across the methods (plain, official, ...): the most useful rows survive a tight budget
    order = [(m, c) for i in range(max(map(len, cases.values()))) for m, cs in cases.items() for c in cs[i:i + 1]]
    flops = {}
    for method, (label, execution, attention) in order:
        name = f"{METHODS[method]} {label}"
        left = plan.budget_s - (time.perf_counter() - started)
        if left < (COMPILE_RESERVE_S if execution is not None and execution.compile else 0):
            plan.rows.append((name, "skipped: time budget", *[""] * 6))
            continue
        console.print(f"  {name}")
        try:
            if method not in flops:
                plain = make_ours_step(ours_model(method, sizes, device, window_attention="explicit"), fbank, device,
                                       dtype)
                flops[method] = count_flops(plain)  # the useful work, counted once (bench_steps docstring)
                del plain
            step = (make_ours_step(ours_model(method, sizes, device, execution, attention), fbank, device, dtype)
                    if execution is not None else reference_step(method, sizes, fbank, device))
            seconds, mem, first = time_step(step, device, plan.warmup, plan.iters)
        except Exception as e:  # noqa: BLE001 - one failed row (OOM, a compile error) must not lose the others
            plan.rows.append((name, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}", *[""] * 6))
            continue
        finally:
            step = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        r = result(name, seconds, sizes.batch, tokens_per_clip(method, sizes), flops[method], mem, peak)
        if label == "ours, bf16":
            plain_seconds[method] = seconds
        plan.rows.append((name, f"{r.step_ms:.1f}", f"{r.clips_per_s:,.1f}", f"{r.tflops:.1f}" if r.tflops else "-",
                          f"{100 * r.mfu:.1f}%" if r.mfu else "-", f"{r.peak_mem_gb:.3g}", f"{first:.1f}",
                          f"{flops[method] / 1e12:.3g}"))
    return plain_seconds


def bench_fbank(plan: Plan, device: torch.device) -> list[tuple]:
    """Section 2, through shards/tools/bench.py's own measurement."""
    from shards.tools.bench import bench_fbank as shards_fbank

    rows: list = []
    shards_fbank(argparse.Namespace(batch=plan.fbank_batch, repeats=3 if plan.iters > 1 else 1), device, rows)
    return [(what, where, clips, f"{rate:,.0f}", f"{ms:.2f}", vs) for what, where, clips, rate, ms, vs in rows]


def build_stream_set(folder: Path, clips: int, seconds: float) -> Path:
    """A shard set of ``clips`` synthetic FLAC clips (tones + noise, shards/tools/bench.py's test clips)."""
    from rich.console import Console

    from shards.clip import Clip, Corpus
    from shards.tools.bench import RATE, _bench_clip
    from shards.writer import BuildOptions, build

    items = [Clip(key=f"bench-{i:05d}", render=functools.partial(_bench_clip, i, seconds)) for i in range(clips)]
    corpus = Corpus(name="bench", classes=[], splits={"train": lambda: iter(items)})
    build(corpus, folder, ["train"], BuildOptions(sample_rate=RATE, shard_size=max(4, clips // 16),
                                                  workers=min(8, os.cpu_count() or 1)),
          root=None, source_args={}, console=Console(file=io.StringIO()))
    return folder


def data_wait(folder: Path, workers: int, batch: int, seconds: float, step_s: float, batches: int,
              device: torch.device) -> tuple[float, float]:
    """(share of the time spent waiting for batches while a stand-in step of ``step_s`` seconds consumes them: the
    host sleeps, as it does while the GPU runs a step; the stream's clips/s when nothing else runs), each over
    ``batches`` batches after two warm-up ones (worker start-up)."""
    from shards.stream import ShardSetConfig, StreamConfig, train_loader

    cfg = StreamConfig(clip_seconds=seconds, batch_size=batch, num_workers=workers, shuffle_buffer=batch)
    rates = []
    for pause in (step_s, 0.0):
        stream = train_loader([ShardSetConfig(str(folder))], cfg, pin_memory=device.type == "cuda")
        for _ in range(2):
            next(stream)
        waited, t0 = 0.0, time.perf_counter()
        for _ in range(batches):
            t = time.perf_counter()
            wave = next(stream).wave
            waited += time.perf_counter() - t
            wave.to(device, non_blocking=True)
            time.sleep(pause)
        rates.append((waited, time.perf_counter() - t0))
        del stream
    (waited, total), (_, free) = rates
    return waited / total, batches * batch / free


def bench_data(plan: Plan, step_s: float, device: torch.device) -> list[tuple]:
    """Section 3."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        need = (plan.stream_batches + 2) * plan.sizes.batch * max(plan.workers)  # every worker fills its prefetch
        folder = build_stream_set(Path(tmp) / "set", min(need, 1024), plan.clip_seconds)  # resampled: 1024 do
        for workers in plan.workers:
            wait, rate = data_wait(folder, workers, plan.sizes.batch, plan.clip_seconds, step_s, plan.stream_batches,
                                   device)
            rows.append((f"{workers}", f"{plan.sizes.batch} x {plan.clip_seconds:g} s", f"{1e3 * step_s:.0f}",
                         f"{100 * wait:.1f}%", f"{rate:,.0f}", f"{plan.sizes.batch / step_s:,.0f}"))
    return rows


def markdown_table(header: tuple, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(plan: Plan, device: torch.device, fbank_rows: list, data_rows: list, step_s: float, took: float,
           command: str) -> str:
    sizes = plan.sizes
    peak = device_peak(device)
    return "\n\n".join([
        f"## GPU benchmark: {device_name(device)}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"`{command}` (took {took:.0f} s; torch {torch.__version__}, CUDA {torch.version.cuda or '-'}, "
        f"{os.cpu_count()} CPU cores)",
        f"### Training steps: {sizes.size} encoder{'' if not sizes.depth else f' x{sizes.depth}'}, batch "
        f"{sizes.batch}, {sizes.frames} frames x {sizes.mel} mel, median of {plan.iters} after {plan.warmup} warm-up",
        markdown_table(("path", "ms/step", "clips/s", "TFLOP/s", "MFU", "peak GB", "first step s", "TFLOP/step"),
                       plan.rows),
        "TFLOP/step: torch's FlopCounterMode on our plain step (2mnk per matmul/conv, SDPA as two matmuls, backward "
        "= 2x forward; ~3 x (24 B L D^2 + 4 B L^2 D) per ViT block), the same for every row of a method. MFU = "
        f"TFLOP/s / {peak if peak else '-'} TFLOP/s, the dense bf16 peak of this device "
        f"({', '.join(f'{k} {v:g}' for k, v in PEAK_TFLOPS.items())}). Peak GB: "
        + ("torch.cuda.max_memory_allocated over the timed steps." if device.type == "cuda" else
           "tensor memory allocated during one step above its start (torch.profiler events; CPU)."),
        "First step s: wall time of the first step (compilation, allocator and cuDNN warm-up).",
        "### Features: batched fbank on the device vs the per-clip kaldi loop",
        markdown_table(("measurement", "where", "clips", "clips/s", "ms/clip", "vs loop"), fbank_rows),
        f"### Data wait: training stream of {plan.clip_seconds:g} s FLAC clips from a local folder, a step of "
        f"{1e3 * step_s:.0f} ms (Audio-MAE ours, bf16, measured above)",
        markdown_table(("workers", "batch", "step ms", "data wait", "stream clips/s alone", "clips/s the step takes"),
                       data_rows),
        *(f"- {note}" for note in plan.notes),
    ]) + "\n"


def main(argv=None) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python pretrain/tools/gpu_bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", default=os.environ.get("TESSERA_BENCH_TINY") == "1",
                   help="tiny sizes on any device, in seconds (also TESSERA_BENCH_TINY=1)")
    p.add_argument("--out", default=None, help="markdown file (default: runs/bench/gpu-<UTC date>.md)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds after which the remaining step rows are skipped (330: with a compiled row's "
                        "overrun, the fbank and the data wait, the run stays under 8 minutes)")
    p.add_argument("--compile-backend", default=None,
                   help="inductor; in --tiny 'eager' (Dynamo's capture only: no C++ build, seconds on a CPU)")
    args = p.parse_args(argv)
    if not gpu and not args.tiny:
        p.error("no GPU here: give --tiny (or TESSERA_BENCH_TINY=1) to check the script on the CPU")
    plan = (Plan(TINY, 1, 1, "eager", (1, 2), 1.0, 2, 2, 600.0) if args.tiny else
            Plan(BASE, 3, 10, "inductor", (4, 8), 10.0, 12, 64, 330.0))
    plan.compile_backend = args.compile_backend or plan.compile_backend
    plan.budget_s = args.budget_s if args.budget_s is not None else plan.budget_s
    device = torch.device("cuda" if gpu else "cpu")
    out = Path(args.out or f"runs/bench/gpu-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M}.md")
    command = shlex.join(["python", "pretrain/tools/gpu_bench.py", *(sys.argv[1:] if argv is None else argv)])

    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(stderr=True)
    torch.backends.cuda.matmul.allow_tf32 = False  # the official SSAST path trains in true fp32
    started = time.perf_counter()
    console.print(f"[bold]1. training steps[/] on {device_name(device)}")
    plain = bench_steps(plan, device, started, console)
    console.print("[bold]2. fbank[/]")
    fbank_rows = bench_fbank(plan, device)
    step_s = plain.get("audiomae") or plain.get("ssast") or 0.25
    if "audiomae" not in plain:
        plan.notes.append(f"Audio-MAE's step was not measured: the data wait uses a {1e3 * step_s:.0f} ms step.")
    console.print(f"[bold]3. data wait[/] at {', '.join(map(str, plan.workers))} workers")
    data_rows = bench_data(plan, step_s, device)
    text = report(plan, device, fbank_rows, data_rows, step_s, time.perf_counter() - started, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)
    Console(width=160).print(Markdown(text))
    console.print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
