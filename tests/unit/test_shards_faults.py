"""Faults around the shards: what breaks on disk, in the input or in a process, and what the user then sees.

Every case runs the real parts (real tars, audio files, subprocesses, mounts): a set whose tars are gone, a build
killed with ``kill -9``, a full or read-only disk, a Latin-1 CSV, a truncated WAV, a broken manifest. Bad input must
end in one ``error:`` line (or one-line :class:`BadInput`), nothing written may be lost, nothing may hang.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from launch.common.errors import BadInput
from launch.common.files import atomic_write, replacing
from shards.cli import main as build_main
from shards.clip import Clip
from shards.stream import ShardSetConfig, StreamConfig, eval_batches, failure_limit, open_shard_set, train_loader
from tests.fixtures.deadline import deadline
from tests.fixtures.mounts import tmpfs
from tests.fixtures.tiny_corpus import build_tiny

REPO = Path(__file__).resolve().parents[2]


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_files(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    """Same relative paths both ways, same bytes in each (names the files that differ)."""
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    different = [name for name in a if a[name] != b[name]]
    assert not different, different


def assert_same_tree(a: Path, b: Path) -> None:
    assert_same_files(tree_bytes(a), tree_bytes(b))


def run_build(argv: list[str], capsys) -> tuple[int, str]:
    """``python shards/build.py ARGV`` in this process: (exit status, stderr)."""
    rc = build_main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def error_line(stderr: str) -> str:
    """The one ``error:`` line a failed command must end with (progress bars may come before it)."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr
    return last


SYNTHETIC = ["synthetic", "--labelled", "24", "--val", "0", "--test", "0", "--unlabelled", "0", "--duration", "0.5",
             "--shard-size", "4"]


# ----------------------------------------------------------------------------------------------------------------------
# 1. a training set with no readable shard stops in one line instead of waiting forever


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("damage", ["deleted", "zero_bytes"])
def test_training_set_without_a_readable_shard_fails_in_one_line(tmp_path, caplog, workers, damage):
    out = tmp_path / "set"
    build_tiny(out, n=8, shard_size=4, seconds=0.1)
    for tar in out.glob("*.tar"):
        tar.unlink() if damage == "deleted" else tar.write_bytes(b"")
    cfg = StreamConfig(clip_seconds=0.1, batch_size=2, num_workers=workers, shuffle_buffer=2)
    with caplog.at_level(logging.WARNING, logger="shards.stream"), deadline(30):
        with pytest.raises(BadInput) as info:
            next(train_loader([ShardSetConfig(str(out), "train")], cfg))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert "set/train" in message and str(out) in message and "expected the readable tars" in message
    if workers == 0:  # one warning per failed shard, and a bounded number of them
        assert 0 < len(caplog.records) <= failure_limit(2)


def test_training_set_with_some_bad_shards_keeps_going(tmp_path):
    out = tmp_path / "set"
    build_tiny(out, n=12, shard_size=4, seconds=0.1)
    (out / "train-000000.tar").unlink()
    (out / "train-000001.tar").write_bytes(b"")
    cfg = StreamConfig(clip_seconds=0.1, batch_size=4, num_workers=0, shuffle_buffer=2)
    with deadline(30):
        batches = list(islice(train_loader([ShardSetConfig(str(out), "train")], cfg), 20))
    assert {k for b in batches for k in b.keys} == {f"tiny-{i:04d}" for i in range(8, 12)}


# ----------------------------------------------------------------------------------------------------------------------
# 2. kill -9 of a parallel build leaves no worker behind, and a rerun gives the clean build's bytes


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper is dead: PID 1 of a container may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_kill_9_of_a_parallel_build_leaves_no_orphan_and_a_rerun_completes(tmp_path, capsys):
    args = ["synthetic", "--labelled", "240", "--val", "0", "--test", "0", "--unlabelled", "0", "--duration", "0.5",
            "--shard-size", "6", "--workers", "2"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "shards/build.py", *args, "--out", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        end = time.time() + 60
        while time.time() < end and proc.poll() is None:
            workers = _children(proc.pid)
            if len(workers) >= 2 and any((out / ".build").glob("*.tar.json")):
                break
            time.sleep(0.02)
        assert proc.poll() is None and len(workers) >= 2, "the build ended before its workers could be seen"
        proc.kill()
        proc.wait()
        end = time.time() + 5
        while time.time() < end and any(_alive(w) for w in workers):
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)], "workers outlived the build"
    finally:
        for w in workers:  # only the processes this test started, by pid
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    assert not (out / "manifest.json").exists()
    rc, err = run_build([*args, "--out", out], capsys)
    assert rc == 0, err
    clean = tmp_path / "clean"
    assert run_build([*args, "--out", clean], capsys)[0] == 0
    assert_same_tree(out, clean)


# ----------------------------------------------------------------------------------------------------------------------
# 3. atomic writes get the umask's permissions, like any other file


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "manifest.json", "{}")
        with replacing(tmp_path / "encoder.pt") as tmp:
            torch.save({"w": torch.zeros(1)}, tmp)
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(previous)
    for name in ("manifest.json", "encoder.pt", "plain"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.pt", "manifest.json", "plain"]


# ----------------------------------------------------------------------------------------------------------------------
# 4. a shard deleted, truncated or replaced after the build is rebuilt by a rerun, with the same bytes


@pytest.mark.parametrize("damage", ["deleted", "truncated", "same_size_other_bytes"])
def test_rerun_rebuilds_a_damaged_shard(tmp_path, damage):
    out = tmp_path / "out"
    build_tiny(out, n=25, shard_size=10)
    before = tree_bytes(out)
    victim = out / "train-000001.tar"
    if damage == "deleted":
        victim.unlink()
    elif damage == "truncated":
        victim.write_bytes(before[victim.name][:5000])
    else:
        data = bytearray(before[victim.name])
        data[3000] ^= 0xFF
        victim.write_bytes(bytes(data))
    build_tiny(out, n=25, shard_size=10)
    assert_same_files(tree_bytes(out), before)  # the shard is back, byte-identical, and so is the manifest


def test_records_from_older_builds_are_accepted(tmp_path):
    out = tmp_path / "out"
    build_tiny(out, n=25, shard_size=10)
    for rec in (out / ".build").glob("*.tar.json"):  # as written before sizes and checksums were recorded
        record = json.loads(rec.read_text())
        del record["bytes"], record["sha1"]
        rec.write_text(json.dumps(record, sort_keys=True))
    before = tree_bytes(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    build_tiny(out, n=25, shard_size=10)
    assert_same_files(tree_bytes(out), before)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    (out / "train-000002.tar").unlink()  # existence is still checked
    build_tiny(out, n=25, shard_size=10)
    assert (out / "train-000002.tar").read_bytes() == before["train-000002.tar"]


# ----------------------------------------------------------------------------------------------------------------------
# 5. text that is not UTF-8


def _latin1_folder(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "clips"
    root.mkdir()
    sf.write(root / "a.wav", np.zeros(1600, np.float32), 16000)
    sf.write(root / "b.wav", np.zeros(1600, np.float32), 16000)
    labels = tmp_path / "labels.csv"
    labels.write_bytes("path,label,note\na.wav,dog,ok\nb.wav,cat,café\n".encode("latin-1"))
    return root, labels


def test_latin1_labels_csv_is_one_line_naming_file_and_line(tmp_path, capsys):
    root, labels = _latin1_folder(tmp_path)
    rc, err = run_build(["folder", "--root", root, "--labels", labels, "--out", tmp_path / "o"], capsys)
    assert rc == 2
    assert error_line(err) == (f"error: {labels}:3: byte 0xe9 is not UTF-8; expected a UTF-8 text file (re-save it as "
                               "UTF-8, e.g. iconv -f latin1 -t utf-8)")


def test_latin1_in_every_other_text_reader(tmp_path):
    from shards.sources.audioset import _datafile_lister, read_class_labels, read_segments
    from shards.sources.librispeech import read_speakers, read_transcripts

    segments = tmp_path / "eval_segments.csv"
    segments.write_bytes("# Segments csv\n# num_ytids=1\n# YTID, start_seconds, end_seconds, positive_labels\n"
                         "--PJHxphWEs, 30.000, 40.000, \"/m/09x0r\" # ü\n".encode("latin-1"))
    classes = tmp_path / "class_labels_indices.csv"
    classes.write_bytes("index,mid,display_name\n0,/m/09x0r,Spéech\n".encode("latin-1"))
    speakers = tmp_path / "SPEAKERS.TXT"
    speakers.write_bytes(";ID  |SEX| SUBSET |MINUTES| NAME\n14 | F | train-clean-360 | 25.03 | Zoë\n".encode("latin-1"))
    trans = tmp_path / "19-198.trans.txt"
    trans.write_bytes("19-198-0001 NORTHANGER ABBÉY\n".encode("latin-1"))
    datafile = tmp_path / "train.json"
    datafile.write_bytes('{"data": [\n{"wav": "Yé.wav", "labels": "/m/09x0r"}]}'.encode("latin-1"))
    for fn, path, line in [(lambda: list(read_segments(segments, {"/m/09x0r": "Speech"})), segments, 4),
                           (lambda: read_class_labels(classes), classes, 2), (lambda: read_speakers(speakers), speakers, 2),
                           (lambda: read_transcripts(trans), trans, 1),
                           (lambda: _datafile_lister(datafile, {"/m/09x0r": "Speech"}, tmp_path), datafile, 2)]:
        with pytest.raises(BadInput) as info:
            fn()
        assert str(info.value).startswith(f"{path}:{line}: byte 0x") and "expected a UTF-8 text file" in str(info.value)


# ----------------------------------------------------------------------------------------------------------------------
# 6. an output folder that cannot be written


def test_out_that_is_a_file_or_under_a_file(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("precious")
    rc, err = run_build([*SYNTHETIC, "--out", file], capsys)
    assert rc == 2 and error_line(err) == (f"error: {file}: is a file; expected a folder for the shards (new, or one an "
                                           "earlier build wrote)")
    rc, err = run_build([*SYNTHETIC, "--out", file / "sub"], capsys)
    assert rc == 2 and error_line(err) == (f"error: {file / 'sub'}: {file} is a file, not a folder; expected a path "
                                           "whose parents are folders")
    assert file.read_text() == "precious"


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder nothing can be created in: a read-only tmpfs for root (which ignores permission bits), else 0555."""
    if os.geteuid() == 0:
        with tmpfs(path, "1m", "ro"):
            yield path, "Read-only file system"
    else:
        path.mkdir()
        path.chmod(0o555)
        try:
            yield path, "Permission denied"
        finally:
            path.chmod(0o755)


def test_read_only_out_is_one_line(tmp_path, capsys):
    with read_only_folder(tmp_path / "ro") as (ro, reason):
        rc, err = run_build([*SYNTHETIC, "--out", ro / "shards"], capsys)
        assert rc == 2
        assert error_line(err) == (f"error: {ro / 'shards'}: cannot write {ro / 'shards'} ({reason}); expected a folder "
                                   "this user can write to")


def test_full_disk_is_one_line_and_a_rerun_resumes_to_the_same_bytes(tmp_path, capsys):
    clean = tmp_path / "clean"
    assert run_build([*SYNTHETIC, "--workers", "2", "--out", clean], capsys)[0] == 0
    size = sum(len(b) for b in tree_bytes(clean).values())
    with tmpfs(tmp_path / "disk", f"{size // 2 // 4096 * 4}k") as disk:
        out = disk / "shards"
        rc, err = run_build([*SYNTHETIC, "--workers", "2", "--out", out], capsys)
        assert rc == 2
        line = error_line(err)
        assert line.startswith(f"error: {out}: the disk is full (No space left on device) while writing ")
        assert line.endswith("free space and run the same command again: it resumes where it stopped")
        assert not (out / "manifest.json").exists() and any((out / ".build").glob("*.tar.json"))
        subprocess.run(["mount", "-o", f"remount,size={4 * size // 1024 + 64}k", str(disk)], check=True)
        rc, err = run_build([*SYNTHETIC, "--workers", "2", "--out", out], capsys)
        assert rc == 0 and "resuming" in err
        assert_same_tree(out, clean)


# ----------------------------------------------------------------------------------------------------------------------
# 7. an absurd --sample-rate


@pytest.mark.parametrize("rate", ["700000", "1", "7999"])
def test_sample_rate_out_of_range_is_one_line(tmp_path, capsys, rate):
    rc, err = run_build([*SYNTHETIC, "--out", tmp_path / "o", "--sample-rate", rate], capsys)
    assert rc == 2 and err.strip() == (f"error: --sample-rate {rate}: expected a rate in Hz between 8000 and 192000 "
                                       "(e.g. 16000 or 32000)")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------------------------
# 8. a broken manifest, wherever it is read


BROKEN_MANIFESTS = {
    "invalid_json": ('{"splits": {"train": ', ":1: not valid JSON (Expecting value, column 22); expected the manifest"),
    "a_list": ("[1, 2]", ": a JSON list, not an object; expected the manifest"),
    "no_shards": ('{"splits": {"train": {"count": 3, "sample_rate": 16000}}}',
                  ": split 'train' has no \"shards\" list; expected the manifest"),
    "shard_without_file": ('{"splits": {"train": {"shards": [{"count": 3}], "sample_rate": 16000}}}',
                           ": split 'train', shards[0]: no \"file\""),
    "shard_without_count": ('{"splits": {"train": {"shards": [{"file": "train-000000.tar"}], "sample_rate": 16000}}}',
                            ": split 'train', shards[0] (train-000000.tar): \"count\" is None; expected the number"),
    "no_rate": ('{"splits": {"train": {"shards": [{"file": "train-000000.tar", "count": 3}]}}}',
                ": split 'train': \"sample_rate\" is None; expected the shards' rate in Hz"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_MANIFESTS))
def test_broken_manifest_is_one_line_wherever_it_is_read(tmp_path, capsys, kind):
    from shards.default import SyntheticDataConfig, ensure_synthetic, synthetic_dir
    from shards.norm_stats import main as norm_stats_main

    text, expected = BROKEN_MANIFESTS[kind]
    out = tmp_path / "set"
    build_tiny(out, n=3, shard_size=3, seconds=0.1)
    manifest = out / "manifest.json"
    manifest.write_text(text)
    expected = f"{manifest}{expected}"
    for fn in (lambda: open_shard_set(ShardSetConfig(str(out), "train")),
               lambda: build_tiny(out, n=3, shard_size=3, seconds=0.1)):
        with pytest.raises(BadInput) as info:
            fn()
        assert "\n" not in str(info.value) and str(info.value).startswith(expected), str(info.value)
    assert manifest.read_text() == text, "a rerun must not overwrite what it cannot read"
    assert norm_stats_main([str(out)]) == 2
    assert error_line(capsys.readouterr().err).startswith(f"error: {expected}")
    cfg = SyntheticDataConfig(root=str(tmp_path / "data"))
    synthetic_dir(cfg, 16000).mkdir(parents=True)
    (synthetic_dir(cfg, 16000) / "manifest.json").write_text(text)
    with pytest.raises(BadInput, match="manifest.json"):
        ensure_synthetic(cfg, 16000)


# ----------------------------------------------------------------------------------------------------------------------
# 9. a WAV shorter than its header says is damaged: skipped and listed, not a short clip


def _wav(path: Path, frames: int, channels: int) -> bytes:
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (frames, channels)).astype(np.float32)
    sf.write(path, x, 16000, subtype="PCM_16")
    return path.read_bytes()


def test_truncated_wav_is_skipped_with_its_reason(tmp_path):
    cut_odd = tmp_path / "cut_odd.wav"
    data = _wav(cut_odd, 16000, 2)
    cut_odd.write_bytes(data[: 44 + 4 * 7000 + 3])  # mid-frame: 7000 frames and 3 bytes of the next
    overclaim = tmp_path / "overclaim.wav"
    data = bytearray(_wav(overclaim, 8000, 1))
    data[40:44] = (2 * 12000).to_bytes(4, "little")  # the data chunk claims 12000 frames, 8000 follow
    overclaim.write_bytes(bytes(data))
    whole = tmp_path / "whole.wav"
    _wav(whole, 4000, 2)
    extra = [Clip(key=p.stem, path=p, labels=("low",)) for p in (cut_odd, overclaim, whole)]
    manifest = build_tiny(tmp_path / "out", n=2, extra=extra)
    reasons = {s["key"]: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
    assert reasons == {"cut_odd": "truncated: header says 16000 frames, file has 7000",
                       "overclaim": "truncated: header says 12000 frames, file has 8000"}
    assert manifest["splits"]["train"]["count"] == 3  # the two tones and the whole stereo file


# ----------------------------------------------------------------------------------------------------------------------
# 10. nothing to build


def test_header_only_labels_csv_is_nothing_to_build(tmp_path, capsys):
    root, labels = _latin1_folder(tmp_path)
    labels.write_text("path,label\n")
    rc, err = run_build(["folder", "--root", root, "--labels", labels, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and err.strip() == (f"error: {labels}: a header but no data rows: nothing to build from it; expected a "
                                       "labels CSV with a header naming path (and optionally label, split, extra "
                                       "columns) and one row per clip")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_only_requested_split_empty_is_nothing_to_build(tmp_path, capsys):
    rc, err = run_build([*SYNTHETIC, "--split", "val", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and error_line(err) == ("error: synthetic: nothing to build: 'val' of this source list(s) no clips; "
                                           "expected at least one clip in the requested splits")
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = run_build(["folder", "--root", empty, "--out", tmp_path / "o2"], capsys)
    assert rc == 2 and "nothing to build: 'all'" in error_line(err)
    assert not (tmp_path / "o2" / "manifest.json").exists()


# ----------------------------------------------------------------------------------------------------------------------
# 11. determinism as the README states it: same input, same bytes, whatever --workers


def test_same_bytes_in_every_file_with_1_2_or_3_workers(tmp_path):
    for workers in (1, 2, 3):
        time.sleep(1.01 - time.time() % 1)  # each build in its own second: a timestamp anywhere would show
        build_tiny(tmp_path / str(workers), n=23, shard_size=4, seconds=0.2, workers=workers, splits=("train", "test"))
    assert_same_tree(tmp_path / "1", tmp_path / "2")
    assert_same_tree(tmp_path / "1", tmp_path / "3")


# ----------------------------------------------------------------------------------------------------------------------
# 13. evaluation rows carry their clip's global index


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    build_tiny(out, n=23, shard_size=4, seconds=0.1)  # 6 uneven shards
    return out


def _indices(out: Path, world: int, workers: int) -> tuple[list[int], list[int], list[tuple[int, str]]]:
    """Valid indices, invalid (non-padding) indices and (index, key) of valid rows over all ranks of one pass."""
    cfg = StreamConfig(clip_seconds=0.1, batch_size=3, num_workers=workers)
    valid, invalid, keyed = [], [], []
    for rank in range(world):
        for b in eval_batches(ShardSetConfig(str(out), "train"), cfg, rank=rank, world=world):
            assert b.index.dtype == torch.long and b.index.shape == (len(b),)
            for i, v, key in zip(b.index.tolist(), b.valid.tolist(), b.keys):
                (valid if v else invalid if i >= 0 else []).append(i)
                if v:
                    keyed.append((i, key))
    return valid, invalid, keyed


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_eval_index_is_each_clips_global_index(eval_set, world, workers):
    valid, invalid, keyed = _indices(eval_set, world, workers)
    assert sorted(valid) == list(range(23)) and not invalid
    assert all(key == f"tiny-{i:04d}" for i, key in keyed)


def test_batch_index_defaults_and_travels():
    from shards.stream import Batch

    b = Batch(torch.zeros(2, 4), torch.tensor([0, 1]), torch.ones(2, dtype=torch.bool), ["a", "b"], [{}, {}])
    assert b.index.tolist() == [-1, -1]
    b.index = torch.tensor([5, 7])
    assert b.to("cpu").index.tolist() == [5, 7]


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_tar_in_eval_gives_invalid_rows_in_place(tmp_path, workers):
    import tarfile

    out = tmp_path / "set"
    build_tiny(out, n=23, shard_size=4, seconds=0.1)
    victim = out / "train-000002.tar"  # clips 8..11
    with tarfile.open(victim) as tar:
        offset = tar.getmember("tiny-0010.cls").offset
    victim.write_bytes(victim.read_bytes()[: offset + 100])  # clips 10 and 11 lost, mid-header
    (out / "train-000004.tar").write_bytes(b"")  # clips 16..19: an empty file
    for world in (1, 2):
        valid, invalid, keyed = _indices(out, world, workers)
        assert sorted(valid + invalid) == list(range(23))
        assert sorted(invalid) == [10, 11, 16, 17, 18, 19]
        assert all(key == f"tiny-{i:04d}" for i, key in keyed)
