"""python finetune/tools/results.py: the results benchmark (not a test) on the synthetic corpus, mean +- std over seeds.

Three tables, each row fine-tuned with ``--seeds`` seeds on the same data:

* ``pretraining``: from scratch vs SSAST-pretrained vs Audio-MAE-pretrained (mean head, full fine-tuning), plus a
  from-scratch control with frame tokens (SSAST's frame model: 128 x 2 patches) instead of 16 x 16 patches;
* ``heads``: the rows of Table I of the layer-wise paper on the SSAST-pretrained encoder (baseline, frozen backbone
  with post-norm, pre-norm, post-norm, double-norm);
* ``semisup``: teacher (labelled only) vs pseudo-label student under the synthetic city/device shift.

The SSAST + mean-head fine-tuning of a seed is one run shared by the three tables (the SSAST row, the baseline row and
the teacher). Every run has its own folder under ``--out``; a finished run is reused, so an interrupted benchmark
continues where it stopped. ``--jobs N`` trains N runs at once in worker processes. The tables are printed and written
to ``<out>/results.md`` (with the command, date and machine).
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # finetune/tools/ ; put the repository root there instead (entry trampoline)
sys.path[:] = [str(_HERE.parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

HEAD_ROWS = {  # Table I of the layer-wise fine-tuning paper
    "baseline (mean)": ["head.kind=mean"],
    "frozen backbone, post-norm": ["head.kind=post_norm", "freeze_backbone=true"],
    "pre-norm": ["head.kind=pre_norm"],
    "post-norm": ["head.kind=post_norm"],
    "double-norm": ["head.kind=double_norm"],
}

# SSAST's frame-model tokens (128 x 2, each a whole spectrum slice) for a from-scratch control: how much of what
# pretraining buys the 16 x 16 patch model does a different tokenisation get without any pretraining?
FRAME_TOKENS = ["scratch_encoder.patch_freq=128", "scratch_encoder.patch_time=2", "encoder.stride_freq=128",
                "encoder.stride_time=2"]

# A teacher far from perfect is rarely confident: keep its most confident quarter, class-balanced (top-k per predicted
# class, 150 x 10 of the 6,000 unlabelled clips), rather than a fixed probability threshold that may keep nothing.
PSEUDO = ["pseudo.threshold=null", "pseudo.top_k_per_class=150"]

# Test accuracy and macro AUC (%), and accuracy on the devices training saw and on those it did not (the shift).
COLUMNS = (("Acc (%)", "accuracy", 100.0), ("AUC (%)", "macro_auc", 100.0),
           ("seen devices (%)", "seen_unseen.seen.accuracy", 100.0),
           ("unseen devices (%)", "seen_unseen.unseen.accuracy", 100.0))


def _pretrain(method: str, out: Path, steps: int, depth: int) -> Path:
    from pretrain.config import load_pretrain_config
    from pretrain.train import run

    run_dir = out / f"pretrain-{method}"
    if not (run_dir / "encoder.pt").exists():
        run(load_pretrain_config([f"method={method}", f"run_dir={run_dir}", f"steps={steps}", "log.progress=false",
                                  f"checkpoint.every_steps={min(steps, 500)}", f"{method}.encoder.depth={depth}"]))
    return run_dir / "encoder.pt"


def _finetune(run_dir: Path, args: list[str]) -> dict:
    from finetune.config import load_finetune_config
    from finetune.train import run

    if not (run_dir / "metrics.json").exists():
        run(load_finetune_config([f"run_dir={run_dir}", "log.every_steps=100", *args]))
    return json.loads((run_dir / "metrics.json").read_text())


def _semisup(run_dir: Path, args: list[str]) -> list[dict]:
    from finetune.teacher_student import load_semisup_config, run

    if not (run_dir / "semisup.json").exists():
        run(load_semisup_config([f"run_dir={run_dir}", "log.every_steps=100", *args]))
    return json.loads((run_dir / "semisup.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(prog="python finetune/tools/results.py", description=__doc__.splitlines()[0])
    p.add_argument("--tables", default="pretraining,heads,semisup", help="comma-separated subset of the tables")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=600, help="fine-tuning steps per run")
    p.add_argument("--pretrain-steps", type=int, default=1500, help="pretraining steps (one run per method)")
    p.add_argument("--depth", type=int, default=4,
                   help="encoder blocks of every model (4: the embedded default; 0: the tiny size's 12)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each on cores/jobs threads (on a small CPU, 2 jobs of 1 thread beat 1 of 2)")
    p.add_argument("--out", type=Path, default=Path("runs/results"))
    args = p.parse_args()
    tables = args.tables.split(",")
    unknown = set(tables) - {"pretraining", "heads", "semisup"}
    if unknown:
        p.error(f"--tables {args.tables}: expected a comma-separated subset of pretraining,heads,semisup")
    if min(args.seeds, args.jobs, args.steps, args.pretrain_steps) < 1 or args.depth < 0:
        p.error("--seeds, --jobs, --steps and --pretrain-steps must be >= 1, --depth >= 0")

    from rich.console import Console

    from finetune.metrics import results_table
    from launch.common.files import atomic_write

    console = Console(width=140)
    out = args.out.resolve()
    common = [f"steps={args.steps}", f"eval_every={max(1, args.steps // 4)}", f"scratch_encoder.depth={args.depth}"]
    seeds = range(args.seeds)
    command = (f"python finetune/tools/results.py --seeds {args.seeds} --steps {args.steps} --pretrain-steps "
               f"{args.pretrain_steps} --depth {args.depth} --jobs {args.jobs}")
    md = [f"Results on the synthetic corpus ({time.strftime('%Y-%m-%d')}, {_machine()}): `{command}`", ""]

    with _pool(args.jobs) as pool:
        methods = ["ssast", "audiomae"] if "pretraining" in tables else ["ssast"]
        n = len(methods)
        ckpts = dict(zip(methods, pool.map(_pretrain, methods, [out] * n, [args.pretrain_steps] * n, [args.depth] * n)))
        ssast = ckpts["ssast"]
        # Every fine-tuning run of the first two tables (and the semi-supervised teachers), keyed by folder so that a
        # shared run is trained once, all in one batch for the pool.
        planned: dict[Path, list[str]] = {}
        rows_of: dict[str, dict[str, list[Path]]] = {}
        if "pretraining" in tables:
            rows_of["pretraining"] = {}
            for name, slug, ckpt, extra in (("from scratch", "scratch", "none", []),
                                            ("from scratch, frame tokens", "scratch-frames", "none", FRAME_TOKENS),
                                            ("SSAST-pretrained", "ssast", ssast, []),
                                            ("Audio-MAE-pretrained", "audiomae", ckpts.get("audiomae"), [])):
                dirs = [out / "pretraining" / f"{slug}-seed{s}" for s in seeds]
                planned.update({d: [f"ckpt={ckpt}", f"seed={s}", "head.kind=mean", *extra, *common]
                                for s, d in zip(seeds, dirs)})
                rows_of["pretraining"][name] = dirs
        if "heads" in tables:
            rows_of["heads"] = {}
            for i, (name, extra) in enumerate(HEAD_ROWS.items()):
                dirs = [_head_dir(out, i, s) for s in seeds]
                planned.update({d: [f"ckpt={ssast}", f"seed={s}", *extra, *common] for s, d in zip(seeds, dirs)})
                rows_of["heads"][name] = dirs
        if "semisup" in tables:
            planned.update({_ssast_mean_dir(out, s): [f"ckpt={ssast}", f"seed={s}", "head.kind=mean", *common]
                            for s in seeds})
        done = dict(zip(planned, pool.map(_finetune, planned, planned.values())))
        for table, title in (("pretraining", "What pretraining is worth (mean head, full fine-tuning)"),
                             ("heads", "Layer-wise heads on the SSAST-pretrained encoder (paper Table I rows)")):
            if table in rows_of:
                rows = {name: [done[d] for d in dirs] for name, dirs in rows_of[table].items()}
                console.print(results_table(rows, COLUMNS, title=title))
                md += _markdown(title, rows)
        if "semisup" in tables:
            dirs = [out / "semisup" / f"seed{s}" for s in seeds]
            runs = list(pool.map(_semisup, dirs, [[f"ckpt={ssast}", f"seed={s}", "head.kind=mean", *PSEUDO,
                                                    f"teacher={_ssast_mean_dir(out, s)}", *common] for s in seeds]))
            rows = {"teacher (labelled only)": [r[0] for r in runs],
                    "student (labelled + pseudo-labels)": [r[1] for r in runs]}
            title = "Teacher vs pseudo-label student (synthetic city/device shift)"
            console.print(results_table(rows, COLUMNS, title=title))
            md += _markdown(title, rows)
            acc = [r[1].get("pseudo_accuracy") for r in runs]
            md.append(f"Selected pseudo-labels per seed: {[r[1].get('pseudo_selected') for r in runs]}, their accuracy "
                      f"{[round(100 * a, 1) for a in acc if a is not None]} %.")
    if rows_of:
        plot_results(rows_of, out / "results.png")
        md.append(f"Figure: `{out / 'results.png'}` (validation curves, learned layer weights).")
    atomic_write(out / "results.md", "\n".join(md) + "\n")
    console.print(f"tables -> {out / 'results.md'}")
    return 0


def plot_results(rows_of: dict[str, dict[str, list[Path]]], path: Path) -> Path:
    """Left: validation accuracy over steps per row of the pretraining table (mean and min-max over seeds); right: the
    learned layer weights of each layer-wise head (mean over seeds), the picture the layer-wise paper discusses."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from launch.common.files import replacing

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    curves, bars = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, dirs in rows_of.get("pretraining", {}).items():
        runs = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in dirs]
        runs = [[(r["step"], 100 * r["val_accuracy"]) for r in recs if "val_accuracy" in r] for recs in runs]
        steps = [s for s, _ in runs[0]]
        acc = np.array([[a for _, a in r] for r in runs if len(r) == len(steps)])
        curves.plot(steps, acc.mean(0), marker="o", label=name)
        curves.fill_between(steps, acc.min(0), acc.max(0), alpha=0.2)
    curves.set(xlabel="fine-tuning step", ylabel="validation accuracy (%)", title="What pretraining is worth")
    curves.grid(alpha=0.3)
    curves.legend()
    weights = {name: np.mean([json.loads((d / "metrics.json").read_text())["layer_weights"] for d in dirs], axis=0)
               for name, dirs in rows_of.get("heads", {}).items()
               if "layer_weights" in json.loads((dirs[0] / "metrics.json").read_text())}
    width = 0.8 / max(1, len(weights))
    for i, (name, w) in enumerate(weights.items()):
        bars.bar(np.arange(1, len(w) + 1) + (i - (len(weights) - 1) / 2) * width, w, width, label=name)
    if weights:
        depth = len(next(iter(weights.values())))
        bars.axhline(1 / depth, color="grey", lw=0.8, ls="--", label="uniform 1/L")
        bars.legend(fontsize=8)
    bars.set(xlabel="block", ylabel="softmax layer weight", title="Learned layer weights (mean over seeds)")
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def _machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")), None) if cpuinfo.exists() else None
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU"


class _Inline:
    """The pool's ``map``, in this process (``--jobs 1``)."""

    def map(self, fn, *iterables):
        return map(fn, *iterables)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _threads(n: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


def _pool(jobs: int):
    """``jobs`` worker processes (spawned, so each starts clean, with cores/jobs torch threads), or this process."""
    if jobs == 1:
        return _Inline()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_threads,
                               initargs=(max(1, (os.cpu_count() or 1) // jobs),))


def _ssast_mean_dir(out: Path, seed: int) -> Path:
    """The SSAST + mean head run of a seed: the pretraining table's SSAST row, the heads table's baseline row and the
    semi-supervised teacher are the same configuration, so they share one run."""
    return out / "pretraining" / f"ssast-seed{seed}"


def _head_dir(out: Path, row: int, seed: int) -> Path:
    return _ssast_mean_dir(out, seed) if row == 0 else out / "heads" / f"{row}-seed{seed}"


def _markdown(title: str, rows: dict[str, list[dict]]) -> list[str]:
    from finetune.metrics import results_cells

    lines = [f"**{title}**", "", "| row | " + " | ".join(h for h, _, _ in COLUMNS) + " | seeds |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + f" | {n} |" for name, cells, n in results_cells(rows, COLUMNS)]
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())
