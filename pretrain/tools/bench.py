"""python pretrain/tools/bench.py: training-step throughput of SSAST and Audio-MAE, ours vs the official-style path.

Prints one table: clips/s, tokens/s, ms/step, peak memory, and on GPU achieved TFLOP/s and MFU, with the speed-up of
ours over the reference at the same size and batch. Small on CPU (``--size tiny``), base-size on GPU by default.
"""
import argparse
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # pretrain/tools/ ; put the repository root there instead (entry trampoline)
sys.path[:] = [str(_HERE.parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402

from pretrain.tools.bench_steps import (count_flops, device_peak, make_ours_step,  # noqa: E402
                                        make_reference_mae_step, make_reference_ssast_step, result, time_step)


def bench_ssast(args, device, dtype, peak):
    from pretrain.encoder import EncoderConfig
    from pretrain.ssast import SSAST, SSASTConfig
    from pretrain.tools.reference_ssast import OfficialAST

    enc = EncoderConfig(size=args.size, target_frames=args.frames, cls_tokens=2, depth=args.depth)
    mask = int(round(enc.num_patches * 400 / 512))
    ours = SSAST(SSASTConfig(encoder=enc, mask_patches=mask)).to(device)
    fbank = torch.randn(args.batch, args.frames, 128, device=device)
    step = make_ours_step(ours, fbank, device, dtype)
    flops = count_flops(step)
    seconds, mem = time_step(step, device, args.warmup, args.iters)
    rows = [result(f"SSAST ours (1 pass, SDPA, {args.dtype})", seconds, args.batch, 2 * enc.num_patches, flops, mem,
                   peak)]
    if not args.skip_reference:
        del ours, step
        ref = OfficialAST(fshape=16, tshape=16, fstride=16, tstride=16, input_tdim=args.frames, model_size=args.size,
                          depth=args.depth or None).to(device)
        rstep = make_reference_ssast_step(ref, fbank, mask, cluster=True)
        seconds, mem = time_step(rstep, device, args.warmup, args.iters)
        rows.append(result("SSAST official-style (2 passes, naive, fp32)", seconds, args.batch, 2 * enc.num_patches,
                           flops, mem, peak))
    return rows


def bench_audiomae(args, device, dtype, peak):
    from pretrain.audiomae import AudioMAE, AudioMAEConfig
    from pretrain.encoder import EncoderConfig
    from pretrain.tools.reference_mae import OfficialAudioMAE

    enc = EncoderConfig(size=args.size, target_frames=args.frames, cls_tokens=1, pos_embed="sincos",
                        token_order="time", depth=args.depth)
    dec = dict(decoder_dim=args.decoder_dim, decoder_depth=args.decoder_depth, decoder_heads=args.decoder_heads)
    ours = AudioMAE(AudioMAEConfig(encoder=enc, **dec)).to(device)
    fbank = torch.randn(args.batch, args.frames, 128, device=device)
    step = make_ours_step(ours, fbank, device, dtype)
    flops = count_flops(step)
    seconds, mem = time_step(step, device, args.warmup, args.iters)
    rows = [result(f"Audio-MAE ours (SDPA, {args.dtype})", seconds, args.batch, enc.num_patches,
                   flops, mem, peak)]
    if not args.skip_reference:
        del ours, step
        from pretrain.encoder import MODEL_SIZES

        dim, depth, heads = MODEL_SIZES[args.size]
        ref = OfficialAudioMAE(img_size=(args.frames, 128), embed_dim=dim, depth=args.depth or depth, num_heads=heads,
                               decoder_embed_dim=args.decoder_dim, decoder_num_heads=args.decoder_heads,
                               decoder_mode=1, local_depth=args.decoder_depth, norm_pix_loss=True).to(device)
        rstep = make_reference_mae_step(ref, fbank, device, 0.8)
        seconds, mem = time_step(rstep, device, args.warmup, args.iters)
        rows.append(result("Audio-MAE official-style (naive, fp16 AMP)", seconds, args.batch, enc.num_patches, flops,
                           mem, peak))
    return rows


def main() -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python pretrain/tools/bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=("ssast", "audiomae", "both"), default="both")
    p.add_argument("--device", default="cuda" if gpu else "cpu")
    p.add_argument("--size", default="base" if gpu else "tiny", help="encoder size (base on GPU, tiny on CPU)")
    p.add_argument("--depth", type=int, default=0 if gpu else 2, help="encoder blocks (0: the size's depth)")
    p.add_argument("--batch", type=int, default=64 if gpu else 4)
    p.add_argument("--frames", type=int, default=1024 if gpu else 128, help="input frames (1024: 512 patches)")
    p.add_argument("--decoder-dim", type=int, default=512 if gpu else 128)
    p.add_argument("--decoder-depth", type=int, default=16 if gpu else 2)
    p.add_argument("--decoder-heads", type=int, default=16 if gpu else 4)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16" if gpu else "fp32", help="ours: autocast dtype")
    p.add_argument("--warmup", type=int, default=5 if gpu else 1)
    p.add_argument("--iters", type=int, default=20 if gpu else 3)
    p.add_argument("--skip-reference", action="store_true")
    args = p.parse_args()

    from rich.console import Console
    from rich.table import Table

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    peak = device_peak(device)
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference trains in true fp32, as the released code did
    rows = []
    if args.method in ("ssast", "both"):
        rows += bench_ssast(args, device, dtype, peak)
    if args.method in ("audiomae", "both"):
        rows += bench_audiomae(args, device, dtype, peak)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    table = Table(title=f"pretraining step, {args.size} x{args.depth or 'full depth'}, batch {args.batch}, "
                        f"{args.frames} frames — {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    for col in ("path", "clips/s", "tokens/s", "ms/step", "peak GB", "TFLOP/s", "MFU", "speed-up"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for i, r in enumerate(rows):
        ref = rows[i + 1] if i % 2 == 0 and i + 1 < len(rows) and not args.skip_reference else None
        table.add_row(r.name, f"{r.clips_per_s:,.1f}", f"{r.tokens_per_s:,.0f}", f"{r.step_ms:.1f}",
                      f"{r.peak_mem_gb:.1f}" if r.peak_mem_gb is not None else "-",
                      f"{r.tflops:.1f}" if r.tflops else "-", f"{100 * r.mfu:.1f}%" if r.mfu else "-",
                      f"{r.clips_per_s / ref.clips_per_s:.2f}x" if ref else "")
    Console(width=170).print(table)
    print("command: python pretrain/tools/bench.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
