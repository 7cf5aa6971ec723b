"""``<method>.compile=true`` on the real loop: the blocks compiled in place train on DeepSpeed ZeRO 0-2 and give the
eager losses; and the prepared GPU benchmark (compiled rows among others) runs end to end in its tiny CPU mode.

The backend here is "aot_eager" (Dynamo capture + AOT autograd's forward/backward graphs, run by the eager kernels):
inductor, the users' default, needs a C++ build of every block on first use, about 100 s per block on the 2 CPU cores
that run this suite, which no test budget holds; on a GPU machine pretrain/tools/gpu_bench.sh times it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.config import load_pretrain_config
from pretrain.train import run
from tests.fixtures.pretrain_runs import tiny_overrides

STEPS = 3
REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
"""Relative: the captured graphs run the same ATen kernels as eager, in a different order of fusion-free ops."""


def _losses(tmp_path, name: str, extra: list[str], shards) -> list[float]:
    cfg = load_pretrain_config(tiny_overrides("audiomae", shards, tmp_path / name, steps=STEPS, split="train",
                                              extra=extra))
    return [r["loss"] for r in run(cfg)["metrics"] if "loss" in r]


def test_compiled_encoder_and_decoder_blocks_train_with_the_eager_losses_on_zero_0_to_2(tmp_path, tone_shards):
    """Audio-MAE (encoder blocks, unshifted and shifted Swin decoder blocks): eager on ZeRO-0 against compiled on
    ZeRO-0 and ZeRO-2 (ZeRO-1 shares ZeRO-2's optimizer class); the ZeRO-2 run also recomputes every other block
    (checkpointing around compiled blocks), and the compiled runs use the folded window attention (the GPU default)
    against the eager explicit one."""
    eager = _losses(tmp_path, "eager", ["deepspeed.zero_stage=0", "audiomae.window_attention=explicit"], tone_shards)
    assert len(eager) == STEPS and eager[-1] < eager[0]
    compiled = ["audiomae.compile=true", "audiomae.compile_backend=aot_eager", "audiomae.window_attention=folded"]
    for stage, extra in ((0, []), (2, ["audiomae.activation_checkpointing=2"])):
        losses = _losses(tmp_path, f"zero{stage}", [f"deepspeed.zero_stage={stage}", *compiled, *extra], tone_shards)
        assert losses == pytest.approx(eager, rel=TOLERANCE), f"ZeRO-{stage}"


def test_the_gpu_benchmark_writes_its_tables_in_tiny_mode_on_a_cpu(tmp_path):
    """``TESSERA_BENCH_TINY=1 bash pretrain/tools/gpu_bench.sh OUT``: every step row measured (none failed or
    skipped), the fbank rows, the data wait at 1 and 2 workers, device and date in one markdown file."""
    out = tmp_path / "bench.md"
    env = {**os.environ, "TESSERA_BENCH_TINY": "1", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "pretrain/tools/gpu_bench.sh", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert re.search(r"^## GPU benchmark: CPU \(1 threads\), \d{4}-\d\d-\d\d \d\d:\d\d UTC$", text, re.M)
    steps = re.findall(r"^\| ((?:SSAST|Audio-MAE) [^|]+) \| ([\d.]+) \| ([\d,.]+) \|", text, re.M)
    labels = [name.strip() for name, *_ in steps]
    assert len(labels) == 11 and "failed" not in text and "skipped" not in text, text
    assert {"SSAST official-style", "Audio-MAE ours, bf16, compiled (eager) + checkpointing",
            "Audio-MAE ours, bf16, explicit windows", "SSAST ours, bf16, checkpointing every block"} <= set(labels)
    assert all(float(ms) > 0 for _, ms, _ in steps)
    assert len(re.findall(r"^\| \(b\) (?:kaldi.fbank loop|batched fbank) \| cpu", text, re.M)) == 4
    assert re.findall(r"^\| (\d) \| 2 x 1 s \| \d+ \| [\d.]+% \|", text, re.M) == ["1", "2"]
