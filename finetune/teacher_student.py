"""``run(cfg)``: the semi-supervised pipeline of the ICME 2024 Audio-MAE report (teacher -> pseudo-labels ->
student, in rounds), on every rank (``python finetune/pseudolabel.py``).

round r: teacher (fine-tuned on the labelled data; in later rounds, the previous student) -> an exact pass over the
unlabelled clips -> selected pseudo-labels written as a new shard set ``<run>/round{r}-pseudo`` -> a student
fine-tuned on labelled + pseudo-labelled data (from the pretrained encoder or the teacher). The report compares teacher
and student on the test split and, where the unlabelled clips carry their true labels (the synthetic corpus, or a
labelled split used as unlabelled), scores the selected pseudo-labels.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from finetune import selection
from finetune.config import CONFIG_DIR, FinetuneConfig, FinetuneDataConfig, resolve_run_dir
from finetune.metrics import fmt_number, fmt_percent, headline
from finetune.model import load_classifier
from finetune.selection import PseudoLabelConfig
from finetune.train import predict
from finetune.train import run as finetune_run
from launch.common.errors import BadInput, cli
from launch.common.files import atomic_write
from launch.runtime import checkpoints, distributed, run_folder
from launch.runtime.config import check, merge_config
from shards.default import ensure_synthetic
from shards.features import build_features
from shards.stream import ShardSetConfig, open_shard_set

log = logging.getLogger("semisup")


@dataclass
class SemiSupConfig(FinetuneConfig):
    """A fine-tuning config (teacher and student share it) plus the unlabelled data and the selection rules."""

    unlabelled: Optional[ShardSetConfig] = None
    """Unlabelled clips to pseudo-label; None with no training data given: the synthetic unlabelled split."""
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    pseudo_weight: float = 1.0
    """Sampling weight of the pseudo-labelled set next to the labelled sets (weight 1 each)."""
    teacher: str = ""
    """An already fine-tuned round-0 teacher (its run folder, with best.pt and metrics.json); empty: fine-tune one
    on the labelled data with this config."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check("pseudo_weight", self.pseudo_weight, self.pseudo_weight > 0, "a sampling weight > 0")


def load_semisup_config(argv: Sequence[str] = ()) -> SemiSupConfig:
    return merge_config(SemiSupConfig, argv, CONFIG_DIR, selector="preset", default_selector="default")


def _finetune(cfg: SemiSupConfig, run_dir: Path, stop, **changes: Any) -> tuple[FinetuneConfig, dict[str, Any]]:
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(FinetuneConfig)}
    sub = FinetuneConfig(**{**fields, "run_dir": str(run_dir), **changes})
    return sub, finetune_run(sub, stop=stop)


def _teacher_encoder(best: Path, out: Path, method: str = "teacher") -> Path:
    """The encoder of a fine-tuned classifier as an encoder.pt (for a student that starts from the teacher)."""
    model, payload = load_classifier(best)
    checkpoints.write_encoder(out, model.encoder.state_dict(), method, payload["encoder"], payload["step"])
    return out


def existing_teacher(path: str, classes: list[str]) -> tuple[Path, dict[str, Any]]:
    """A finished fine-tuning run folder used as the round-0 teacher -> (folder, its test metrics)."""
    run_dir = Path(path).resolve()
    if run_dir.name == "best.pt":
        run_dir = run_dir.parent
    for name in ("best.pt", "metrics.json"):
        if not (run_dir / name).is_file():
            raise BadInput(f"teacher={path}: no {name} in {run_dir} (expected a finished fine-tuning run folder)")
    _, payload = load_classifier(run_dir / checkpoints.CLASSIFIER_FILE)
    if payload["classes"] != classes:
        raise BadInput(f"teacher={path}: its classes {payload['classes']} differ from the labelled data's {classes}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return run_dir, headline(metrics)


def resolve_semisup_dir(cfg: SemiSupConfig) -> Path:
    """``run_dir``, or runs/semisup/<head>-<config hash> (the fine-tuning name, under semisup/)."""
    return Path(cfg.run_dir or str(resolve_run_dir(cfg)).replace("/finetune/", "/semisup/")).resolve()


def resolve_semisup_data(cfg: SemiSupConfig) -> tuple[FinetuneDataConfig, ShardSetConfig]:
    """The labelled data (train, val, test) and the unlabelled split; the synthetic corpus's splits for whatever is
    not given when no training data is given. Every teacher and student gets the same val and test splits: their
    training data (labelled + pseudo-labelled) is always given, so they cannot fall back to the synthetic ones."""
    d = cfg.data
    if d.train:
        if cfg.unlabelled is None:
            raise BadInput("unlabelled: no unlabelled shard set given (unlabelled={path: ..., split: ...})")
        return d, cfg.unlabelled
    root = str(ensure_synthetic(d.synthetic, d.stream.sample_rate))
    data = dataclasses.replace(d, train=[ShardSetConfig(root, "labelled")], val=d.val or ShardSetConfig(root, "val"),
                               test=d.test or ShardSetConfig(root, "test"))
    return data, cfg.unlabelled or ShardSetConfig(root, "unlabelled")


ROUND_OUTPUTS = ("semisup.json",)
"""Besides the round folders (``round*``), what a semi-supervised run writes into its folder."""


def run(cfg: SemiSupConfig, stop=None) -> dict[str, Any]:
    env, device = distributed.setup(cfg.deepspeed.backend)
    root = resolve_semisup_dir(cfg)

    def fresh_start() -> None:  # a fresh start moves every round aside, not only the runs inside them
        if run_folder.resume_mode(cfg.checkpoint.resume) == "never":
            run_folder.move_to_previous(root, [*ROUND_OUTPUTS, *(p.name for p in sorted(root.glob("round*")))])

    with run_folder.held(root, env.is_main, fresh_start):  # one pipeline per folder
        return _rounds(cfg, root, env, device, stop)


def _rounds(cfg: SemiSupConfig, root: Path, env: distributed.DistEnv, device: torch.device, stop) -> dict[str, Any]:
    from rich.console import Console

    console = Console(stderr=True, quiet=not env.is_main)
    data, unlabelled = resolve_semisup_data(cfg)
    labelled = list(data.train)
    if data.test is None:
        console.print("[yellow]warning[/]: no data.test given: teacher and student are trained but not compared")
    u_set = open_shard_set(unlabelled)  # refuses an empty or missing split in one line
    rows: list[dict[str, Any]] = []
    if cfg.teacher:
        teacher_dir, teacher_test = existing_teacher(cfg.teacher, open_shard_set(labelled[0]).classes)
    else:
        teacher_dir = root / "round0-teacher"
        _, summary = _finetune(cfg, teacher_dir, stop, data=data)
        if summary.get("stopped_at") is not None:
            return summary  # asked to stop (time limit): the requeued job resumes this fine-tuning run
        teacher_test = summary.get("test", {})
    rows.append({"model": "teacher (labelled only)", **teacher_test})

    for r in range(1, cfg.pseudo.rounds + 1):
        model, payload = load_classifier(teacher_dir / checkpoints.CLASSIFIER_FILE)
        classes = payload["classes"]
        if u_set.classes and u_set.classes != classes:
            raise BadInput(f"{unlabelled.path}: class list differs from the labelled data's")
        model.to(device)
        features = build_features(cfg.data.features).to(device)
        pred = predict(model, features, u_set, cfg, env, device, torch.float32)
        chosen = selection.select(pred["probs"], cfg.pseudo)
        out = root / f"round{r}-pseudo"
        if env.is_main:
            truth = [selection.true_index(m, classes) for m in pred["meta"]]
            report = selection.selection_report(chosen, pred["probs"], truth, classes)
            selection.print_selection(report, classes, console)
            if not (out / "manifest.json").exists():
                selection.write_pseudo_shards(Path(unlabelled.path), unlabelled.split, pred["keys"], chosen,
                                              pred["probs"], classes, out,
                                              str(teacher_dir / checkpoints.CLASSIFIER_FILE), cfg.pseudo)
        distributed.barrier()
        ckpt = cfg.ckpt
        if cfg.pseudo.student_init == "teacher":
            ckpt = str(_teacher_encoder(teacher_dir / checkpoints.CLASSIFIER_FILE,
                                        root / f"round{r}-teacher-encoder.pt"))
        student_dir = root / f"round{r}-student"
        train = labelled + [ShardSetConfig(str(out), "pseudo", cfg.pseudo_weight)]
        _, summary = _finetune(cfg, student_dir, stop, ckpt=ckpt, data=dataclasses.replace(data, train=train))
        if summary.get("stopped_at") is not None:
            return summary
        manifest = json.loads((out / "manifest.json").read_text())
        rep = manifest["pseudo"]["report"]
        rows.append({"model": f"student round {r}", **summary.get("test", {}),
                     "pseudo_selected": rep.get("num_selected"), "pseudo_accuracy": rep.get("accuracy"),
                     "teacher_accuracy_unlabelled": rep.get("teacher_accuracy_all")})
        teacher_dir = student_dir

    if env.is_main:
        _print_rows(rows, root, console)
        atomic_write(root / "semisup.json", json.dumps(rows, indent=1))
    distributed.barrier()
    return {"run_dir": str(root), "rows": rows, "rank": env.rank, "world_size": env.world_size}


def _print_rows(rows: list[dict[str, Any]], root: Path, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"semi-supervised: teacher vs student (test split) - {root}")
    for col in ("model", "Acc %", "AUC", "log loss", "seen dev. %", "unseen dev. %", "pseudo-labels",
                "pseudo acc %"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in rows:
        shift = row.get("seen_unseen", {})
        table.add_row(row["model"], fmt_percent(row.get("accuracy")), fmt_number(row.get("macro_auc")),
                      fmt_number(row.get("log_loss")),
                      *(fmt_percent(shift.get(part, {}).get("accuracy")) for part in ("seen", "unseen")),
                      str(row.get("pseudo_selected", "")), fmt_percent(row.get("pseudo_accuracy")))
    console.print(table)


def prepare(cfg: SemiSupConfig) -> None:
    resolve_semisup_data(cfg)  # builds the default corpus and checks the unlabelled set before anything is queued


def main(argv: list[str] | None = None) -> int:
    return cli(lambda: run(load_semisup_config(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
