"""Prediction (``finetune/predict.py``) with a real fine-tuned classifier, on real audio files and real shards,
through the launcher (in this process, and as 2 local tasks)."""
from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from finetune.config import load_finetune_config
from finetune.inference import WindowBatcher, load_predict_config, plan, predict_share
from finetune.model import load_classifier
from finetune.predict import ENTRY as PREDICT
from finetune.recordings import FileItems, list_inputs, natural_key, shard_filename, share, window_starts
from finetune.train import run as finetune_run
from launch.submit import submit
from shards.features import build_features

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, scene_shards) -> Path:
    """A fine-tuning run folder: 4 steps of a 1-block frame-token encoder on the synthetic scenes, tested on their
    test split (its metrics.json is what the shard prediction must reproduce)."""
    run = tmp_path_factory.mktemp("ft") / "run"
    split = lambda name: f"{{path: {scene_shards}, split: {name}}}"  # noqa: E731
    finetune_run(load_finetune_config([
        "ckpt=none", f"run_dir={run}", "steps=4", "eval_every=4", f"data.train=[{split('labelled')}]",
        f"data.val={split('val')}", f"data.test={split('test')}", "data.stream.num_workers=0", "optim.lr=1e-3",
        "optim.warmup_steps=0", "scratch_encoder.depth=1", "scratch_encoder.patch_freq=128",
        "scratch_encoder.patch_time=2", "encoder.stride_freq=128", "encoder.stride_time=2", "log.tensorboard=false",
        "log.progress=false"]))
    return run


def _predict(*items: str, cluster: str = "debug", tasks: int = 1):
    return submit(PREDICT, ["--cluster", cluster, "--tasks-per-node", str(tasks), "--time", "0:10:00", *items])


def _test_clips(shards: Path, n: int) -> list[tuple[dict, np.ndarray]]:
    """The first ``n`` clips of the scene test split as (metadata, samples at 16 kHz)."""
    out = []
    with tarfile.open(shards / "test-000000.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name in [n for n in members if n.endswith(".flac")][:n]:
            x, rate = sf.read(io.BytesIO(tar.extractfile(members[name]).read()), dtype="float32")
            meta = json.loads(tar.extractfile(members[name.replace(".flac", ".json")]).read())
            assert rate == 16000
            out.append((meta, x))
    return out


def _independent_probs(run: Path, path: Path, clip: int, hop: int) -> np.ndarray:
    """Decode with soundfile, average channels, resample with torchaudio, cut windows by hand, then the run's
    features and classifier, softmax, mean over windows."""
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if rate != 16000:
        x = AF.resample(torch.from_numpy(x), rate, 16000).numpy()
    starts = [0] if len(x) <= clip else list(range(0, len(x) - clip + 1, hop))
    if starts[-1] + clip < len(x):  # the tail: one more window, ending where the file ends
        starts.append(len(x) - clip)
    waves = np.zeros((len(starts), clip), np.float32)
    for k, s in enumerate(starts):
        piece = x[s : s + clip]
        waves[k, : len(piece)] = piece
    model, _ = load_classifier(run / "best.pt")
    features = build_features(load_finetune_config([f"config={run / 'config.yaml'}"]).data.features).eval()
    with torch.no_grad():
        return model.eval()(features(torch.from_numpy(waves))).softmax(-1).double().mean(0).numpy()


def _rows(path: Path, delimiter: str) -> list[list[str]]:
    return list(csv.reader(path.read_text().splitlines(), delimiter=delimiter))


def test_a_folder_of_files_gives_the_models_own_probabilities_as_a_dcase_submission_on_one_or_two_ranks(
        classifier, scene_shards, tmp_path, capsys):
    clips = _test_clips(scene_shards, 5)
    audio = tmp_path / "eval" / "audio"
    (audio / "sub").mkdir(parents=True)
    sf.write(audio / "2.wav", clips[0][1], 16000, subtype="PCM_16")
    sf.write(audio / "10.flac", clips[1][1], 16000)
    sf.write(audio / "sub" / "1.wav", clips[2][1], 16000, subtype="PCM_16")
    long = np.concatenate([clips[3][1], clips[4][1], clips[0][1][:8000]])  # 2.5 s: windows at 0, 0.5 .. 1.5 s
    sf.write(audio / "long.flac", long, 16000)
    stereo = AF.resample(torch.from_numpy(np.stack([clips[1][1], clips[2][1]], 1).T.copy()), 16000, 22050).T.numpy()
    sf.write(audio / "stereo.wav", stereo, 22050, subtype="FLOAT")
    (audio / "broken.wav").write_bytes(b"RIFF not really a wave file" * 10)
    whole = io.BytesIO()
    sf.write(whole, clips[0][1], 16000, format="WAV", subtype="PCM_16")
    (audio / "cut.wav").write_bytes(whole.getvalue()[:9000])  # a download cut mid-file
    (audio / "notes.txt").write_text("not audio")
    meta = tmp_path / "meta.csv"  # DCASE's layout; audio/sub/1.wav has no row
    meta.write_text("filename\tscene_label\tidentifier\tsource_label\n" + "".join(
        f"audio/{name}\t{m['label']}\t{m['city']}-1\t{m['device']}\n"
        for name, (m, _) in zip(("2.wav", "10.flac", "stereo.wav", "long.flac"), [clips[i] for i in (0, 1, 1, 3)])))
    out = tmp_path / "sub.csv"
    args = [f"ckpt={classifier}", f"inputs={tmp_path / 'eval'}", "hop_seconds=0.5", "windows=true", "batch_size=5"]
    _predict(*args, f"out={out}", f"run_dir={tmp_path / 'r1'}", "num_workers=1", f"labels={meta}")
    classes = json.loads((classifier / "metrics.json").read_text())["classes"]
    rows = _rows(out, "\t")
    assert rows[0] == ["filename", "scene_label", *classes]
    names = [r[0] for r in rows[1:]]
    assert names == ["audio/2.wav", "audio/10.flac", "audio/long.flac", "audio/stereo.wav", "audio/sub/1.wav"]
    for row in rows[1:]:
        expected = _independent_probs(classifier, tmp_path / "eval" / row[0], 16000, 8000)
        got = np.array([float(v) for v in row[2:]])
        np.testing.assert_allclose(got, expected, atol=2e-6)
        assert row[1] == classes[int(np.argmax(got))] and abs(got.sum() - 1) < 1e-5
    skipped = {Path(r[0]).name: r[1] for r in _rows(tmp_path / "sub.skipped.csv", ",")[1:]}
    assert set(skipped) == {"broken.wav", "cut.wav"} and skipped["cut.wav"].startswith("truncated")
    err = capsys.readouterr().err
    assert "2 skipped" in err and "1 of 5 predicted files have no row" in err
    labels = {r[0]: r[1] for r in _rows(meta, "\t")[1:]}
    report = json.loads((tmp_path / "sub.report.json").read_text())
    assert report["num_clips"] == 4 and report["accuracy"] == np.mean([r[1] == labels[r[0]] for r in rows[1:]
                                                                       if r[0] in labels])
    assert set(report["groups"]["device"]) == {clips[i][0]["device"] for i in (0, 1, 3)}
    windows = _rows(tmp_path / "sub.windows.csv", "\t")
    assert [r[2] for r in windows[1:] if r[0] == "audio/long.flac"] == ["0", "0.5", "1", "1.5"]
    assert len(windows) == 1 + 4 + 4 * 1
    # two local tasks share the 7 files (4 and 3, the skipped ones on different ranks): the same three files
    results = _predict(*args, f"out={tmp_path / 'two.csv'}", f"run_dir={tmp_path / 'r2'}", "num_workers=0",
                       cluster="local", tasks=2)
    assert sorted(r["predicted_here"] for r in results) == [3, 4]
    for name in ("csv", "skipped.csv", "windows.csv"):
        assert (tmp_path / f"two.{name}").read_bytes() == (tmp_path / f"sub.{name}").read_bytes(), name
    assert not (tmp_path / "two.report.json").exists()  # no labels given, none in the files


def test_a_labelled_shard_split_scores_as_fine_tunings_test_and_rank_shares_add_up(classifier, scene_shards,
                                                                                    tmp_path):
    one = tmp_path / "one.csv"
    args = [f"ckpt={classifier / 'best.pt'}", f"inputs={scene_shards}:test", "format=csv"]
    (summary,) = _predict(*args, f"out={one}", f"run_dir={tmp_path / 'r1'}")
    tested = json.loads((classifier / "metrics.json").read_text())
    report = json.loads((tmp_path / "one.report.json").read_text())
    assert report["num_clips"] == tested["num_clips"] == 100 and report["accuracy"] == tested["accuracy"]
    assert report["log_loss"] == pytest.approx(tested["log_loss"], rel=1e-5)
    assert report["groups"]["device"].keys() == tested["groups"]["device"].keys()
    assert report["seen_unseen"]["unseen"]["n"] == tested["seen_unseen"]["unseen"]["n"]
    assert summary["accuracy"] == tested["accuracy"] and (tmp_path / "one.confusion_matrix.png").stat().st_size > 5000
    rows = _rows(one, ",")
    assert rows[0][:3] == ["filename", "path", "scene_label"] and len(rows) == 101
    assert rows[1][1].endswith("test-000000.tar#" + rows[1][0])  # the synthetic corpus has no source files
    # what each of 3 ranks would predict (split again between 2 decoding workers) adds up to the whole, in order
    cfg = load_predict_config([*args, f"out={tmp_path / 'x.csv'}", "num_workers=2"])
    p, inputs, _ = plan(cfg)
    items = [it for r in range(3) for it in predict_share(p, inputs, share(100, r, 3), cfg, torch.device("cpu"))]
    assert [it.name for it in items] == [r[0] for r in rows[1:]]
    np.testing.assert_allclose(np.stack([it.probs for it in items]), [[float(v) for v in r[3:]] for r in rows[1:]],
                               rtol=0, atol=1e-7)


def test_bad_inputs_are_one_line_each(classifier, scene_shards, tmp_path, capsys):
    from finetune.predict import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "x.xyz").write_text("?")
    (tmp_path / "taken.csv").write_text("keep me")
    payload = torch.load(classifier / "best.pt", weights_only=False)
    (tmp_path / "nameless").mkdir()
    torch.save({**payload, "classes": []}, tmp_path / "nameless" / "best.pt")
    (tmp_path / "labels.csv").write_text("filename\tscene_label\nsyn-test-000000\tbeach\n")
    ok = [f"ckpt={classifier}", f"inputs={scene_shards}:test", f"out={tmp_path / 'o.csv'}"]
    cases = [([f"ckpt={tmp_path / 'nowhere'}", *ok[1:]], "nowhere: no such file or folder"),
             ([ok[0], f"inputs={tmp_path / 'empty'}", ok[2]], "no audio files in this folder"),
             ([ok[0], f"inputs={tmp_path / 'x.xyz'}", ok[2]], "unknown format '.xyz'"),
             ([*ok, "format=xml"], "format='xml': expected dcase or csv"),
             ([*ok[:2], f"out={tmp_path / 'taken.csv'}"], "the file exists; give another out= or overwrite=true"),
             ([ok[0], f"inputs={scene_shards}", ok[2]], "a shard set; name the split"),
             ([ok[0], f"inputs={scene_shards}:nosuch", ok[2]], "no split 'nosuch'"),
             ([f"ckpt={tmp_path / 'nameless'}", *ok[1:]], "without classes"),
             ([*ok, f"labels={tmp_path / 'labels.csv'}"], "labels.csv:2: scene_label 'beach' is not a class"),
             ([ok[0], ok[2]], "inputs='': expected a folder of audio files")]
    for argv, expected in cases:
        assert main(["--cluster", "debug", *argv]) == 2, argv
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], (argv, lines)
    assert (tmp_path / "taken.csv").read_text() == "keep me" and not (tmp_path / "o.csv").exists()


def test_lists_windows_shares_and_batching_are_exact(tmp_path):
    (tmp_path / "lists" / "a").mkdir(parents=True)
    sf.write(tmp_path / "lists" / "a" / "x.wav", np.zeros(100, np.float32), 16000)
    other = tmp_path / "elsewhere.flac"
    sf.write(other, np.zeros(100, np.float32), 16000)
    listed = tmp_path / "lists" / "eval.txt"
    listed.write_text(f"# header comment\n./a/x.wav\n\n{other}\nmissing.wav\n{tmp_path / 'lists' / 'a' / 'x.wav'}\n")
    files = list_inputs(str(listed)).files
    assert [f.name for f in files] == ["a/x.wav", other.as_posix(), "missing.wav"]  # as listed, repeats left out
    items = [FileItems(files, 0, 3, 16000, 160, 160)[i] for i in range(3)]
    assert [it.waves.shape if it.error is None else it.error for it in items] == [(1, 160), (1, 160),
                                                                                   "missing: no such file"]
    assert window_starts(16000, 16000, 16000) == [0] and window_starts(100, 16000, 8000) == [0]
    assert window_starts(16001, 16000, 16000) == [0, 1]  # a one-sample tail: a window of real audio, no padding
    assert window_starts(32000, 16000, 16000) == [0, 16000] and window_starts(27200, 16000, 8000) == [0, 8000, 11200]
    assert [list(share(10, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    tau = ("/data", "/data/TAU-urban-acoustic-scenes-2022-mobile-evaluation")  # built with --root /data
    assert shard_filename("0", "TAU-urban-acoustic-scenes-2022-mobile-evaluation/audio/0.wav", tau) == "audio/0.wav"
    assert shard_filename("syn-1", None, tau) == "syn-1" and shard_filename("k", "x/k.wav", None) == "x/k.wav"
    assert sorted(["a/10.wav", "a/2.wav", "a/1.wav", "b.wav"], key=natural_key) == ["a/1.wav", "a/2.wav", "a/10.wav",
                                                                                     "b.wav"]
    sizes = []

    def classify(batch):  # each window's "probabilities" are its first sample, so the routing is visible
        sizes.append(len(batch))
        return batch[:, :1].astype(np.float64)

    batcher, done = WindowBatcher(classify, 4), []
    for item, k in (("a", 3), ("b", 6), ("c", 1)):
        done += batcher.add(item, np.arange(k, dtype=np.float32)[:, None] + 10 * ord(item))
    done += batcher.flush()
    assert sizes == [4, 4, 4] and [item for item, _ in done] == ["a", "b", "c"]
    for item, probs in done:
        assert probs[:, 0].tolist() == [10 * ord(item) + i for i in range(len(probs))]


def test_an_official_fine_tuned_ssast_file_predicts_what_the_official_model_does(tmp_path):
    """An official ``audio_model.wa.pth`` (ft_cls pooling, its grid inferred from the frame count): the window
    probabilities of the reference ASTModel, on the Kaldi fbank with AudioSet normalisation that SSAST used."""
    from shards.features import FeatureConfig
    from tests.unit.test_official_finetuned import official_finetuned, save_as_official

    official = official_finetuned(frames=128)
    ckpt = tmp_path / "audio_model.wa.pth"
    save_as_official(official, ckpt)
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},class {i}\n"
                                                                            for i in range(5)))
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", (0.1 * rng.standard_normal(30000)).astype(np.float32), 16000, subtype="FLOAT")
    out = tmp_path / "out.csv"
    _predict(f"ckpt={ckpt}", f"inputs={tmp_path / 'in'}", f"out={out}", "official.head=cls", "official.target_frames=128",
             f"classes={tmp_path / 'labels.csv'}", f"run_dir={tmp_path / 'r'}", "num_workers=0")
    rows = _rows(out, "\t")
    assert rows[0] == ["filename", "scene_label", *(f"class {i}" for i in range(5))]
    x, _ = sf.read(tmp_path / "in" / "a.wav", dtype="float32")
    clip = 20720  # Kaldi: 128 frames of 25 ms every 10 ms -> 1.295 s at 16 kHz
    waves = np.stack([x[:clip], x[len(x) - clip:]])  # the second window ends where the file ends
    features = build_features(FeatureConfig(num_mel_bins=128, target_frames=128)).eval()
    with torch.no_grad():
        expected = official(features(torch.from_numpy(waves)), "ft_cls").softmax(-1).double().mean(0).numpy()
    np.testing.assert_allclose([float(v) for v in rows[1][2:]], expected, atol=1e-5)


def test_the_dcase_size_cnn_student_predicts_its_own_test_figures(scene_shards, tmp_path):
    """A DCASE submission comes from the small CNN (``model=cnn``): its run folder predicts the shard test split with
    the accuracy and log loss its fine-tuning reported."""
    run = tmp_path / "cnn"
    split = lambda name: f"{{path: {scene_shards}, split: {name}}}"  # noqa: E731
    finetune_run(load_finetune_config([
        "model=cnn", "cnn.base_channels=8", "cnn.blocks=[1,1,1]", f"run_dir={run}", "steps=2", "eval_every=2",
        f"data.train=[{split('labelled')}]", f"data.val={split('val')}", f"data.test={split('test')}",
        "data.stream.num_workers=0", "log.tensorboard=false", "log.progress=false"]))
    out = tmp_path / "cnn.csv"
    _predict(f"ckpt={run}", f"inputs={scene_shards}:test", f"out={out}", f"run_dir={tmp_path / 'r'}", "num_workers=0")
    tested = json.loads((run / "metrics.json").read_text())
    report = json.loads((tmp_path / "cnn.report.json").read_text())
    assert report["num_clips"] == tested["num_clips"] and report["accuracy"] == tested["accuracy"]
    assert report["log_loss"] == pytest.approx(tested["log_loss"], rel=1e-5)
    assert _rows(out, "\t")[0] == ["filename", "scene_label", *tested["classes"]]
