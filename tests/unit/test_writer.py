"""Shard writer: layout, manifest, read-back with plain webdataset and tar, determinism, resume, bad input."""
from __future__ import annotations

import filecmp
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from launch.common.errors import BadInput
from shards.clip import Clip, Corpus
from shards.writer import MANIFEST, BuildOptions, build
from tests.fixtures.tiny_corpus import CLASSES, build_tiny, tiny_corpus

REPO = Path(__file__).resolve().parents[2]


def read_back(out: Path, split: str = "train") -> list[dict]:
    urls = sorted(str(p) for p in out.glob(f"{split}-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_layout_manifest_and_plain_readback(tmp_path):
    manifest = build_tiny(tmp_path, n=25, shard_size=10)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    split = manifest["splits"]["train"]
    assert split["count"] == 25 and [s["count"] for s in split["shards"]] == [10, 10, 5]
    assert split["label_histogram"] == {"low": 9, "mid": 8, "high": 8}
    assert split["classes"] == CLASSES and split["sample_rate"] == 16000
    assert split["hours"] == pytest.approx(25 * 0.5 / 3600, abs=1e-4)
    assert manifest["build_args"]["shard_size"] == 10
    samples = read_back(tmp_path)
    assert [s["__key__"] for s in samples] == [f"tiny-{i:04d}" for i in range(25)]
    for i, s in enumerate(samples):
        meta = json.loads(s["json"])
        assert int(s["cls"]) == i % 3 == meta["label_index"] and meta["label"] == CLASSES[i % 3]
        assert meta["dataset"] == "tiny" and meta["split"] == "train" and meta["device"] == f"d{i % 2}"
        x, rate = sf.read(io.BytesIO(s["flac"]), dtype="float32")
        assert rate == 16000 and len(x) == 8000 and meta["duration"] == 0.5
    # the standard tar tool sees the same members
    names = subprocess.run(["tar", "-tf", str(tmp_path / "train-000002.tar")], capture_output=True, text=True,
                           check=True).stdout.split()
    assert names == [f"tiny-{i:04d}.{ext}" for i in range(20, 25) for ext in ("cls", "flac", "json")]


def test_same_input_same_bytes_with_any_worker_count(tmp_path):
    build_tiny(tmp_path / "a", workers=1)
    build_tiny(tmp_path / "b", workers=2)
    for p in (tmp_path / "a").glob("*.tar"):
        assert filecmp.cmp(p, tmp_path / "b" / p.name, shallow=False)


def test_resample_once_to_target_rate(tmp_path):
    manifest = build_tiny(tmp_path, n=3, rate=32000)
    assert manifest["sample_rate"] == 32000
    x, rate = sf.read(io.BytesIO(read_back(tmp_path)[0]["flac"]))
    assert rate == 32000 and len(x) == 16000


def _bad_clips(tmp_path: Path) -> list[Clip]:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00not really a wave file" * 3)
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros((0,), np.float32), 16000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    return [Clip(key=p.stem, path=p, labels=("low",)) for p in (empty, garbage, zero, nan)] + [
        Clip(key="gone", path=tmp_path / "gone.wav", labels=("low",), meta={"missing": "not in the audio folder"})]


def test_bad_audio_is_skipped_and_listed(tmp_path, capsys):
    out = tmp_path / "out"
    manifest = build_tiny(out, n=4, extra=_bad_clips(tmp_path))
    split = manifest["splits"]["train"]
    assert split["count"] == 4 and split["listed"] == 9
    reasons = {s["key"]: s["reason"] for s in split["skipped"]}
    assert set(reasons) == {"empty", "garbage", "zero", "nan", "gone"}
    assert "non-finite" in reasons["nan"] and "missing" in reasons["gone"] and "empty" in reasons["zero"]
    assert [s["__key__"] for s in read_back(out)] == [f"tiny-{i:04d}" for i in range(4)]


def test_bad_keys_and_changed_arguments_are_refused(tmp_path):
    dotted = Corpus("x", ["a"], {"train": lambda: iter([Clip(key="a.b", labels=("a",))])})
    with pytest.raises(BadInput, match="contains a dot"):
        build(dotted, tmp_path / "d", ["train"], BuildOptions(), root=None, source_args={})
    twice = Corpus("x", ["a"], {"train": lambda: iter([Clip(key="k"), Clip(key="k")])})
    with pytest.raises(BadInput, match="duplicate clip key 'k'"):
        build(twice, tmp_path / "t", ["train"], BuildOptions(), root=None, source_args={})
    build_tiny(tmp_path / "o", n=5)
    before = {p.name: p.read_bytes() for p in (tmp_path / "o").glob("*.tar")}
    with pytest.raises(BadInput, match="sample_rate: 16000 -> 32000"):
        build_tiny(tmp_path / "o", n=5, rate=32000)
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "o").glob("*.tar")}
    with pytest.raises(BadInput, match="unknown split 'nope'"):
        build(tiny_corpus(), tmp_path / "o", ["nope"], BuildOptions(), root=None, source_args={"n": 5})


def test_kill_9_mid_build_then_resume_loses_and_duplicates_nothing(tmp_path):
    n = 60
    reference = tmp_path / "ref"
    build_tiny(reference, n=n, shard_size=5)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "tests.fixtures.tiny_corpus", str(out), str(n)], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / ".build").glob("*.json"))) < 4:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "an interrupted build must not look complete"
    finished = len(list(out.glob("train-*.tar")))
    assert 0 < finished < 12
    build_tiny(out, n=n, shard_size=5, workers=2)
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(p.name for p in reference.glob("*.tar"))
    for p in reference.glob("*.tar"):
        assert filecmp.cmp(p, out / p.name, shallow=False), p.name
    keys = [s["__key__"] for s in read_back(out)]
    assert keys == [f"tiny-{i:04d}" for i in range(n)]


def test_cli_reports_bad_input_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "shards/build.py", "tau22", "--root", str(tmp_path / "nope"), "--out",
                        str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope" in r.stderr and "no such directory" in r.stderr


# ----------------------------------------------------------------------------------------------------------------------
# Job arrays (shards.cluster): the range plan, and ranges built apart merging into the one-machine set

SYNTHETIC = ["synthetic", "--labelled", "8", "--val", "2", "--test", "0", "--unlabelled", "0", "--duration", "0.1",
             "--shard-size", "2"]
"""5 shards: labelled-000000..000003, val-000000."""


def _synthetic(out: Path, *flags: str):
    from shards.cli import make_parser

    return make_parser("synthetic").parse_args([*SYNTHETIC, "--out", str(out), *flags])


def _visible(out: Path) -> dict[str, bytes]:
    """What readers see of a shard set: the tars and the manifest."""
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.mark.parametrize("count,tasks", [(0, 3), (1, 4), (7, 3), (8, 4), (5, 1), (3, 5), (1000, 7)])
def test_plan_ranges_cover_every_shard_once_in_order(count, tasks):
    from shards.cluster import plan_ranges

    ranges = plan_ranges(count, tasks)
    assert [i for r in ranges for i in r] == list(range(count))
    sizes = [len(r) for r in ranges]
    assert len(ranges) == min(count, tasks) and all(sizes)  # more tasks than shards: the extra ones are left out
    assert sizes == sorted(sizes, reverse=True) and max(sizes, default=0) - min(sizes, default=0) <= 1
    with pytest.raises(ValueError, match="tasks >= 1"):
        plan_ranges(count, 0)


def test_compact_names_runs_per_split():
    from shards.cluster import compact

    names = ["labelled-000000.tar", "labelled-000001.tar", "labelled-000003.tar", "val-000000.tar"]
    assert compact(names) == "labelled-000000..000001, labelled-000003, val-000000"


def test_ranges_built_apart_give_the_one_machine_bytes_and_a_rerun_builds_only_what_is_missing(tmp_path, capsys):
    from shards.cli import run

    run(_synthetic(tmp_path / "one", "--workers", "1"))
    reference = _visible(tmp_path / "one")
    out = tmp_path / "array"
    jobs = run(_synthetic(out, "--cluster", "debug", "--nodes", "3", "--workers", "1", "--no-wait"))
    assert len(jobs) == 3
    jobs[0].result()
    jobs[2].result()  # task 1 never runs, as if killed
    assert not (out / MANIFEST).exists(), "a set with a range missing must not look complete"
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    assert sorted(first) == ["labelled-000000.tar", "labelled-000001.tar", "val-000000.tar"]
    capsys.readouterr()
    run(_synthetic(out, "--cluster", "debug", "--nodes", "3", "--workers", "1"))  # the same command again
    err = capsys.readouterr().err
    assert "5 shards, 3 done, 2 to build" in err and "labelled-000002..000003" not in err  # 2 tasks of 1
    assert "--nodes 3: 2 shard(s) to build, so 2 task(s)" in err
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar") if p.name in first} == first
    assert _visible(out) == reference  # tars and manifest.json, byte for byte
    (out / MANIFEST).unlink()  # a last task killed between its records and the manifest
    jobs_file = (out / ".build" / "jobs.txt").read_text()
    run(_synthetic(out, "--cluster", "debug", "--nodes", "3"))
    assert "5 shards, 5 done, 0 to build" in capsys.readouterr().err
    assert _visible(out) == reference and (out / ".build" / "jobs.txt").read_text() == jobs_file  # nothing submitted


def test_a_range_task_stops_between_shards_and_refuses_another_corpus(tmp_path):
    import threading

    from rich.console import Console

    from shards.cli import load_inputs
    from shards.cluster import RangeRequest, plan_digest, run_range
    from shards.writer import list_shards

    inputs = load_inputs(_synthetic(tmp_path / "o", "--workers", "1"))
    shards, _ = list_shards(inputs.corpus, inputs.out, inputs.splits, inputs.options, inputs.root)
    request = RangeRequest(_synthetic(tmp_path / "o"), tuple(t.name for t in shards), plan_digest(shards), 0, 1, 1)
    console = Console(stderr=True, quiet=True)
    stop = threading.Event()
    stop.set()  # SLURM's warning before the time limit: the task returns so that the launcher's Job requeues it
    assert run_range(inputs, request, console, stop) == {"task": 0, "stopped_at": 0}
    assert not list(inputs.out.glob("*.tar")) and not (inputs.out / MANIFEST).exists()
    other = RangeRequest(request.args, request.shards, "0" * 40, 0, 1, 1)
    with pytest.raises(BadInput, match="this node lists other clips than the submitting machine"):
        run_range(inputs, other, console)
    assert run_range(inputs, request, console)["complete"] and (inputs.out / MANIFEST).exists()


def test_array_bad_input_is_one_line_and_dry_run_submits_nothing(tmp_path, capsys):
    from shards.cli import main

    out = tmp_path / "o"
    assert main([*SYNTHETIC, "--out", str(out), "--nodes", "0"]) == 2
    assert capsys.readouterr().err == "error: --nodes 0: expected an integer >= 1\n" and not out.exists()
    assert main([*SYNTHETIC, "--out", str(out), "--nodes", "10", "--cluster", "local", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "--nodes 10: 5 shard(s) to build, so 5 task(s)" in err and "local job array: 5 task(s)" in err
    assert not out.exists()
    build_tiny(out, n=4)  # a folder holding another build
    capsys.readouterr()
    assert main([*SYNTHETIC, "--out", str(out), "--nodes", "2", "--cluster", "debug"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds shards built with other arguments (source: 'tiny' -> " in err
