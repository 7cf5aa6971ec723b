#!/usr/bin/env bash
# bash pretrain/tools/gpu_bench.sh [OUT.md]: the prepared GPU benchmark (pretrain/tools/gpu_bench.py): on one
# H100/H200, in under 8 minutes, SSAST-Base and Audio-MAE-Base steps (ours vs official-style; bf16, compiled or not,
# activation checkpointing or not: clips/s, TFLOP/s, MFU, peak memory), the GPU fbank throughput and the data wait at
# 4 and 8 workers, written to one markdown table file with the device and date (default runs/bench/gpu-<date>.md).
# TESSERA_BENCH_TINY=1 runs it with tiny sizes, on a CPU too, in seconds. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
args=()
if [[ $# -gt 0 ]]; then args+=(--out "$1"); fi
if [[ "${TESSERA_BENCH_TINY:-0}" == 1 ]]; then args+=(--tiny); fi
exec "${PYTHON:-python}" pretrain/tools/gpu_bench.py "${args[@]}"
