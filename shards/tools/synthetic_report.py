"""python shards/tools/synthetic_report.py: how fast and how hard the synthetic corpus is (a measurement, not a test).

Run it pinned for a one-core figure: ``taskset -c 0 python shards/tools/synthetic_report.py`` (``--labelled 0``: speed
only).

Speed: clips rendered per second by one process on one core. Difficulty: a cheap probe (logistic regression on the
mean and standard deviation over time of 64 log-mel bands, which sees spectra but hardly any temporal structure)
trained on the labelled split and scored on val (same distribution) and on test by device and city group. The probe
should be far above chance (10 %), in the 35-65 % band, and fall on devices and cities it never saw. A loudness-only
probe (log RMS) shows that level alone does not name a scene.
"""
import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # "one core" means one thread for numpy's BLAS/FFT helpers too
_HERE = Path(__file__).resolve().parent  # the entry-script trampoline: the repository root instead of shards/tools/
sys.path[:] = [str(_HERE.parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def render_split(split: str, n: int, args) -> tuple[np.ndarray, list[dict]]:
    from shards.sources.synthetic import clip_plan, render_clip

    audio = np.stack([render_clip(args.seed, split, i, args.sample_rate, args.duration)[0] for i in range(n)])
    return audio, [clip_plan(args.seed, split, i) for i in range(n)]


def features(audio: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean+std of 64 log-mel bands [N, 128], log RMS [N, 1])."""
    import torch
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(rate, n_fft=int(0.032 * rate), hop_length=int(0.01 * rate), n_mels=64)
    out = []
    for chunk in np.array_split(audio, max(1, len(audio) // 256)):
        logmel = torch.log(mel(torch.from_numpy(chunk)) + 1e-8)  # [B, 64, frames]
        out.append(torch.cat([logmel.mean(-1), logmel.std(-1)], 1).numpy())
    return np.concatenate(out), np.log(np.sqrt((audio**2).mean(1, keepdims=True)) + 1e-9)


def probe(train_x, train_y, evals: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5)).fit(train_x, train_y)
    return {name: float((model.predict(x) == y).mean()) if len(y) else float("nan") for name, (x, y) in evals.items()}


def main(argv=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from shards.sources._scenes import EVENTS, bank
    from shards.sources.synthetic import CITIES, DEVICES, SCENES, render_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labelled", type=int, default=2000)
    parser.add_argument("--val", type=int, default=600)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--speed-clips", type=int, default=400, help="clips timed for the speed figure")
    args = parser.parse_args(argv)
    console = Console(width=max(110, Console().width))

    for kind in EVENTS:  # the kernel banks are built once per process and rate: not part of the per-clip cost
        bank(kind, args.sample_rate)
    render_clip(args.seed, "test", 0, args.sample_rate, args.duration)
    start = time.perf_counter()
    for i in range(args.speed_clips):
        render_clip(args.seed, "unlabelled", i, args.sample_rate, args.duration)
    speed = args.speed_clips / (time.perf_counter() - start)
    console.print(f"speed: [bold]{speed:.0f} clips/s[/] on one core ({args.duration:g} s at {args.sample_rate} Hz)")

    if min(args.labelled, args.val, args.test) <= 0:
        return  # speed only
    sizes = {"labelled": args.labelled, "val": args.val, "test": args.test}
    data = {split: render_split(split, n, args) for split, n in sizes.items()}
    feats = {s: features(a, args.sample_rate) for s, (a, _) in data.items()}
    label = {s: np.array([p["scene"] for p in plans]) for s, (_, plans) in data.items()}
    plans = data["test"][1]
    unseen_dev = np.array([DEVICES[p["device"]].test_only for p in plans])
    where = np.array([CITIES[p["city"]].where for p in plans])
    target = ", ".join(k for k, c in CITIES.items() if c.where == "unlabelled")
    novel = ", ".join(k for k, c in CITIES.items() if c.where == "test")
    groups = {
        "val: seen devices, seen cities": np.ones(args.val, bool),
        "test: all": np.ones(args.test, bool),
        "test: seen devices, seen cities": ~unseen_dev & (where == "all"),
        "test: unseen devices s4-s6, seen cities": unseen_dev & (where == "all"),
        f"test: seen devices, {target} (unlabelled only)": ~unseen_dev & (where == "unlabelled"),
        f"test: seen devices, {novel} (test only)": ~unseen_dev & (where == "test"),
        "test: unseen devices, unseen cities": unseen_dev & (where != "all"),
    }
    table = Table(title=f"synthetic corpus difficulty (probe trained on {args.labelled} labelled clips; "
                        f"chance {1 / len(SCENES):.0%})")
    for col in ("evaluated on", "clips", "log-mel mean+std", "log RMS only"):
        table.add_column(col, justify="left" if col == "evaluated on" else "right", no_wrap=True)
    scores = []
    for which in (0, 1):
        evals = {"train": (feats["labelled"][which], label["labelled"])}
        for name, mask in groups.items():
            split = "val" if name.startswith("val") else "test"
            evals[name] = (feats[split][which][mask], label[split][mask])
        scores.append(probe(feats["labelled"][which], label["labelled"], evals))
    for name in scores[0]:
        n = args.labelled if name == "train" else int(groups[name].sum())
        table.add_row(name, str(n), f"{scores[0][name]:.1%}", f"{scores[1][name]:.1%}")
    console.print(table)


if __name__ == "__main__":
    main()
