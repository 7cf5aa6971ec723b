"""``run(cfg)``: the semi-supervised pipeline of the ICME 2024 Audio-MAE report (teacher -> pseudo-labels ->
student, in rounds), on every rank (``python finetune/pseudolabel.py``), with the distillation of CP-JKU's DCASE Task 1
systems (a teacher ensemble, soft targets, a DCASE-size CNN student).

round r: teacher (fine-tuned on the labelled data; or ``teacher=RUN`` / an ensemble ``teacher=[RUN, RUN, ...]`` of
finished runs; in later rounds, the previous student) -> an exact pass over the unlabelled clips (every teacher with
its own features and token grid, averaged by key) -> selected pseudo-labels written as a new shard set
``<run>/round{r}-pseudo`` (with the teachers' probabilities when ``distill.targets=soft``) -> a student fine-tuned on
labelled + pseudo-labelled data (from the pretrained encoder or the teacher, or the CNN of ``model=cnn``). The report
compares teachers, their ensemble and the student on the test split and, where the unlabelled clips carry their true
labels (the synthetic corpus, or a labelled split used as unlabelled), scores the selected pseudo-labels.

Consistency (the teacher sees a clean clip, the student an augmented one) is what the offline pass gives: teacher
probabilities come from :func:`finetune.train.predict` (features in eval mode: no SpecAugment, noise, mixup, token
masking, MixStyle or device IR), and the student trains with every augmentation its config turns on; the mixup of two
clips mixes their teacher targets by the same weight. An online teacher would give the same targets for the same clean
1 s clip at the price of K teacher forward passes per student step, so there is no flag for it.
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
from finetune.distill import DistillConfig, align_by_key, ensemble_probs
from finetune.metrics import evaluate_predictions, fmt_number, fmt_percent, headline
from finetune.model import load_classifier
from finetune.selection import PseudoLabelConfig
from finetune.train import predict, seen_devices
from finetune.train import run as finetune_run
from launch.common.errors import BadInput, check, cli
from launch.common.files import atomic_write
from launch.runtime import checkpoints, distributed, run_folder
from launch.runtime.config import merge_config
from shards.default import ensure_synthetic
from shards.features import FeatureConfig, build_features
from shards.stream import ShardSet, ShardSetConfig, open_eval_split, open_shard_set

log = logging.getLogger("semisup")


@dataclass
class SemiSupConfig(FinetuneConfig):
    """A fine-tuning config (teacher and student share it) plus the unlabelled data and the selection rules."""

    unlabelled: Optional[ShardSetConfig] = None
    """Unlabelled clips to pseudo-label; None with no training data given: the synthetic unlabelled split."""
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    pseudo_weight: float = 1.0
    """Sampling weight of the pseudo-labelled set next to the labelled sets (weight 1 each)."""
    teacher: Any = ""
    """Already fine-tuned round-0 teacher(s): a run folder (with best.pt and metrics.json), or a list of them, an
    ensemble averaged as ``pseudo.ensemble`` says (any mix of SSAST, Audio-MAE, frame-token and CNN runs: each predicts
    with its own features); empty: fine-tune one transformer on the labelled data with this config. A str or a list
    (type Any: OmegaConf has no str-or-list type), so the default's run-folder hash is the one it had."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check("pseudo_weight", self.pseudo_weight, self.pseudo_weight > 0, "a sampling weight > 0")
        teacher_runs(self.teacher)  # a malformed teacher= is one line here
        if self.pseudo.student_init == "teacher":  # an ensemble's student starts from its first teacher
            check("pseudo.student_init", "teacher", self.model == "transformer",
                  "'pretrained' with model=cnn (the student starts from a transformer teacher's encoder)")
        check("pseudo.distill_labelled", self.pseudo.distill_labelled,
              not self.pseudo.distill_labelled or self.distill.targets == "soft", "false unless distill.targets=soft")


def teacher_runs(teacher: Any) -> list[str]:
    """``teacher`` (a str, empty or not, or a list of str) -> the run folders it names."""
    items = [teacher] if isinstance(teacher, str) else teacher
    ok = isinstance(items, (list, tuple)) and all(isinstance(t, str) and (t or isinstance(teacher, str)) for t in items)
    check("teacher", teacher, ok, "a fine-tuning run folder or a list of them ([RUN, RUN, ...])")
    return [t for t in items if t]


def load_semisup_config(argv: Sequence[str] = ()) -> SemiSupConfig:
    return merge_config(SemiSupConfig, argv, CONFIG_DIR, selector="preset", default_selector="default")


def _finetune(cfg: SemiSupConfig, run_dir: Path, stop, **changes: Any) -> tuple[FinetuneConfig, dict[str, Any]]:
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(FinetuneConfig)}
    sub = FinetuneConfig(**{**fields, "run_dir": str(run_dir), **changes})
    return sub, finetune_run(sub, stop=stop)


def _teacher_encoder(best: Path, out: Path, method: str = "teacher") -> Path:
    """The encoder of a fine-tuned classifier as an encoder.pt (for a student that starts from the teacher)."""
    model, payload = load_classifier(best)
    if not hasattr(model, "encoder"):
        raise BadInput(f"pseudo.student_init=teacher: {best} is a CNN; a student starts from a transformer's encoder")
    checkpoints.write_encoder(out, model.encoder.state_dict(), method, payload["encoder"], payload["step"])
    return out


def existing_teacher(path: str, classes: list[str]) -> tuple[Path, dict[str, Any]]:
    """A finished fine-tuning run folder used as a round-0 teacher -> (folder, its test metrics)."""
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


# ----------------------------------------------------------------------------------------------------------------------
# Teachers: each predicts with its own input, the ensemble averages by clip key


def teacher_features(run_dir: Path, cfg: SemiSupConfig) -> tuple[FeatureConfig, float]:
    """The features and clip length a teacher was fine-tuned with (its run's config.yaml), so an Audio-MAE, SSAST,
    frame-token or CNN teacher each sees the input it knows; ``cfg``'s when the folder has no config.yaml."""
    tree = run_folder.read_config(run_dir, f"teacher={run_dir}: move it away to predict with this run's features")
    data = (tree or {}).get("data") or {}
    if not data.get("features"):
        return cfg.data.features, cfg.data.stream.clip_seconds
    known = {f.name for f in dataclasses.fields(FeatureConfig)}
    try:
        features = FeatureConfig(**{k: v for k, v in data["features"].items() if k in known})
    except (TypeError, ValueError) as e:
        raise BadInput(f"teacher={run_dir}: config.yaml data.features: {e}") from None
    return features, float((data.get("stream") or {}).get("clip_seconds", cfg.data.stream.clip_seconds))


def predict_teachers(teacher_dirs: Sequence[Path], s: ShardSet, cfg: SemiSupConfig, env: distributed.DistEnv,
                     device: torch.device) -> dict[str, Any]:
    """Every teacher's exact pass over ``s`` (its own features), aligned by clip key and averaged
    (``pseudo.ensemble``) -> keys, probs [N, C], labels, meta (as :func:`finetune.train.predict`) + ``members``."""
    keys, probs, first = [], [], None
    for d in teacher_dirs:
        model, _ = load_classifier(d / checkpoints.CLASSIFIER_FILE)
        features_cfg, seconds = teacher_features(d, cfg)
        stream = dataclasses.replace(cfg.data.stream, clip_seconds=seconds)
        sub = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, features=features_cfg, stream=stream))
        pred = predict(model.to(device), build_features(features_cfg).to(device), s, sub, env, device, torch.float32)
        keys.append(pred["keys"])
        probs.append(pred["probs"])
        first = first or pred
        del model
    kept, members, rows = align_by_key(keys, probs)
    return {"keys": kept, "probs": ensemble_probs(members, cfg.pseudo.ensemble), "members": members,
            "labels": first["labels"][rows], "meta": [first["meta"][i] for i in rows]}


def teacher_rows(cfg: SemiSupConfig, teacher_dirs: list[Path], tests: list[dict[str, Any]], data: FinetuneDataConfig,
                 env: distributed.DistEnv, device: torch.device) -> list[dict[str, Any]]:
    """The report's teacher rows: each teacher's test metrics and, for an ensemble, the ensemble's (its own pass)."""
    if len(teacher_dirs) == 1:
        return [{"model": "teacher (labelled only)", "role": "teacher", **tests[0]}]
    rows = [{"model": f"teacher {i + 1} ({d.name})", "role": "teacher", **t}
            for i, (d, t) in enumerate(zip(teacher_dirs, tests))]
    if data.test is not None:
        test_set = open_eval_split(data.test, "data.test", labelled=True)
        pred = predict_teachers(teacher_dirs, test_set, cfg, env, device)
        train_sets = [open_shard_set(c) for c in data.train]
        metrics = evaluate_predictions(pred["probs"], pred["labels"], test_set.classes, pred["meta"],
                                       seen_devices=seen_devices(cfg, train_sets, pred["meta"]))
        rows.append({"model": f"teacher ensemble ({len(teacher_dirs)}, mean {cfg.pseudo.ensemble})",
                     "role": "ensemble", **headline(metrics)})
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# The rounds


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


def _round0(cfg: SemiSupConfig, root: Path, data: FinetuneDataConfig, classes: list[str], stop,
            ) -> tuple[list[Path], list[dict[str, Any]], dict[str, Any] | None]:
    """The round-0 teacher(s): the given run folders, or a transformer fine-tuned here -> (folders, test metrics,
    the summary of a fine-tuning that was asked to stop, else None)."""
    runs = teacher_runs(cfg.teacher)
    if runs:
        found = [existing_teacher(t, classes) for t in runs]
        return [d for d, _ in found], [t for _, t in found], None
    teacher_dir = root / "round0-teacher"
    _, summary = _finetune(cfg, teacher_dir, stop, data=data, model="transformer", distill=DistillConfig())
    return [teacher_dir], [summary.get("test", {})], summary if summary.get("stopped_at") is not None else None


def _rounds(cfg: SemiSupConfig, root: Path, env: distributed.DistEnv, device: torch.device, stop) -> dict[str, Any]:
    from rich.console import Console

    console = Console(stderr=True, quiet=not env.is_main)
    data, unlabelled = resolve_semisup_data(cfg)
    labelled = list(data.train)
    if data.test is None:
        console.print("[yellow]warning[/]: no data.test given: teacher and student are trained but not compared")
    u_set = open_shard_set(unlabelled)  # refuses an empty or missing split in one line
    classes = open_shard_set(labelled[0]).classes
    if u_set.classes and u_set.classes != classes:
        raise BadInput(f"{unlabelled.path}: class list differs from the labelled data's")
    teacher_dirs, tests, stopped = _round0(cfg, root, data, classes, stop)
    if stopped is not None:
        return stopped  # asked to stop (time limit): the requeued job resumes this fine-tuning run
    rows = teacher_rows(cfg, teacher_dirs, tests, data, env, device)
    soft = cfg.distill.targets == "soft"

    for r in range(1, cfg.pseudo.rounds + 1):
        pred = predict_teachers(teacher_dirs, u_set, cfg, env, device)
        chosen = selection.select(pred["probs"], cfg.pseudo)
        out, teacher = root / f"round{r}-pseudo", ",".join(str(d / checkpoints.CLASSIFIER_FILE) for d in teacher_dirs)
        if env.is_main:
            truth = [selection.true_index(m, classes) for m in pred["meta"]]
            report = selection.selection_report(chosen, pred["probs"], truth, classes)
            selection.print_selection(report, classes, console)
            if not (out / "manifest.json").exists():
                selection.write_pseudo_shards(Path(unlabelled.path), unlabelled.split, pred["keys"], chosen,
                                              pred["probs"], classes, out, teacher,
                                              dataclasses.replace(cfg.pseudo, soft=cfg.pseudo.soft or soft))
        changes: dict[str, Any] = {}
        if cfg.pseudo.distill_labelled:  # the labelled clips' teacher probabilities, by key
            probs_file = root / f"round{r}-labelled-teacher-probs.npz"
            labelled_pred = [predict_teachers(teacher_dirs, open_shard_set(c), cfg, env, device) for c in labelled]
            if env.is_main and not probs_file.exists():
                selection.write_teacher_probs(probs_file, [k for p in labelled_pred for k in p["keys"]],
                                              _concat([p["probs"] for p in labelled_pred]), classes, teacher)
            changes["distill"] = dataclasses.replace(cfg.distill, teacher_probs=str(probs_file))
        distributed.barrier()
        if cfg.pseudo.student_init == "teacher":
            changes["ckpt"] = str(_teacher_encoder(teacher_dirs[0] / checkpoints.CLASSIFIER_FILE,
                                                   root / f"round{r}-teacher-encoder.pt"))
        student_dir = root / f"round{r}-student"
        train = labelled + [ShardSetConfig(str(out), "pseudo", cfg.pseudo_weight)]
        _, summary = _finetune(cfg, student_dir, stop, data=dataclasses.replace(data, train=train), **changes)
        if summary.get("stopped_at") is not None:
            return summary
        rep = json.loads((out / "manifest.json").read_text())["pseudo"]["report"]
        name = f"{'CNN ' if cfg.model == 'cnn' else ''}student round {r}{' (soft labels)' if soft else ''}"
        rows.append({"model": name,
                     "role": "student", **summary.get("test", {}), "targets": cfg.distill.targets,
                     **({"complexity": summary["complexity"]} if "complexity" in summary else {}),
                     "pseudo_selected": rep.get("num_selected"), "pseudo_accuracy": rep.get("accuracy"),
                     "teacher_accuracy_unlabelled": rep.get("teacher_accuracy_all")})
        teacher_dirs = [student_dir]

    if env.is_main:
        _print_rows(rows, root, console)
        atomic_write(root / "semisup.json", json.dumps(rows, indent=1))
    distributed.barrier()
    return {"run_dir": str(root), "rows": rows, "rank": env.rank, "world_size": env.world_size}


def _concat(arrays: list[Any]) -> Any:
    import numpy as np

    return np.concatenate(arrays) if arrays else np.zeros((0, 0))


def _print_rows(rows: list[dict[str, Any]], root: Path, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"semi-supervised: teachers vs student (test split) - {root}")
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
    for row in rows:
        c = row.get("complexity")
        if c:
            console.print(f"{row['model']}: {c['params']:,} parameters (DCASE 2022 limit {c['max_params']:,}), "
                          f"{c['macs'] / 1e6:.2f} M MACs per 1 s clip (limit {c['max_macs'] / 1e6:.0f} M)")


def prepare(cfg: SemiSupConfig) -> None:
    resolve_semisup_data(cfg)  # builds the default corpus and checks the unlabelled set before anything is queued


def main(argv: list[str] | None = None) -> int:
    return cli(lambda: run(load_semisup_config(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
