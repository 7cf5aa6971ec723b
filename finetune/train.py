"""Fine-tuning as a task of the one loop (``python finetune/layerwise.py``; ``python -m finetune.train`` for one
process or under torchrun).

What fine-tuning says to :func:`launch.runtime.loop.run`: the model is a pretrained encoder plus a (layer-wise) head
(:mod:`finetune.model`); a step mixes up waveforms, computes features on the device, optionally masks tokens and
returns the cross-entropy against (mixed) one-hot targets; validation is the accuracy of an exact pass over the
validation split (every clip once across ranks, predictions gathered), which picks ``best.pt``; the export is the
test report of the best weights: metrics.json, predictions.csv, confusion_matrix.png, the learned layer weights (also
to TensorBoard), and the console tables.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetune import metrics as M
from finetune.augment import apply_device_ir, build_ir_bank, eligible_clips, freq_mixstyle
from finetune.cnn import CNNClassifier, Complexity, count_complexity
from finetune.config import FinetuneConfig, load_finetune_config, resolve_run_dir
from finetune.distill import clip_teachers, distillation_targets, soft_cross_entropy
from finetune.model import build_classifier, cnn_payload, finetune_groups
from finetune.selection import read_teacher_probs
from launch.common.errors import BadInput, cli
from launch.runtime import checkpoints, distributed, loop
from pretrain.masking import mae_mask_2d
from shards.default import ensure_synthetic
from shards.features import build_features
from shards.stream import ShardSet, ShardSetConfig, eval_batches, open_eval_split, open_shard_set, train_loader

log = logging.getLogger("finetune")


def resolve_data(cfg: FinetuneConfig, console=None) -> tuple[list[ShardSet], ShardSet | None, ShardSet | None]:
    """Train sets, validation and test split; the synthetic corpus when no training data is given."""
    d = cfg.data
    if d.train:
        train, val, test = list(d.train), d.val, d.test
    else:
        root = str(ensure_synthetic(d.synthetic, d.stream.sample_rate, console=console))
        train = [ShardSetConfig(root, "labelled")]
        val, test = d.val or ShardSetConfig(root, "val"), d.test or ShardSetConfig(root, "test")
    sets = [open_shard_set(s, d.stream) for s in train]  # the stream's retries and timeouts for a URL's manifest
    classes = sets[0].classes
    for s, c in zip(sets, train):
        if s.classes != classes:
            raise BadInput(f"{c.path}: class list differs from {train[0].path} ({len(s.classes)} vs {len(classes)})")
        if not s.labelled:
            raise BadInput(f"{c.path}: split {c.split!r} has no labels (a labelled split is needed for fine-tuning)")
    if not classes:
        raise BadInput(f"{train[0].path}: the corpus has no class list; it cannot be used for classification")
    if sets[0].multi_label:
        raise BadInput(f"{train[0].path}: multi-label data; fine-tuning here is single-label scene classification")
    if cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise BadInput(f"num_classes={cfg.num_classes} but {train[0].path} has {len(classes)} classes")
    # labels and readable shards of val and test: found now, not after all training
    opened = [open_eval_split(c, role, labelled=True, stream=d.stream) if c is not None else None
              for c, role in ((val, "data.val"), (test, "data.test"))]
    for s, c, role in zip(opened, (val, test), ("data.val", "data.test")):
        if s is not None and s.classes != classes:
            raise BadInput(f"{role}: {c.path}: class list differs from the training data's")
    return sets, opened[0], opened[1]


def predict(model, features, s: ShardSet, cfg: FinetuneConfig, env, device, dtype) -> dict[str, Any]:
    """Exact pass over ``s``: keys, probabilities [N, C], labels, meta, gathered on every rank in index order.

    ``model`` is the DeepSpeed engine or a plain :class:`~finetune.model.Classifier`.
    """
    was_training = model.training
    model.eval()
    features.eval()
    keys, probs, labels, meta = [], [], [], []
    with torch.no_grad():
        for batch in eval_batches(s, cfg.data.stream, rank=env.rank, world=env.world_size):
            logits = model(features(batch.wave.to(device)).to(dtype)).float()
            p = torch.sigmoid(logits) if s.multi_label else logits.softmax(-1)
            for i in torch.nonzero(batch.valid).flatten().tolist():
                keys.append(batch.keys[i])
                probs.append(p[i].cpu().numpy())
                labels.append(batch.label[i].item() if not s.multi_label else batch.label[i].numpy())
                meta.append(batch.meta[i])
    model.train(was_training)
    features.train(was_training)
    local = (keys, probs, labels, meta)
    if torch.distributed.is_initialized() and env.world_size > 1:
        gathered: list[Any] = [None] * env.world_size
        torch.distributed.all_gather_object(gathered, local)
        keys, probs, labels, meta = (sum((g[i] for g in gathered), []) for i in range(4))
    return {"keys": keys, "probs": np.stack(probs) if probs else np.zeros((0, len(s.classes))),
            "labels": np.array(labels), "meta": meta}


def _loss(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), target)
    return -(target * logits.float().log_softmax(-1)).sum(-1).mean()


def _targets(label: torch.Tensor, num_classes: int, multi_label: bool) -> torch.Tensor:
    return label.float() if multi_label else F.one_hot(label.clamp(min=0), num_classes).float()


def _token_mask(cfg: FinetuneConfig, encoder, batch: int, gen: torch.Generator) -> tuple:
    """Audio-MAE's fine-tune-time masking of whole time steps / frequency bands of the token grid (or nothing)."""
    rt, rf = cfg.augment.token_mask_time, cfg.augment.token_mask_freq
    if rt == 0 and rf == 0:
        return ()
    ids_keep, _, _ = mae_mask_2d(batch, encoder.grid, rt, rf, generator=gen, token_order=encoder.cfg.token_order)
    return (ids_keep,)


def mixup(wave: torch.Tensor, target: torch.Tensor, prob: float, alpha: float, gen: torch.Generator):
    """SSAST's waveform mixup: with probability ``prob`` a clip is mixed with a random partner, lambda ~ Beta(a, a)."""
    if prob <= 0:
        return wave, target
    b = wave.shape[0]
    apply = torch.rand(b, generator=gen) < prob
    partner = torch.randint(0, b, (b,), generator=gen)
    lam = torch.distributions.Beta(alpha, alpha).sample((b,)) if alpha > 0 else torch.ones(b)
    lam = loop.to_device(torch.where(apply, lam, torch.ones(b)), wave.device)
    partner = loop.to_device(partner, wave.device)
    wave = lam[:, None] * wave + (1 - lam[:, None]) * wave[partner]
    target = lam[:, None] * target + (1 - lam[:, None]) * target[partner]
    return wave, target


class FinetuneTask(loop.Task):
    """A pretrained encoder plus a head, fine-tuned on labelled shards; the best validation accuracy is kept."""

    label = "fine-tune"

    def __init__(self, cfg: FinetuneConfig):
        super().__init__(resolve_run_dir(cfg), cfg.data.stream.batch_size)
        self.cfg = cfg
        self.selection = loop.Selection("val_accuracy", "max", cfg.early_stop)

    def setup(self, ctx: loop.Context) -> None:
        # rank 0 builds the default corpus if needed; every rank then opens the same shard sets
        self.train_sets, self.val_set, self.test_set = ctx.main_first(lambda: resolve_data(self.cfg, ctx.console))
        self.classes, self.multi_label = self.train_sets[0].classes, self.train_sets[0].multi_label
        self.features = build_features(self.cfg.data.features).to(ctx.device)
        bank = ctx.main_first(lambda: build_ir_bank(self.cfg.augment.device_ir, self.cfg.data.synthetic,
                                                    self.cfg.data.stream.sample_rate))
        self.device_irs = bank.to(ctx.device) if bank is not None else None
        check_student(self.cfg, self.multi_label)
        d = self.cfg.distill  # labelled clips' teacher probabilities (soft targets by key), if given
        self.teacher_probs = read_teacher_probs(d.teacher_probs, self.classes) if d.teacher_probs else {}

    def build_model(self, ctx: loop.Context) -> nn.Module:
        cfg = self.cfg
        self.complexity: Complexity | None = None
        if cfg.model == "cnn":  # the DCASE-size student, from scratch
            self.model, self.info = CNNClassifier(cfg.cnn, len(self.classes)), {"source": "scratch", "format": "cnn"}
            self.complexity = cnn_complexity(self.model, self.features, cfg)
            return self.model
        overrides = {"target_frames": cfg.data.features.target_frames, "stride_freq": cfg.encoder.stride_freq,
                     "stride_time": cfg.encoder.stride_time, "drop_path": cfg.encoder.drop_path}
        self.model, self.info = build_classifier(cfg.ckpt, overrides, cfg.scratch_encoder, cfg.head, len(self.classes),
                                                 cfg.freeze_backbone)
        return self.model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        if self.cfg.model == "cnn":
            return None  # one rate for the whole CNN; no decay on BatchNorm and biases (the loop's default split)
        o = self.cfg.optim
        return finetune_groups(model, o.head_lr_scale, o.layer_decay, o.weight_decay)

    def describe(self, ctx: loop.Context, model: nn.Module) -> list[str]:
        if self.complexity is not None:
            c = self.cfg.cnn
            return [f"student CNN       CP-Mobile style, base {c.base_channels} x {c.channels_multiplier} per stage, "
                    f"expansion {c.expansion_rate}, blocks {list(c.blocks)} -> {len(self.classes)} classes",
                    f"complexity        {self.complexity.describe()}"]
        enc, cfg = model.encoder, self.cfg
        return [f"fine-tune         {self.info.get('source', '?')} ({self.info.get('path', cfg.ckpt)}) -> "
                f"{len(self.classes)} classes",
                f"encoder           {enc.cfg.size}, {enc.grid[0]} x {enc.grid[1]} = {enc.num_patches} patches; head "
                f"{cfg.head.kind}{' (frozen backbone)' if cfg.freeze_backbone else ''}; head lr x "
                f"{cfg.optim.head_lr_scale}, layer decay {cfg.optim.layer_decay}"]

    def train_batches(self, ctx: loop.Context, start_micro_step: int) -> Iterator[Any]:
        return train_loader(self.train_sets, self.cfg.data.stream, rank=ctx.env.rank, start_step=start_micro_step,
                            pin_memory=ctx.device.type == "cuda")

    def step(self, ctx: loop.Context, engine: Any, batch: Any, generator: torch.Generator) -> loop.StepOutput:
        cfg, aug = self.cfg, self.cfg.augment
        wave, target = batch.wave, self.targets(batch)
        shares: dict[str, torch.Tensor] = {}  # logged only while an augmentation is on: existing logs stay the same
        if self.device_irs is not None:  # CP-JKU's order: the device IR first (their dataset), then mixup
            wave, target = wave.to(ctx.device, non_blocking=True), loop.to_device(target, ctx.device)
            wave, chosen = apply_device_ir(wave, self.device_irs, aug.device_ir.p, generator,
                                           eligible_clips(batch.meta, aug.device_ir.devices), aug.device_ir.keep_level)
            shares["device_ir_share"] = loop.to_device((chosen >= 0).float().mean(), ctx.device)
        wave, target = mixup(wave, target, aug.mixup, aug.mixup_alpha, generator)
        fbank = self.features(wave.to(ctx.device, non_blocking=True))
        if aug.freq_mixstyle > 0:
            mixed = freq_mixstyle(fbank, aug.freq_mixstyle, aug.freq_mixstyle_alpha, generator)
            # known on the host: a fill on the device, no copy
            shares["mixstyle_share"] = (torch.ones if mixed is not fbank else torch.zeros)((), device=ctx.device)
            fbank = mixed
        fbank = fbank.to(ctx.dtype)
        logits = engine(fbank, *_token_mask(cfg, getattr(self.model, "encoder", None), fbank.shape[0], generator))
        return loop.StepOutput(self.loss(logits, loop.to_device(target, ctx.device)), shares,
                               {"corrupt": batch.corrupt})

    def targets(self, batch: Any) -> torch.Tensor:
        """One-hot (multi-hot) targets ``[B, C]``; with ``distill.targets=soft`` ``[B, 2C]``: each clip's weighted
        label part | its teacher part (:func:`finetune.distill.distillation_targets`), mixed alike by mixup."""
        d, n = self.cfg.distill, len(self.classes)
        if d.targets == "hard":
            return _targets(batch.label, n, self.multi_label)
        teacher, has, counts = clip_teachers(batch.keys, batch.meta, self.teacher_probs, n)
        return torch.cat(distillation_targets(batch.label, teacher, has, counts, n, d.temperature, d.label_weight,
                                              d.weight), 1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The cross-entropy; with soft targets plus the distillation term T^2 CE(p_T, softmax(s / T)) (Hinton)."""
        d = self.cfg.distill
        if d.targets == "hard":
            return _loss(logits, target, self.multi_label)
        hard, soft = target.float().chunk(2, -1)
        return (soft_cross_entropy(logits, hard) + soft_cross_entropy(logits, soft, d.temperature)).mean()

    @property
    def validates(self) -> bool:
        return self.val_set is not None

    def evaluate(self, ctx: loop.Context, engine: Any) -> dict[str, float]:
        pred = predict(engine, self.features, self.val_set, self.cfg, ctx.env, ctx.device, ctx.dtype)
        if not len(pred["labels"]):
            raise BadInput(f"data.val ({self.val_set.name}): no clip of the validation split could be read; "
                           "nothing to select the best checkpoint on")
        return {"val_accuracy": float((pred["probs"].argmax(1) == pred["labels"]).mean())}

    def save_best(self, ctx: loop.Context, engine: Any, step: int, scores: dict[str, float]) -> None:
        if ctx.env.is_main:
            model = engine.module
            encoder, head = (cnn_payload(model) if self.cfg.model == "cnn"
                             else (asdict(model.encoder.cfg), asdict(self.cfg.head)))
            checkpoints.write_classifier(ctx.run_dir / checkpoints.CLASSIFIER_FILE, model.state_dict(),
                                         encoder=encoder, head=head,
                                         classes=self.classes, step=step,
                                         val={"accuracy": scores["val_accuracy"]}, pretrained=self.info)

    def finish(self, ctx: loop.Context, engine: Any, state: loop.LoopState) -> dict[str, Any]:
        distributed.barrier()  # best.pt is on disk
        summary: dict[str, Any] = {"best_val_accuracy": state.best}
        if self.test_set is None:
            return summary
        best = ctx.run_dir / checkpoints.CLASSIFIER_FILE
        if best.exists():  # test the best weights (no validation: the last ones)
            weights = checkpoints.read_classifier(best)["state_dict"]
            current = engine.module.state_dict()
            engine.module.load_state_dict({k: v.to(current[k].dtype) for k, v in weights.items()})
        pred = predict(engine, self.features, self.test_set, self.cfg, ctx.env, ctx.device, ctx.dtype)
        if ctx.env.is_main:
            summary["test"] = report(ctx, state.step, pred, self.classes, self.cfg, engine.module, self.train_sets,
                                     self.complexity)
        if self.complexity is not None:
            summary["complexity"] = self.complexity.as_dict()
        return summary


def run(cfg: FinetuneConfig, stop=None) -> dict[str, Any]:
    """Fine-tune, select on validation, test the best weights, on every rank (see :func:`launch.runtime.loop.run`).

    ``stop`` (a ``threading.Event``, set by the launcher on SIGUSR2) saves a checkpoint at the current step and
    returns early with ``stopped_at``; the requeued job resumes there.
    """
    return loop.run(FinetuneTask(cfg), cfg, stop)


def seen_devices(cfg: FinetuneConfig, train_sets: list[ShardSet], meta: list[dict]) -> list[str] | None:
    """``data.seen_devices``, else the evaluated devices the training manifests do not list as test-only (TAU22's
    s4-s6, the synthetic corpus's); None (no seen / unseen split) when neither names any."""
    if cfg.data.seen_devices is not None:
        return list(cfg.data.seen_devices)
    held_out = {d.lower() for s in train_sets for d in s.test_only_devices}
    if not held_out:
        return None
    devices = {str(m["device"]) for m in meta if m.get("device") is not None}
    return sorted((d for d in devices if d.lower() not in held_out), key=str.lower)


def report(ctx: loop.Context, step: int, pred: dict, classes: list[str], cfg: FinetuneConfig, model,
           train_sets: list[ShardSet], complexity: Complexity | None = None) -> dict:
    """metrics.json, predictions.csv, confusion_matrix.png and the layer weights (also to the tracker's sinks), plus
    the console tables (rank 0); a CNN student's parameters and MACs against the DCASE limits."""
    run_dir, console = ctx.run_dir, ctx.console
    metrics = M.evaluate_predictions(pred["probs"], pred["labels"], classes, pred["meta"],
                                     seen_devices=seen_devices(cfg, train_sets, pred["meta"]))
    if complexity is not None:
        metrics["complexity"] = complexity.as_dict()
        console.print(f"student CNN: {complexity.describe()}")
    head = getattr(model, "head", None)
    if hasattr(head, "layer_weights"):
        weights = head.layer_weights().detach().float().cpu().tolist()
        metrics["layer_weights"] = weights
        console.print(M.format_layer_weights(weights))
        ctx.tracker.image("test/layer_weights", step, M.plot_layer_weights(weights, run_dir / "layer_weights.png"))
    M.write_metrics(run_dir / "metrics.json", metrics)
    M.write_predictions(run_dir / "predictions.csv", pred["keys"], pred["probs"], pred["labels"], classes)
    name = cfg.head.kind if cfg.model == "transformer" else cfg.model
    png = M.plot_confusion_matrix(np.array(metrics["confusion_matrix"]), classes, run_dir / "confusion_matrix.png",
                                  title=f"{name} - test accuracy {100 * metrics['accuracy']:.2f}%")
    ctx.tracker.image("test/confusion_matrix", step, png)
    M.print_report(metrics, classes, console)
    console.print(f"[bold green]done[/]: metrics -> {run_dir / 'metrics.json'}, confusion matrix -> {png}")
    return M.headline(metrics)


def check_student(cfg: FinetuneConfig, multi_label: bool) -> None:
    """What distillation and the CNN student cannot do, in one line each, before any step."""
    if cfg.distill.targets == "soft" and multi_label:
        raise BadInput("distill.targets=soft: soft targets are teacher probabilities of single-label classification; "
                       "the training data is multi-label")
    if cfg.model == "cnn" and (cfg.augment.token_mask_time or cfg.augment.token_mask_freq):
        raise BadInput("augment.token_mask_time / token_mask_freq: token masking needs a transformer; model=cnn has "
                       "no tokens (set both to 0)")
    if cfg.model == "cnn" and cfg.freeze_backbone:
        raise BadInput("freeze_backbone=true: model=cnn trains from scratch, it has no pretrained backbone to freeze")


def cnn_complexity(model: CNNClassifier, features: nn.Module, cfg: FinetuneConfig) -> Complexity:
    """The CNN's parameters and MACs per 1 s of audio, counted on the input of one clip of ``clip_seconds`` (its MACs
    grow linearly with the frames); refused in one line when over the DCASE 2022 limits and
    ``cnn.enforce_dcase_limits`` asks for them."""
    seconds, rate = cfg.data.stream.clip_seconds, cfg.data.stream.sample_rate
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            fbank = features(torch.zeros(1, int(round(seconds * rate))))
    finally:
        features.train(was_training)
    counted = count_complexity(model, fbank.cpu())
    complexity = Complexity(counted.params, int(round(counted.macs / seconds)))
    over = complexity.over_limits()
    if cfg.cnn.enforce_dcase_limits and over:
        raise BadInput(f"cnn: {'; '.join(over)} (the DCASE 2022 limits; cnn.enforce_dcase_limits=true): lower "
                       f"cnn.base_channels ({cfg.cnn.base_channels}), cnn.channels_multiplier or cnn.expansion_rate")
    return complexity


def prepare(cfg: FinetuneConfig) -> None:
    sets, _, _ = resolve_data(cfg)  # checks the data (and builds the synthetic corpus) before anything is queued
    if cfg.model == "cnn":  # and a CNN over the DCASE limits, when they are enforced
        cnn_complexity(CNNClassifier(cfg.cnn, len(sets[0].classes)), build_features(cfg.data.features), cfg)
    build_ir_bank(cfg.augment.device_ir, cfg.data.synthetic, cfg.data.stream.sample_rate)  # and the IR folder


def main(argv: list[str] | None = None) -> int:
    return cli(lambda: run(load_finetune_config(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
