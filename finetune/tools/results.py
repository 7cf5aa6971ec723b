"""python finetune/tools/results.py: the results benchmark (not a test) on the synthetic corpus, mean +- std over seeds.

Four tables (and a control row), each row fine-tuned with ``--seeds`` seeds on the same data:

* ``pretraining``: from scratch vs SSAST-pretrained vs Audio-MAE-pretrained (mean head, full fine-tuning), plus a
  from-scratch control with frame tokens (SSAST's frame model: 128 x 2 patches) instead of 16 x 16 patches;
* ``heads``: the rows of Table I of the layer-wise paper on the SSAST-pretrained encoder (baseline, frozen backbone
  with post-norm, pre-norm, post-norm, double-norm);
* ``devices``: the device-robust augmentations of CP-JKU's DCASE systems on the SSAST-pretrained encoder (baseline,
  + frequency-wise MixStyle, + device impulse responses, + both), at their published settings;
* ``semisup``: teachers (the pretraining table's SSAST, Audio-MAE and frame-token runs) and their ensemble vs
  students: hard pseudo-labels from the SSAST teacher, soft labels from the ensemble (a transformer, and the DCASE-size
  CNN, next to the same CNN on the labelled clips alone); ``control`` (asked for by name, 3 more runs) adds the soft
  student's starting point trained on the labelled clips alone: how much of the student's figure is the teachers'
  labels.

The defaults are the recorded budget: all tables but ``control``, 3 seeds, 3,000 pretraining and 600 fine-tuning steps,
4 blocks, non-overlapping patches, which with ``--jobs 2`` finish in about 90 minutes on 2 CPU cores (README section 7).

The SSAST + mean-head fine-tuning of a seed is one run shared by the tables (the SSAST row, the heads and devices
baseline, a teacher). Every run has its own folder under ``--out``; a finished run is reused, so an interrupted
benchmark continues where it stopped; ``<out>/benchmark.json`` records the settings its runs were made with, and an
invocation with others is refused. ``--jobs N`` trains N runs at once in worker processes. The tables are printed and
written to ``<out>/results.md`` (with the command, date, machine and wall time).
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

# CP-JKU's published settings, not tuned here: the validation split holds seen devices only (as TAU22's does), so it
# cannot choose for unseen ones. MixStyle p 0.4, alpha 0.3 (DCASE 2023 --mixstyle_p, --mixstyle_alpha); device IRs
# p 0.6 (--dir_prob) on every clip, from the corpus's stand-in collection.
MIXSTYLE = ["augment.freq_mixstyle=0.4", "augment.freq_mixstyle_alpha=0.3"]
DEVICE_IRS = ["augment.device_ir.path=synthetic", "augment.device_ir.p=0.6"]
DEVICE_ROWS = {"baseline (mean head)": [], "+ Freq-MixStyle": MIXSTYLE, "+ device IRs": DEVICE_IRS,
               "+ both": MIXSTYLE + DEVICE_IRS}

# Soft labels (the teachers' probabilities, T = 2) for every unlabelled clip, and distillation on the labelled clips
# next to their label loss, as CP-JKU's DCASE 2023 students train. The CNN's rate is CP-JKU's order for small CNNs.
SOFT = ["distill.targets=soft", "pseudo.threshold=null", "pseudo.distill_labelled=true"]
CNN = ["model=cnn", "ckpt=none", "optim.lr=1e-3"]

# Test accuracy and macro AUC (%), and accuracy on the devices training saw and on those it did not (the shift).
COLUMNS = (("Acc (%)", "accuracy", 100.0), ("AUC (%)", "macro_auc", 100.0),
           ("seen devices (%)", "seen_unseen.seen.accuracy", 100.0),
           ("unseen devices (%)", "seen_unseen.unseen.accuracy", 100.0))
# ... plus the device deficit (seen - unseen, points) and the best validation accuracy (what a choice may look at).
SHIFT_COLUMNS = COLUMNS + (("seen - unseen", "device_gap", 100.0), ("best val (%)", "best_val_accuracy", 100.0))
TABLES = ("pretraining", "heads", "devices", "semisup", "control")
DEFAULT_TABLES = TABLES[:-1]  # the control row is 3 more runs, asked for by name
# What the runs under --out depend on: a later invocation over the same folder must use the same, since a finished
# run is reused by its folder alone (seeds, tables and jobs may differ: they add or schedule runs, never change one).
SETTINGS = ("steps", "pretrain_steps", "depth", "stride")


def _encoder_path(out: Path, method: str) -> Path:
    return out / f"pretrain-{method}" / "encoder.pt"


def _pretrain(method: str, out: Path, steps: int, depth: int) -> Path:
    from pretrain.config import load_pretrain_config
    from pretrain.train import run

    run_dir = _encoder_path(out, method).parent
    cfg = load_pretrain_config([f"method={method}", f"run_dir={run_dir}", f"steps={steps}", "log.progress=false",
                                f"checkpoint.every_steps={min(steps, 500)}", f"{method}.encoder.depth={depth}"])
    if not _finished_run(run_dir, "encoder.pt", cfg):
        run(cfg)
    return run_dir / "encoder.pt"


def _finetune(run_dir: Path, args: list[str]) -> dict:
    from finetune.config import load_finetune_config
    from finetune.train import run

    cfg = load_finetune_config([f"run_dir={run_dir}", "log.every_steps=100", *args])
    if not _finished_run(run_dir, "metrics.json", cfg):
        run(cfg)
    return _with_shift(json.loads((run_dir / "metrics.json").read_text()), run_dir)


def _finished_run(run_dir: Path, final: str, cfg) -> bool:
    """Whether ``run_dir`` holds a finished run (its ``final`` file) to reuse: of this config, or refused in one line
    as a resumed run of another config is (the settings record cannot see a config default that changed since; the
    run's length may differ here, as a resumed run's may, and ``--steps`` is in the record)."""
    from launch.runtime.config import config_tree, how_not_what_keys
    from launch.runtime.run_folder import check_same_config

    if not (run_dir / final).exists():
        return False
    check_same_config(run_dir, config_tree(cfg), how_not_what_keys(cfg))
    return True


def _with_shift(metrics: dict, run_dir: Path | None = None) -> dict:
    """Test metrics + ``device_gap`` (seen - unseen accuracy) + ``best_val_accuracy`` (the run's metrics.jsonl)."""
    shift = metrics.get("seen_unseen") or {}
    if "seen" in shift and "unseen" in shift:
        metrics["device_gap"] = shift["seen"]["accuracy"] - shift["unseen"]["accuracy"]
    log = run_dir / "metrics.jsonl" if run_dir is not None else None
    if log is not None and log.exists():
        vals = [json.loads(line).get("val_accuracy") for line in log.read_text().splitlines() if line.strip()]
        if any(v is not None for v in vals):
            metrics["best_val_accuracy"] = max(v for v in vals if v is not None)
    return metrics


def _semisup(run_dir: Path, args: list[str]) -> list[dict]:
    from finetune.teacher_student import load_semisup_config, run

    if not (run_dir / "semisup.json").exists():
        run(load_semisup_config([f"run_dir={run_dir}", "log.every_steps=100", *args]))
    return json.loads((run_dir / "semisup.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(prog="python finetune/tools/results.py", description=__doc__.splitlines()[0])
    p.add_argument("--tables", default=",".join(DEFAULT_TABLES),
                   help=f"comma-separated subset of {','.join(TABLES)} (default: all but control)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=600, help="fine-tuning steps per run")
    p.add_argument("--pretrain-steps", type=int, default=3000, help="pretraining steps (one run per method)")
    p.add_argument("--depth", type=int, default=4,
                   help="encoder blocks of every model (4: the embedded default; 0: the tiny size's 12)")
    p.add_argument("--stride", type=int, default=16,
                   help="fine-tuning patch stride of the 16 x 16 patch encoders (16: no overlap, as Audio-MAE "
                        "fine-tunes, 48 patches; 10: SSAST's overlapping fine-tuning, 108 patches, 1.85x the time)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each on cores/jobs threads (on a small CPU, 2 jobs of 1 thread beat 1 of 2)")
    p.add_argument("--out", type=Path, default=Path("runs/results"))
    args = p.parse_args()
    tables = args.tables.split(",")
    if set(tables) - set(TABLES):
        p.error(f"--tables {args.tables}: expected a comma-separated subset of {','.join(TABLES)}")
    if "control" in tables and "semisup" not in tables:
        p.error(f"--tables {args.tables}: 'control' is a row of the semisup table; list semisup too")
    if min(args.seeds, args.jobs, args.steps, args.pretrain_steps, args.stride) < 1 or args.depth < 0:
        p.error("--seeds, --jobs, --steps, --pretrain-steps and --stride must be >= 1, --depth >= 0")
    from launch.common.errors import cli

    return cli(_benchmark, args, tables)


def _benchmark(args: argparse.Namespace, tables: list[str]) -> None:
    from rich.console import Console

    from finetune.metrics import results_table
    from launch.common.files import atomic_write

    console = Console(width=160)
    out = args.out.resolve()
    claim_settings(out, {k: getattr(args, k) for k in SETTINGS})
    started, finished_before = time.monotonic(), _finished(out)
    common = [f"steps={args.steps}", f"eval_every={max(1, args.steps // 4)}", f"scratch_encoder.depth={args.depth}"]
    # before a row's own overrides: the frame-token control keeps its 128 x 2 stride
    stride = [f"encoder.stride_freq={args.stride}", f"encoder.stride_time={args.stride}"]
    seeds = range(args.seeds)
    command = (f"python finetune/tools/results.py --tables {','.join(tables)} --seeds {args.seeds} --steps "
               f"{args.steps} --pretrain-steps {args.pretrain_steps} --depth {args.depth} --stride {args.stride} "
               f"--jobs {args.jobs}")
    md = [f"Results on the synthetic corpus ({time.strftime('%Y-%m-%d')}, {_machine()}): `{command}`", ""]

    with _pool(args.jobs) as pool:
        methods = ["ssast", "audiomae"] if {"pretraining", "semisup"} & set(tables) else ["ssast"]
        pretraining = [pool.submit(_pretrain, m, out, args.pretrain_steps, args.depth) for m in methods]
        ckpts = {m: _encoder_path(out, m) for m in methods}
        ssast = ckpts["ssast"]
        # Every fine-tuning run of the tables (the semi-supervised teachers too), keyed by folder so that a shared run
        # is trained once, all queued at once: those that need no pretrained encoder first, so that they fill the
        # cores while the encoders pretrain (SSAST's steps take twice Audio-MAE's), the others once both exist.
        planned: dict[Path, list[str]] = {}
        rows_of: dict[str, dict[str, list[Path]]] = {}
        pretraining_rows = {}
        for name, slug, ckpt, extra in (("from scratch", "scratch", "none", []),
                                        ("from scratch, frame tokens", "scratch-frames", "none", FRAME_TOKENS),
                                        ("SSAST-pretrained", "ssast", ssast, []),
                                        ("Audio-MAE-pretrained", "audiomae", ckpts.get("audiomae"), [])):
            dirs = [_pretraining_dir(out, slug, s) for s in seeds]
            if "pretraining" in tables or ("semisup" in tables and slug != "scratch"):  # the teachers
                planned.update({d: [f"ckpt={ckpt}", f"seed={s}", "head.kind=mean", *stride, *extra, *common]
                                for s, d in zip(seeds, dirs)})
                pretraining_rows[name] = dirs
        if "pretraining" in tables:
            rows_of["pretraining"] = pretraining_rows
        for table, row_args in (("heads", HEAD_ROWS), ("devices", DEVICE_ROWS)):
            if table in tables:
                rows_of[table] = {}
                for i, (name, extra) in enumerate(row_args.items()):
                    dirs = [_row_dir(out, table, i, s) for s in seeds]
                    planned.update({d: [f"ckpt={ssast}", f"seed={s}", "head.kind=mean", *stride, *extra, *common]
                                    for s, d in zip(seeds, dirs)})
                    rows_of[table][name] = dirs
        if "semisup" in tables:  # the DCASE-size CNN on the labelled clips alone: what distillation adds to it
            planned.update({out / "semisup" / f"cnn-labels-seed{s}": [f"seed={s}", *CNN, *common] for s in seeds})
        runs = {d: pool.submit(_finetune, d, a) for d, a in planned.items() if "ckpt=none" in a}
        for future in pretraining:
            future.result()
        runs.update({d: pool.submit(_finetune, d, a) for d, a in planned.items() if d not in runs})
        done = {d: future.result() for d, future in runs.items()}
        for table, title in (("pretraining", "What pretraining is worth (mean head, full fine-tuning)"),
                             ("heads", "Layer-wise heads on the SSAST-pretrained encoder (paper Table I rows)"),
                             ("devices", "Device-robust training on the SSAST-pretrained encoder (mean head)")):
            if table in rows_of:
                rows = {name: [done[d] for d in dirs] for name, dirs in rows_of[table].items()}
                columns = SHIFT_COLUMNS if table == "devices" else COLUMNS
                console.print(results_table(rows, columns, title=title))
                md += _markdown(title, rows, columns)
        if "semisup" in tables:
            md += _semisup_table(pool, out, seeds, ssast, ckpts["audiomae"], [*stride, *common], args.steps, done,
                                 console, control="control" in tables)
    if rows_of:
        plot_results(rows_of, out / "results.png")
        md.append(f"Figure: `{out / 'results.png'}` (validation curves, learned layer weights, device shift).")
    minutes = (time.monotonic() - started) / 60
    trained = _finished(out) - finished_before
    md.append(f"Wall time: {minutes:.0f} min; {trained} runs trained by this invocation, the others reused.")
    atomic_write(out / "results.md", "\n".join(md) + "\n")
    console.print(f"tables -> {out / 'results.md'} ({minutes:.0f} min, {trained} runs trained here)")


def claim_settings(out: Path, settings: dict) -> None:
    """Record the settings the runs under ``out`` are made with (``<out>/benchmark.json``), or refuse in one line
    when an earlier invocation made them with others: its finished runs would be reused as if they were these."""
    from launch.common.errors import BadInput
    from launch.common.files import atomic_write

    record = out / "benchmark.json"
    if record.exists():
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError) as e:
            raise BadInput(f"{record}: unreadable ({e}); give another --out, or delete it if the runs are yours")
        if not isinstance(old, dict):
            raise BadInput(f"{record}: expected a JSON object of settings, got {type(old).__name__}; give another "
                           "--out, or delete it if the runs are yours")
        changed = [f"--{k.replace('_', '-')} {old.get(k)} -> {v}" for k, v in settings.items() if old.get(k) != v]
        if changed:
            raise BadInput(f"{out}: holds runs made with other settings ({'; '.join(changed)}); their finished runs "
                           "would be reused as they are: give another --out")
        return
    if _finished(out):  # an older results.py wrote no record: what its runs were made with is unknown
        raise BadInput(f"{out}: holds finished runs but no benchmark.json saying what settings made them; give "
                       "another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(record, json.dumps(settings, indent=1) + "\n")


def _finished(out: Path) -> int:
    """How many run folders under ``out`` hold their final file (what this invocation trained is the difference)."""
    finished = ("encoder.pt", "metrics.json", "semisup.json")
    folders = [d for d in out.glob("*/*") if d.is_dir()] + [d for d in out.glob("pretrain-*") if d.is_dir()]
    return sum(1 for d in folders if any((d / f).exists() for f in finished))


def _semisup_table(pool, out: Path, seeds: range, ssast: Path, audiomae: Path, common: list[str], steps: int,
                   done: dict[Path, dict], console, control: bool = True) -> list[str]:
    """Teachers, their ensemble and the students of each seed (two batches for the pool: the students, then with
    ``control`` the soft student's starting point continued on the labelled clips alone, as long as the student
    trained: how much of the student's figure is the teachers' labels and how much is more steps)."""
    from finetune.metrics import results_table

    teachers = {"SSAST": "ssast", "Audio-MAE": "audiomae", "frame tokens, from scratch": "scratch-frames"}
    # The soft student starts from one teacher's encoder: of the two pretrained ones, the one that validated better
    # (chosen per seed on the validation split, never the test split). The ensemble lists it first.
    first = {s: max(("ssast", "audiomae"), key=lambda m: done[_pretraining_dir(out, m, s)]["best_val_accuracy"])
             for s in seeds}
    ensemble = {s: [_pretraining_dir(out, first[s], s)]
                + [_pretraining_dir(out, m, s) for m in teachers.values() if m != first[s]] for s in seeds}
    jobs: dict[Path, list[str]] = {}
    for s in seeds:
        jobs[out / "semisup" / f"seed{s}"] = [f"ckpt={ssast}", f"seed={s}", "head.kind=mean", *PSEUDO,
                                             f"teacher={_ssast_mean_dir(out, s)}", *common]
        members = f"teacher=[{','.join(str(d) for d in ensemble[s])}]"
        init = ssast if first[s] == "ssast" else audiomae
        jobs[out / "semisup" / f"soft-seed{s}"] = [f"ckpt={init}", f"seed={s}", "head.kind=mean", members, *SOFT,
                                                  "pseudo.student_init=teacher", *common]
        jobs[out / "semisup" / f"cnn-soft-seed{s}"] = [f"seed={s}", members, *SOFT, *CNN, *common]
    reports = dict(zip(jobs, pool.map(_semisup, jobs, jobs.values())))
    controls = {out / "semisup" / f"continued-seed{s}":
                [f"ckpt={out / 'semisup' / f'soft-seed{s}' / 'round1-teacher-encoder.pt'}", f"seed={s}",
                 "head.kind=mean", *common] for s in seeds} if control else {}
    controls = dict(zip(controls, pool.map(_finetune, controls, controls.values())))

    def student(kind: str, s: int) -> dict:
        folder = out / "semisup" / f"{kind}seed{s}"
        row = next(r for r in reports[folder] if r["role"] == "student")
        return _with_shift(row, folder / "round1-student")

    def role(kind: str, s: int, name: str) -> dict:
        return _with_shift(next(r for r in reports[out / "semisup" / f"{kind}seed{s}"] if r["role"] == name))

    students = {kind: [student(kind, s) for s in seeds] for kind in ("", "soft-", "cnn-soft-")}  # read once
    rows = {f"teacher: {name}": [done[_pretraining_dir(out, slug, s)] for s in seeds]
            for name, slug in teachers.items()}
    rows["ensemble of the three teachers (mean probability)"] = [role("soft-", s, "ensemble") for s in seeds]
    rows["student: hard pseudo-labels from the SSAST teacher (top 150 per class)"] = students[""]
    soft = "student: soft labels from the ensemble, starts from its better-validated pretrained teacher"
    rows[soft] = students["soft-"]
    if controls:
        rows[f"control: the same start, {steps} more steps on the labelled clips alone"] = list(controls.values())
    rows["DCASE-size CNN: soft labels from the ensemble"] = students["cnn-soft-"]
    rows["DCASE-size CNN: labelled clips alone"] = [done[out / "semisup" / f"cnn-labels-seed{s}"] for s in seeds]
    title = "Semi-supervised learning and distillation (synthetic city/device shift)"
    console.print(results_table(rows, SHIFT_COLUMNS, title=title))
    md = _markdown(title, rows, SHIFT_COLUMNS)

    def right(kind: str) -> list[float]:
        return [round(100 * r["pseudo_accuracy"], 1) for r in students[kind] if r.get("pseudo_accuracy") is not None]

    md.append(f"Hard pseudo-labels kept per seed: {[r.get('pseudo_selected') for r in students['']]}, their "
              f"accuracy {right('')} %; the ensemble's argmax on all unlabelled clips: {right('soft-')} %.")
    md.append(f"The soft student starts from (per seed): {[first[s] for s in seeds]}.")
    c = students["cnn-soft-"][0].get("complexity")
    if c:
        md.append(f"DCASE-size CNN: {c['params']:,} parameters (limit {c['max_params']:,}), {c['macs'] / 1e6:.2f} M "
                  f"MACs per 1 s clip (limit {c['max_macs'] / 1e6:.0f} M).")
    return md + [""]


def plot_results(rows_of: dict[str, dict[str, list[Path]]], path: Path) -> Path:
    """One panel per table that ran, left to right: validation accuracy over steps per row of the pretraining table
    (mean and min-max over seeds); the learned layer weights of each layer-wise head (mean over seeds), the picture
    the layer-wise paper discusses; test accuracy on seen and unseen devices per row of the device table."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from launch.common.files import replacing

    panels = [(draw, rows_of[table]) for table, draw in (("pretraining", _curves_panel), ("heads", _weights_panel),
                                                          ("devices", _shift_panel)) if rows_of.get(table)]
    fig = Figure(figsize=(5.5 * max(1, len(panels)), 4.2))
    FigureCanvasAgg(fig)
    for i, (draw, rows) in enumerate(panels):
        draw(fig.add_subplot(1, len(panels), i + 1), rows)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def _curves_panel(ax, rows: dict[str, list[Path]]) -> None:
    import numpy as np

    for name, dirs in rows.items():
        runs = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in dirs]
        runs = [[(r["step"], 100 * r["val_accuracy"]) for r in recs if "val_accuracy" in r] for recs in runs]
        steps = [s for s, _ in runs[0]]
        acc = np.array([[a for _, a in r] for r in runs if len(r) == len(steps)])
        ax.plot(steps, acc.mean(0), marker="o", label=name)
        ax.fill_between(steps, acc.min(0), acc.max(0), alpha=0.2)
    ax.set(xlabel="fine-tuning step", ylabel="validation accuracy (%)", title="What pretraining is worth")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _weights_panel(ax, rows: dict[str, list[Path]]) -> None:
    import numpy as np

    weights = {name: np.mean([json.loads((d / "metrics.json").read_text())["layer_weights"] for d in dirs], axis=0)
               for name, dirs in rows.items() if "layer_weights" in json.loads((dirs[0] / "metrics.json").read_text())}
    width = 0.8 / max(1, len(weights))
    for i, (name, w) in enumerate(weights.items()):
        ax.bar(np.arange(1, len(w) + 1) + (i - (len(weights) - 1) / 2) * width, w, width, label=name)
    if weights:
        ax.axhline(1 / len(next(iter(weights.values()))), color="grey", lw=0.8, ls="--", label="uniform 1/L")
        ax.legend(fontsize=8)
    ax.set(xlabel="block", ylabel="softmax layer weight", title="Learned layer weights (mean over seeds)")


def _shift_panel(ax, rows: dict[str, list[Path]]) -> None:
    import numpy as np

    for i, part in enumerate(("seen", "unseen")):
        acc = [[100 * json.loads((d / "metrics.json").read_text())["seen_unseen"][part]["accuracy"] for d in dirs]
               for dirs in rows.values()]
        ax.bar(np.arange(len(acc)) + (i - 0.5) * 0.38, [np.mean(a) for a in acc], 0.38,
               yerr=[np.std(a, ddof=1) if len(a) > 1 else 0 for a in acc], capsize=3, label=f"{part} devices")
    ax.set_xticks(range(len(rows)), list(rows), rotation=15, fontsize=8)
    ax.legend(fontsize=8)
    ax.set(ylabel="test accuracy (%)", title="Device shift (mean and std over seeds)")
    ax.grid(alpha=0.3, axis="y")


def _machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")), None) if cpuinfo.exists() else None
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU"


class _Inline:
    """The pool's ``map`` and ``submit``, in this process (``--jobs 1``): each call runs at once."""

    def map(self, fn, *iterables):
        return map(fn, *iterables)

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future = Future()
        future.set_result(fn(*args))
        return future

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


def _pretraining_dir(out: Path, slug: str, seed: int) -> Path:
    return out / "pretraining" / f"{slug}-seed{seed}"


def _ssast_mean_dir(out: Path, seed: int) -> Path:
    """The SSAST + mean head run of a seed: the pretraining table's SSAST row, the heads and devices tables' baseline
    row and the semi-supervised SSAST teacher are the same configuration, so they share one run."""
    return _pretraining_dir(out, "ssast", seed)


def _row_dir(out: Path, table: str, row: int, seed: int) -> Path:
    return _ssast_mean_dir(out, seed) if row == 0 else out / table / f"{row}-seed{seed}"


def _markdown(title: str, rows: dict[str, list[dict]], columns=COLUMNS) -> list[str]:
    from finetune.metrics import results_cells

    lines = [f"**{title}**", "", "| row | " + " | ".join(h for h, _, _ in columns) + " | seeds |",
             "|---" * (len(columns) + 2) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + f" | {n} |" for name, cells, n in results_cells(rows, columns)]
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())
