"""``run(cfg)``: fine-tune a pretrained encoder with a (layer-wise) head, on every rank.

Training batches come from the seeded, resumable stream; every ``eval_every`` steps an exact validation pass (every
clip once across ranks, predictions gathered) picks the best checkpoint (``best.pt``, plain PyTorch). At the end the
best weights are evaluated once on the test split: metrics.json, predictions.csv, confusion_matrix.png, and the learned
layer weights.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from finetune import metrics as M
from finetune.config import FinetuneConfig, load_finetune_config, resolve_run_dir
from finetune.model import build_classifier, finetune_groups
from launch.common.errors import BadInput, cli
from launch.common.files import replacing
from pretrain import checkpoint, distributed
from pretrain.config import to_yaml
from pretrain.engine import build_engine, watched
from pretrain.masking import mae_mask_2d
from pretrain.train import step_seed, stop_requested, truncate_metrics
from shards.default import ensure_synthetic
from shards.features import build_features
from shards.stream import ShardSet, ShardSetConfig, eval_batches, open_shard_set, train_loader

log = logging.getLogger("finetune")
CLASSIFIER_FORMAT = "tessera-classifier/1"


def resolve_data(cfg: FinetuneConfig, console=None) -> tuple[list[ShardSet], ShardSet | None, ShardSet | None]:
    """Train sets, validation and test split; the synthetic corpus when no training data is given."""
    d = cfg.data
    if d.train:
        train, val, test = list(d.train), d.val, d.test
    else:
        root = str(ensure_synthetic(d.synthetic, d.stream.sample_rate, console=console))
        train = [ShardSetConfig(root, "labelled")]
        val, test = d.val or ShardSetConfig(root, "val"), d.test or ShardSetConfig(root, "test")
    sets = [open_shard_set(s) for s in train]
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
    opened = [open_shard_set(s) if s is not None else None for s in (val, test)]
    for s, c in zip(opened, (val, test)):
        if s is not None and s.classes != classes:
            raise BadInput(f"{c.path}: class list differs from the training data's")
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
    lam = torch.where(apply, lam, torch.ones(b)).to(wave.device)
    partner = partner.to(wave.device)
    wave = lam[:, None] * wave + (1 - lam[:, None]) * wave[partner]
    target = lam[:, None] * target + (1 - lam[:, None]) * target[partner]
    return wave, target


def save_best(path: Path, model, cfg: FinetuneConfig, classes: list[str], step: int, val: dict, info: dict) -> None:
    payload = {"format": CLASSIFIER_FORMAT, "encoder": asdict(model.encoder.cfg), "head": asdict(cfg.head),
               "classes": classes, "step": step, "val": val, "pretrained": info,
               "state_dict": {k: v.detach().float().cpu() for k, v in model.state_dict().items()}}
    with replacing(path) as tmp:
        torch.save(payload, tmp)


def run(cfg: FinetuneConfig, stop=None) -> dict[str, Any]:
    """Fine-tune, select on validation, test the best weights. Every rank calls this.

    ``stop`` (a ``threading.Event``, set by the launcher on SIGUSR2) saves a checkpoint at the current step and
    returns early with ``stopped_at``; the requeued job resumes there.
    """
    from rich.console import Console

    env, device = distributed.setup(cfg.deepspeed.backend)
    console = Console(stderr=True, quiet=not env.is_main)
    run_dir = resolve_run_dir(cfg)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    data = resolve_data(cfg, console) if env.is_main else None  # rank 0 builds the synthetic corpus if needed
    distributed.barrier()
    train_sets, val_set, test_set = data or resolve_data(cfg)
    classes, multi = train_sets[0].classes, train_sets[0].multi_label
    if cfg.optim.schedule == "plateau" and val_set is None:
        raise BadInput("optim.schedule=plateau watches the validation accuracy: give data.val={path: ..., split: ...}")

    torch.manual_seed(cfg.seed)
    overrides = {"target_frames": cfg.data.features.target_frames, "stride_freq": cfg.encoder.stride_freq,
                 "stride_time": cfg.encoder.stride_time, "drop_path": cfg.encoder.drop_path}
    model, info = build_classifier(cfg.ckpt, overrides, cfg.scratch_encoder, cfg.head, len(classes),
                                   cfg.freeze_backbone)
    features = build_features(cfg.data.features).to(device)
    groups = finetune_groups(model, cfg.optim.head_lr_scale, cfg.optim.layer_decay, cfg.optim.weight_decay)
    built = build_engine(model, cfg.deepspeed, cfg.optim, micro_batch=cfg.data.stream.batch_size, world=env.world_size,
                         total_steps=cfg.steps, groups=groups)
    engine = built.engine
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.deepspeed.precision, torch.float32)

    start, best, bad_evals = 0, -math.inf, 0
    ckpt_dir = run_dir / "checkpoints"
    if cfg.checkpoint.resume != "never":
        resumed = checkpoint.resume(engine, ckpt_dir, None if cfg.checkpoint.resume == "auto" else cfg.checkpoint.resume)
        if resumed:
            start, client = resumed
            best, bad_evals = client.get("best", best), client.get("bad_evals", 0)
            log.info("resumed from %s at step %d", ckpt_dir, start)
            if env.is_main:
                truncate_metrics(run_dir / "metrics.jsonl", start)  # the steps after the checkpoint run again
    enc = model.encoder
    console.print(f"fine-tune {info.get('source', '?')} ({info.get('path', cfg.ckpt)}) -> {len(classes)} classes\n"
                  f"  encoder {enc.cfg.size} {enc.grid[0]}x{enc.grid[1]}={enc.num_patches} patches, head "
                  f"{cfg.head.kind}{' (frozen backbone)' if cfg.freeze_backbone else ''}; peak lr {built.peak_lr:.3g} "
                  f"(head x{cfg.optim.head_lr_scale}, layer decay {cfg.optim.layer_decay}); run folder {run_dir}")

    accum = cfg.deepspeed.grad_accum
    batches = train_loader(train_sets, cfg.data.stream, rank=env.rank, start_step=start * accum,
                           pin_memory=device.type == "cuda")
    metrics_path = run_dir / "metrics.jsonl"
    running, counted, t0 = 0.0, 0, time.perf_counter()
    done = start  # steps finished (a resumed, already finished run trains none)
    for step in range(start, cfg.steps):
        for micro in range(accum):
            micro_step = step * accum + micro
            seed = step_seed(cfg.seed, env.rank, micro_step)
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            batch = next(batches)
            target = _targets(batch.label, len(classes), multi)
            wave, target = mixup(batch.wave, target, cfg.augment.mixup, cfg.augment.mixup_alpha, gen)
            fbank = features(wave.to(device, non_blocking=True)).to(dtype)
            logits = engine(fbank, *_token_mask(cfg, model.encoder, fbank.shape[0], gen))
            loss = _loss(logits, target.to(device), multi)
            engine.backward(loss)
            engine.step()
            running += loss.item()
            counted += 1
        done = step + 1
        record: dict[str, Any] = {}
        if done % cfg.log.every_steps == 0 or done == cfg.steps:
            record = {"step": done, "loss": running / counted, "lr": built.scheduler.get_last_lr()[0],
                      "clips_per_s": counted * cfg.data.stream.batch_size * env.world_size / (time.perf_counter() - t0)}
            running, counted, t0 = 0.0, 0, time.perf_counter()
        if val_set is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            pred = predict(engine, features, val_set, cfg, env, device, dtype)
            acc = float((pred["probs"].argmax(1) == pred["labels"]).mean())
            record.update(step=done, val_accuracy=acc)
            if cfg.optim.schedule == "plateau" and built.schedule.observe(watched({"val_accuracy": acc}, cfg.optim)):
                console.print(f"step {done}: no better validation accuracy for {cfg.optim.plateau_patience + 1} "
                              f"validations; lr x {cfg.optim.plateau_factor}")
            if acc > best:
                best, bad_evals = acc, 0
                if env.is_main:
                    save_best(run_dir / "best.pt", engine.module, cfg, classes, done, {"accuracy": acc}, info)
            else:
                bad_evals += 1
        if record and env.is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            console.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        saved = done % cfg.checkpoint.every_steps == 0 or done == cfg.steps
        if saved:
            checkpoint.save(engine, ckpt_dir, done, {"step": done, "best": best, "bad_evals": bad_evals},
                            cfg.checkpoint.keep_last, env.is_main)
        if done < cfg.steps and stop_requested(stop, device):  # SIGUSR2 near the time limit: save here, requeue
            if not saved:
                checkpoint.save(engine, ckpt_dir, done, {"step": done, "best": best, "bad_evals": bad_evals},
                                cfg.checkpoint.keep_last, env.is_main)
            log.warning("stopping at step %d on request (time limit); the requeued job resumes here", done)
            return {"run_dir": str(run_dir), "stopped_at": done, "rank": env.rank, "world_size": env.world_size}
        if cfg.early_stop and bad_evals >= cfg.early_stop:
            console.print(f"early stop at step {done}: no better validation accuracy for {bad_evals} evaluations")
            break
    distributed.barrier()
    summary = {"run_dir": str(run_dir), "rank": env.rank, "world_size": env.world_size, "best_val_accuracy": best,
               "steps": done}
    if test_set is not None:
        if (run_dir / "best.pt").exists():
            state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)["state_dict"]
            current = engine.module.state_dict()
            engine.module.load_state_dict({k: v.to(current[k].dtype) for k, v in state.items()})
        pred = predict(engine, features, test_set, cfg, env, device, dtype)
        if env.is_main:
            summary["test"] = report(run_dir, pred, classes, cfg, engine.module, console, train_sets)
    distributed.barrier()
    return summary


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


def report(run_dir: Path, pred: dict, classes: list[str], cfg: FinetuneConfig, model, console,
           train_sets: list[ShardSet]) -> dict:
    """metrics.json, predictions.csv, confusion_matrix.png and the layer weights, plus the console tables."""
    metrics = M.evaluate_predictions(pred["probs"], pred["labels"], classes, pred["meta"],
                                     seen_devices=seen_devices(cfg, train_sets, pred["meta"]))
    head = model.head
    if hasattr(head, "layer_weights"):
        weights = head.layer_weights().detach().float().cpu().tolist()
        metrics["layer_weights"] = weights
        console.print(M.format_layer_weights(weights))
    M.write_metrics(run_dir / "metrics.json", metrics)
    M.write_predictions(run_dir / "predictions.csv", pred["keys"], pred["probs"], pred["labels"], classes)
    M.plot_confusion_matrix(np.array(metrics["confusion_matrix"]), classes, run_dir / "confusion_matrix.png",
                            title=f"{cfg.head.kind} - test accuracy {100 * metrics['accuracy']:.2f}%")
    M.print_report(metrics, classes, console)
    console.print(f"[bold green]done[/]: metrics -> {run_dir / 'metrics.json'}, confusion matrix -> "
                  f"{run_dir / 'confusion_matrix.png'}")
    return M.headline(metrics)


def main(argv: list[str] | None = None) -> int:
    return cli(lambda: run(load_finetune_config(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
