"""Training-step benchmark pieces: our SSAST / Audio-MAE step against the official-style path, same size and batch.

Ours: one batched SSAST pass (both masks), fused SDPA attention, bf16 autocast on GPU, fused AdamW; optionally compiled
blocks, activation checkpointing, and Audio-MAE's window attention explicit or folded (pretrain/swin.py).
Reference (pretrain/tools/reference_ssast.py and reference_mae.py, written the way the released code runs): naive
softmax(QK^T) attention, two SSAST passes per step with per-sample Python masking, fp32 for SSAST; fp16 autocast +
GradScaler for Audio-MAE. Both start from the log-mel batch (features are benchmarked by shards/tools/bench.py).

FLOPs are counted once per method, on our plain step (eager, explicit window attention, no recomputation), with
torch's FlopCounterMode: 2 m n k per matmul and convolution, SDPA as its two matmuls, the backward twice the forward;
for a ViT block of width D on L tokens that is 3 x (24 B L D^2 + 4 B L^2 D) per step. The same count serves every
row of the method, so TFLOP/s and MFU compare the same useful work (MFU, not HFU: recomputation and the folded
attention's extra columns are not counted). MFU = TFLOP/s / the device's dense bf16 peak (:data:`PEAK_TFLOPS`).

Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` over the timed steps (weights, optimizer state,
activations); on a CPU the peak of tensor memory allocated during one step above what was live at its start,
summed from torch.profiler's allocation and free events (:func:`cpu_step_peak_bytes`).
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

PEAK_TFLOPS = {"H100 PCIe": 756.5, "H100 NVL": 835.5, "H200 NVL": 835.5, "H100": 989.4, "H200": 989.4,
               "A100": 312.0, "L40S": 362.1, "A10": 125.0}
"""Dense bf16 tensor-core peak per device (TFLOP/s, NVIDIA datasheets; SXM unless named): the MFU denominator. The
first name contained in ``torch.cuda.get_device_name`` wins, so the specific ones come first."""


def device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


@dataclass(frozen=True)
class Sizes:
    """The benchmark's model and batch."""

    size: str
    depth: int
    """Encoder blocks (0: the size's depth)."""
    batch: int
    frames: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    mel: int = 128
    patch: int = 16


BASE = Sizes("base", 0, 64, 1024, 512, 16, 16)
"""The papers' pretraining models: ViT-B on 1024 x 128 (512 patches); Audio-MAE's 16-block Swin decoder."""
CPU = Sizes("tiny", 2, 4, 128, 128, 2, 4)
TINY = Sizes("tiny", 1, 2, 64, 32, 2, 2, mel=32)
"""Seconds on a CPU: checks the benchmark's code, measures nothing."""


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


def cpu_step_peak_bytes(step: Callable[[], None]) -> int:
    """Peak tensor memory allocated during one CPU step above what was live at its start: torch.profiler records
    each allocation in the op that made it and each free (in an op, or as a ``[memory]`` event); their running sum in
    time order is the live memory."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for event in sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def time_step(step: Callable[[], None], device: torch.device, warmup: int,
              iters: int) -> tuple[float, float | None, float]:
    """(median seconds per step, peak memory in GB, wall seconds of the first step: compilation, caches). GPU: CUDA
    events; CPU: the process's CPU time (one thread), which other processes on a shared machine barely change,
    unlike the wall clock."""
    first = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first = time.perf_counter() - first
    for _ in range(warmup - 1):
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
            t = time.process_time()
            step()
            times.append(time.process_time() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = cpu_step_peak_bytes(step) / 2**30
    return statistics.median(times), peak, first


# ------------------------------------------------------------------------------------------------------- the models
def ours_model(method: str, sizes: Sizes, device: torch.device, execution=None,
               window_attention: str = "auto") -> nn.Module:
    """Our SSAST (400 of 512 masked, scaled to the grid) or Audio-MAE (local decoder), blocks per ``execution``."""
    from pretrain.encoder import BlockExecution, EncoderConfig, apply_block_execution

    common = dict(size=sizes.size, depth=sizes.depth, target_frames=sizes.frames, num_mel_bins=sizes.mel,
                  patch_freq=sizes.patch, patch_time=sizes.patch, stride_freq=sizes.patch, stride_time=sizes.patch)
    if method == "ssast":
        from pretrain.ssast import SSAST, SSASTConfig

        enc = EncoderConfig(cls_tokens=2, **common)
        model = SSAST(SSASTConfig(encoder=enc, mask_patches=int(round(enc.num_patches * 400 / 512))))
    else:
        from pretrain.audiomae import AudioMAE, AudioMAEConfig

        enc = EncoderConfig(cls_tokens=1, pos_embed="sincos", token_order="time", **common)
        model = AudioMAE(AudioMAEConfig(encoder=enc, decoder_dim=sizes.decoder_dim, decoder_depth=sizes.decoder_depth,
                                        decoder_heads=sizes.decoder_heads, window_attention=window_attention))
    return apply_block_execution(model.to(device), execution or BlockExecution())


def tokens_per_clip(method: str, sizes: Sizes) -> int:
    n = (sizes.frames // sizes.patch) * (sizes.mel // sizes.patch)
    return 2 * n if method == "ssast" else n  # SSAST: two passes over all patches


def reference_step(method: str, sizes: Sizes, fbank: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """The official-style step at the same size and batch."""
    from pretrain.encoder import MODEL_SIZES

    if method == "ssast":
        from pretrain.tools.reference_ssast import OfficialAST

        ref = OfficialAST(fshape=sizes.patch, tshape=sizes.patch, fstride=sizes.patch, tstride=sizes.patch,
                          input_fdim=sizes.mel, input_tdim=sizes.frames, model_size=sizes.size,
                          depth=sizes.depth or None).to(device)
        n = (sizes.frames // sizes.patch) * (sizes.mel // sizes.patch)
        return make_reference_ssast_step(ref, fbank, int(round(n * 400 / 512)), cluster=True)
    from pretrain.tools.reference_mae import OfficialAudioMAE

    dim, depth, heads = MODEL_SIZES[sizes.size]
    ref = OfficialAudioMAE(img_size=(sizes.frames, sizes.mel), patch_size=sizes.patch, embed_dim=dim,
                           depth=sizes.depth or depth, num_heads=heads, decoder_embed_dim=sizes.decoder_dim,
                           decoder_num_heads=sizes.decoder_heads, decoder_mode=1, local_depth=sizes.decoder_depth,
                           norm_pix_loss=True).to(device)
    return make_reference_mae_step(ref, fbank, device, 0.8)


def make_ours_step(model: nn.Module, fbank: torch.Tensor, device: torch.device, dtype: torch.dtype) -> Callable[[], None]:
    """forward + backward + fused AdamW of our model, masks drawn on the CPU as in training."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
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
