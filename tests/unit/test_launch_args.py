"""Launcher flags and the three entry scripts (run by path, so the sys.path trampoline is exercised)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launch.common.errors import BadInput
from launch.submit import parse_time

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text,minutes", [("24:00:00", 1440), ("0:30:00", 30), ("1-00:00:00", 1440), ("90", 90),
                                          ("10:30", 11), ("00:00:05", 1)])
def test_parse_time(text, minutes):
    assert parse_time(text) == minutes


def test_parse_time_refuses_garbage():
    with pytest.raises(BadInput, match="--time 'soon'"):
        parse_time("soon")


@pytest.mark.parametrize("script", ["shards/build.py", "launch/pretrain.py", "finetune/layerwise.py",
                                    "finetune/pseudolabel.py", "finetune/predict.py", "finetune/export.py"])
def test_entry_scripts_run_by_path(script):
    for cwd in (REPO, REPO / Path(script).parent):
        path = REPO / script
        r = subprocess.run([sys.executable, str(path), "--help"], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "usage:" in r.stdout
        if script != "shards/build.py":  # the usage line names the script that was run, not another entry
            assert f"usage: python {script}" in r.stdout


def test_unknown_flag_and_key_fail_in_one_line_before_submitting(capsys):
    """The command as a user runs it prints one line (no warnings around it); the other cases run the same entry
    in-process (what the command calls), which keeps them fast."""
    r = subprocess.run([sys.executable, "launch/pretrain.py", "--cluster", "local", "--dry-run", "--nodez", "4"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "unknown option '--nodez'" in lines[0], r.stderr
    from launch.pretrain import main

    for extra, expected in ((["optim.lrr=1"], "optim.lrr"),
                            (["optim.lr=fast"], "optim.lr"),
                            (["steps"], "expected key=value"),
                            (["--nodes", "0"], "--nodes 0: expected an integer >= 1"),
                            (["--nodes", "-2"], "--nodes -2: expected an integer >= 1"),
                            (["steps=0"], "steps=0: expected at least 1 optimizer step")):
        assert main(["--cluster", "local", "--dry-run", *extra]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize("command,script", [("tessera-shards", "shards/build.py"),
                                            ("tessera-pretrain", "launch/pretrain.py"),
                                            ("tessera-finetune", "finetune/layerwise.py"),
                                            ("tessera-pseudolabel", "finetune/pseudolabel.py"),
                                            ("tessera-predict", "finetune/predict.py"),
                                            ("tessera-export", "finetune/export.py")])
def test_console_scripts_are_the_entry_scripts(command, script):
    """pyproject's console scripts run the same commands as ``python path/to/script.py`` (same options)."""
    exe = Path(sys.executable).parent / command
    assert exe.exists(), f"{command} is not installed next to {sys.executable} (pip install -e .)"
    by_name = subprocess.run([str(exe), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    by_path = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert by_name.returncode == 0 and by_path.returncode == 0, by_name.stderr
    options = lambda text: sorted(w for w in text.split() if w.startswith("--"))  # noqa: E731
    assert options(by_name.stdout) == options(by_path.stdout)
    if script != "shards/build.py":
        assert f"usage: {command}" in by_name.stdout
