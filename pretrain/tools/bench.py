"""python pretrain/tools/bench.py: training-step throughput of SSAST and Audio-MAE, ours vs the official-style path.

Prints one table: clips/s, tokens/s, ms/step, peak memory, and on GPU achieved TFLOP/s and MFU, with the speed-up of
ours over the reference at the same size and batch. Small on CPU (tiny width, 2 blocks), base-size on GPU by default.
``--compile`` / ``--checkpoint-every K`` / ``--window-attention`` set our blocks' execution (see
pretrain/tools/bench_steps.py for what is measured; pretrain/tools/gpu_bench.sh runs every variant on a GPU).
"""
import argparse
import dataclasses
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # pretrain/tools/ ; put the repository root there instead (entry trampoline)
sys.path[:] = [str(_HERE.parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402

from pretrain.encoder import BlockExecution  # noqa: E402
from pretrain.tools.bench_steps import (  # noqa: E402
    BASE,
    CPU,
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

LABELS = {"ssast": ("SSAST ours (1 pass, SDPA, {dtype})", "SSAST official-style (2 passes, naive, fp32)"),
          "audiomae": ("Audio-MAE ours (SDPA, {dtype})", "Audio-MAE official-style (naive, fp16 AMP)")}


def bench(method: str, args, sizes, device, dtype, peak) -> list:
    fbank = torch.randn(sizes.batch, sizes.frames, sizes.mel, device=device)
    execution = BlockExecution(compile=args.compile, compile_backend=args.compile_backend,
                               activation_checkpointing=args.checkpoint_every)
    plain = make_ours_step(ours_model(method, sizes, device, window_attention="explicit"), fbank, device, dtype)
    flops = count_flops(plain)  # useful work: the plain step (bench_steps docstring)
    del plain
    step = make_ours_step(ours_model(method, sizes, device, execution, args.window_attention), fbank, device, dtype)
    seconds, mem, first = time_step(step, device, args.warmup, args.iters)
    tokens = tokens_per_clip(method, sizes)
    rows = [(result(LABELS[method][0].format(dtype=args.dtype), seconds, sizes.batch, tokens, flops, mem, peak), first)]
    if not args.skip_reference:
        del step
        seconds, mem, first = time_step(reference_step(method, sizes, fbank, device), device, args.warmup, args.iters)
        rows.append((result(LABELS[method][1], seconds, sizes.batch, tokens, flops, mem, peak), first))
    return rows


def main() -> int:
    gpu = torch.cuda.is_available()
    d = BASE if gpu else CPU
    p = argparse.ArgumentParser(prog="python pretrain/tools/bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=("ssast", "audiomae", "both"), default="both")
    p.add_argument("--device", default="cuda" if gpu else "cpu")
    p.add_argument("--size", default=d.size, help="encoder size (base on GPU, tiny on CPU)")
    p.add_argument("--depth", type=int, default=d.depth, help="encoder blocks (0: the size's depth)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--frames", type=int, default=d.frames, help="input frames (1024: 512 patches)")
    p.add_argument("--decoder-dim", type=int, default=d.decoder_dim)
    p.add_argument("--decoder-depth", type=int, default=d.decoder_depth)
    p.add_argument("--decoder-heads", type=int, default=d.decoder_heads)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16" if gpu else "fp32", help="ours: autocast dtype")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile every block")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--checkpoint-every", type=int, default=0, help="ours: recompute every k-th block (0: none)")
    p.add_argument("--window-attention", choices=("auto", "explicit", "folded"), default="auto")
    p.add_argument("--threads", type=int, default=None if gpu else 1, help="torch CPU threads (CPU default: 1)")
    p.add_argument("--warmup", type=int, default=5 if gpu else 2)
    p.add_argument("--iters", type=int, default=20 if gpu else 10)
    p.add_argument("--skip-reference", action="store_true")
    args = p.parse_args()

    from rich.console import Console
    from rich.table import Table

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = dataclasses.replace(d, size=args.size, depth=args.depth, batch=args.batch, frames=args.frames,
                                decoder_dim=args.decoder_dim, decoder_depth=args.decoder_depth,
                                decoder_heads=args.decoder_heads)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    peak = device_peak(device)
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference trains in true fp32, as the released code did
    rows = []
    for method in ("ssast", "audiomae"):
        if args.method in (method, "both"):
            rows += bench(method, args, sizes, device, dtype, peak)

    table = Table(title=f"pretraining step, {args.size} x{args.depth or 'full depth'}, batch {args.batch}, "
                        f"{args.frames} frames — {device_name(device)}, torch {torch.__version__}, "
                        f"{time.strftime('%Y-%m-%d')}")
    for col in ("path", "clips/s", "tokens/s", "ms/step", "first step s", "peak GB", "TFLOP/s", "MFU", "speed-up"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for i, (r, first) in enumerate(rows):
        ref = rows[i + 1][0] if i % 2 == 0 and i + 1 < len(rows) and not args.skip_reference else None
        table.add_row(r.name, f"{r.clips_per_s:,.1f}", f"{r.tokens_per_s:,.0f}", f"{r.step_ms:.1f}", f"{first:.1f}",
                      f"{r.peak_mem_gb:.3g}" if r.peak_mem_gb is not None else "-",
                      f"{r.tflops:.1f}" if r.tflops else "-", f"{100 * r.mfu:.1f}%" if r.mfu else "-",
                      f"{r.clips_per_s / ref.clips_per_s:.2f}x" if ref else "")
    Console(width=170).print(table)
    timing = "CUDA events" if device.type == "cuda" else "process CPU time"
    print(f"median of {args.iters} steps ({timing}); command: python pretrain/tools/bench.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
