"""finetune/tools/results.py reuses a finished run by its folder alone, so a folder of runs made with other settings
must be refused before anything trains (it was silently reused: a --stride 16 benchmark over a folder of stride-10
runs printed the old figures as new ones)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.config import load_finetune_config
from launch.common.errors import BadInput
from launch.runtime.config import to_yaml

REPO = Path(__file__).resolve().parents[2]


def _results(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "finetune/tools/results.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_a_folder_of_runs_with_other_settings_is_refused_in_one_line_and_left_as_it_was(tmp_path):
    record = tmp_path / "benchmark.json"
    old = {"steps": 600, "pretrain_steps": 3000, "depth": 4, "stride": 10}
    record.write_text(json.dumps(old))
    (tmp_path / "pretraining").mkdir()
    proc = _results("--out", str(tmp_path), "--tables", "devices")  # the default stride is 16
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert str(tmp_path) in line and "--stride 10 -> 16" in line and "--out" in line
    assert json.loads(record.read_text()) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmark.json", "pretraining"]


def test_a_damaged_settings_record_is_one_line_naming_it(tmp_path):
    for text, says in (("{", "unreadable"), ("[600]", "expected a JSON object")):
        (tmp_path / "benchmark.json").write_text(text)
        proc = _results("--out", str(tmp_path), "--steps", "5")
        assert proc.returncode == 2
        [line] = proc.stderr.strip().splitlines()
        assert str(tmp_path / "benchmark.json") in line and says in line


def test_finished_runs_without_a_settings_record_are_refused_not_reused(tmp_path):
    """A folder of an older results.py (no benchmark.json): its settings are unknown, so none of it is reused."""
    run = tmp_path / "pretraining" / "ssast-seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    proc = _results("--out", str(tmp_path), "--tables", "pretraining")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert str(tmp_path) in line and "no benchmark.json" in line
    assert not (tmp_path / "benchmark.json").exists()


def test_flags_are_range_checked_before_anything_runs(tmp_path):
    proc = _results("--out", str(tmp_path / "out"), "--stride", "0")
    assert proc.returncode == 2 and "--stride" in proc.stderr
    proc = _results("--out", str(tmp_path / "out"), "--tables", "pretraining,control")
    assert proc.returncode == 2 and "'control' is a row of the semisup table" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_finished_run_of_another_config_is_refused_not_reused(tmp_path):
    """Below the settings record: each finished run's config.yaml is compared with the one the benchmark plans (a
    changed config default, or a run folder copied in, would otherwise be reused as it is)."""
    spec = importlib.util.spec_from_file_location("results_tool", REPO / "finetune/tools/results.py")
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    run_dir = tmp_path / "devices" / "1-seed0"
    run_dir.mkdir(parents=True)
    stride_16 = ["ckpt=none", "encoder.stride_freq=16", "encoder.stride_time=16"]
    made = load_finetune_config([f"run_dir={run_dir}", "log.every_steps=100", *stride_16])
    (run_dir / "config.yaml").write_text(to_yaml(made))
    (run_dir / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    assert results._finetune(run_dir, stride_16)["accuracy"] == 0.5  # the same config: reused
    with pytest.raises(BadInput, match=r"1-seed0: holds a run of another config \(encoder.stride_freq: 16 -> 10"):
        results._finetune(run_dir, ["ckpt=none", "encoder.stride_freq=10", "encoder.stride_time=16"])
    assert json.loads((run_dir / "metrics.json").read_text()) == {"accuracy": 0.5}
