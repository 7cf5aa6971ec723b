"""python finetune/results.py: the results benchmark (not a test) on the synthetic corpus, mean +- std over seeds.

Three tables, each row fine-tuned with ``--seeds`` seeds on the same data:

* ``pretraining``: from scratch vs SSAST-pretrained vs Audio-MAE-pretrained (mean head, full fine-tuning);
* ``heads``: the rows of Table I of the layer-wise paper on the SSAST-pretrained encoder (baseline, frozen backbone
  with post-norm, pre-norm, post-norm, double-norm);
* ``semisup``: teacher (labelled only) vs pseudo-label student under the synthetic city/device shift.

Every run has its own folder under ``--out``; a finished run is reused, so an interrupted benchmark continues where it
stopped. The tables are printed and written to ``<out>/results.md`` (with the command, date and machine).
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # finetune/ ; put the repository root there instead (entry trampoline)
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

HEAD_ROWS = {  # Table I of the layer-wise fine-tuning paper
    "baseline (mean)": ["head.kind=mean"],
    "frozen backbone, post-norm": ["head.kind=post_norm", "freeze_backbone=true"],
    "pre-norm": ["head.kind=pre_norm"],
    "post-norm": ["head.kind=post_norm"],
    "double-norm": ["head.kind=double_norm"],
}


def _pretrain(method: str, out: Path, steps: int) -> Path:
    from pretrain.config import load_pretrain_config
    from pretrain.train import run

    run_dir = out / f"pretrain-{method}"
    if not (run_dir / "encoder.pt").exists():
        run(load_pretrain_config([f"method={method}", f"run_dir={run_dir}", f"steps={steps}", "log.progress=false",
                                  f"checkpoint.every_steps={steps}"]))
    return run_dir / "encoder.pt"


def _finetune(run_dir: Path, args: list[str]) -> dict:
    from finetune.config import load_finetune_config
    from finetune.train import run

    if not (run_dir / "metrics.json").exists():
        run(load_finetune_config([f"run_dir={run_dir}", "log.every_steps=100", *args]))
    return json.loads((run_dir / "metrics.json").read_text())


def _semisup(run_dir: Path, args: list[str]) -> list[dict]:
    from finetune.semisup import load_semisup_config, run

    if not (run_dir / "semisup.json").exists():
        run(load_semisup_config([f"run_dir={run_dir}", "log.every_steps=100", *args]))
    return json.loads((run_dir / "semisup.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(prog="python finetune/results.py", description=__doc__.splitlines()[0])
    p.add_argument("--tables", default="pretraining,heads,semisup", help="comma-separated subset of the tables")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=600, help="fine-tuning steps per run")
    p.add_argument("--pretrain-steps", type=int, default=1500, help="pretraining steps (one run per method)")
    p.add_argument("--out", type=Path, default=Path("runs/results"))
    args = p.parse_args()

    from rich.console import Console

    from finetune.metrics import results_table

    console = Console(width=140)
    out = args.out.resolve()
    tables = args.tables.split(",")
    common = [f"steps={args.steps}", f"eval_every={max(1, args.steps // 4)}"]
    md = [f"Results on the synthetic corpus ({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"CPU): `python finetune/results.py --seeds {args.seeds} --steps {args.steps} "
          f"--pretrain-steps {args.pretrain_steps}`", ""]

    ssast = _pretrain("ssast", out, args.pretrain_steps) if {"pretraining", "heads", "semisup"} & set(tables) else None
    if "pretraining" in tables:
        mae = _pretrain("audiomae", out, args.pretrain_steps)
        rows = {}
        for name, slug, ckpt in (("from scratch", "scratch", "none"), ("SSAST-pretrained", "ssast", ssast),
                                 ("Audio-MAE-pretrained", "audiomae", mae)):
            rows[name] = [_finetune(out / "pretraining" / f"{slug}-seed{s}",
                                    [f"ckpt={ckpt}", f"seed={s}", "head.kind=mean", *common])
                          for s in range(args.seeds)]
        table = results_table(rows, title="What pretraining is worth (mean head, full fine-tuning)")
        console.print(table)
        md += _markdown("What pretraining is worth (mean head, full fine-tuning)", rows)
    if "heads" in tables:
        rows = {name: [_finetune(out / "heads" / f"{i}-seed{s}", [f"ckpt={ssast}", f"seed={s}", *extra, *common])
                       for s in range(args.seeds)] for i, (name, extra) in enumerate(HEAD_ROWS.items())}
        console.print(results_table(rows, title="Layer-wise heads on the SSAST-pretrained encoder (paper Table I rows)"))
        md += _markdown("Layer-wise heads on the SSAST-pretrained encoder (paper Table I rows)", rows)
    if "semisup" in tables:
        runs = [_semisup(out / "semisup" / f"seed{s}", [f"ckpt={ssast}", f"seed={s}", "head.kind=mean",
                                                         "pseudo.threshold=0.7", *common])
                for s in range(args.seeds)]
        rows = {"teacher (labelled only)": [r[0] for r in runs], "student (labelled + pseudo-labels)": [r[1] for r in runs]}
        console.print(results_table(rows, title="Teacher vs pseudo-label student (synthetic city/device shift)"))
        md += _markdown("Teacher vs pseudo-label student (synthetic city/device shift)", rows)
        acc = [r[1].get("pseudo_accuracy") for r in runs]
        md.append(f"Selected pseudo-labels per seed: {[r[1].get('pseudo_selected') for r in runs]}, their accuracy "
                  f"{[round(100 * a, 1) for a in acc if a is not None]} %.")
    (out / "results.md").write_text("\n".join(md) + "\n")
    console.print(f"tables -> {out / 'results.md'}")
    return 0


def _markdown(title: str, rows: dict[str, list[dict]]) -> list[str]:
    from finetune.metrics import summarise_seeds

    lines = [f"**{title}**", "", "| row | Acc (%) | AUC (%) | seeds |", "|---|---|---|---|"]
    for name, runs in rows.items():
        s = summarise_seeds([{k: r[k] for k in ("accuracy", "macro_auc") if k in r} for r in runs])
        acc, auc = s["accuracy"], s["macro_auc"]
        lines.append(f"| {name} | {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} | "
                     f"{100 * auc['mean']:.2f} ± {100 * auc['std']:.2f} | {acc['n']} |")
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())
