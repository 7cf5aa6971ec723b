"""Training-step benchmark: our SSAST / Audio-MAE step against the official-style path, same size and batch.

Ours: one batched SSAST pass (both masks), fused SDPA attention, bf16 autocast on GPU, fused AdamW.
Reference (pretrain/tools/reference_ssast.py and reference_mae.py, written the way the released code runs): naive
softmax(QK^T) attention, two SSAST passes per step with per-sample Python masking, fp32 for SSAST; fp16 autocast +
GradScaler for Audio-MAE. Both start from the log-mel batch (features are benchmarked by shards/tools/bench.py).
FLOPs are counted once on our model's step with torch's FlopCounterMode and used for both paths, so MFU compares the
same useful work.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# Dense bf16 peak per device (TFLOP/s, datasheet): the MFU denominator.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}


def device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


@dataclass
class StepResult:
    name: str
    clips_per_s: float
    tokens_per_s: float
    step_ms: float
    peak_mem_gb: float | None
    tflops: float | None
    mfu: float | None


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs of one training step (forward + backward), as torch's FlopCounterMode counts matmuls/convs/attention."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def time_step(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> tuple[float, float | None]:
    """Median seconds per step and peak memory (GB, GPU only)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak


def make_ours_step(model: nn.Module, fbank: torch.Tensor, device: torch.device, dtype: torch.dtype) -> Callable[[], None]:
    """forward + backward + fused AdamW of our model, masks drawn on the CPU as in training."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    def step() -> None:
        masks = [m.to(device, non_blocking=True) for m in model.draw_masks(fbank.shape[0], gen)]
        with autocast:
            out = model(fbank, *masks)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def make_reference_ssast_step(model: nn.Module, fbank: torch.Tensor, mask_patches: int, cluster: bool) -> Callable[[], None]:
    """src/traintest_mask.py: two full passes (mpc, mpg) with independent Python-loop masks, fp32, Adam."""
    from pretrain.tools.reference_ssast import official_joint_loss

    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-7, betas=(0.95, 0.999))

    def step() -> None:
        loss = official_joint_loss(model, fbank, mask_patch=mask_patches, cluster=cluster)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def make_reference_mae_step(model: nn.Module, fbank: torch.Tensor, device: torch.device, ratio: float) -> Callable[[], None]:
    """engine_pretrain.py: fp16 autocast + GradScaler, AdamW(0.9, 0.95), naive attention."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.float16) if device.type == "cuda" else nullcontext()
    imgs = fbank.unsqueeze(1)  # [B, 1, T, F]

    def step() -> None:
        with autocast:
            loss = model(imgs, mask_ratio=ratio)[0]
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def result(name: str, seconds: float, batch: int, tokens_per_clip: int, flops: int, peak_mem: float | None,
           peak_tflops: float | None) -> StepResult:
    tflops = flops / seconds / 1e12 if flops else None
    mfu = tflops / peak_tflops if (tflops and peak_tflops) else None
    return StepResult(name, batch / seconds, batch * tokens_per_clip / seconds, seconds * 1e3, peak_mem, tflops, mfu)
