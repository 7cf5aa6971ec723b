"""finetune/tools/results.py reuses a finished run by its folder alone, so a folder of runs made with other settings
must be refused before anything trains (it was silently reused: a --stride 16 benchmark over a folder of stride-10
runs printed the old figures as new ones)."""
import json
import subprocess
import sys
from pathlib import Path

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
