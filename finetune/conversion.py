"""``python finetune/export.py ckpt=... format=hf|ssast|audiomae out=DIR``: hand a trained model to other code.

    format=hf         a fine-tuned classifier (head.kind=cls) -> a transformers ``ASTForAudioClassification`` folder
                      (config.json, model.safetensors, preprocessor_config.json); with ``encoder_only=true`` any
                      encoder with 2 cls tokens and square patches -> an ``ASTModel`` folder
                      (pretrain/transformers_ast.py says what AST can hold)
    format=ssast      the encoder -> ``ssast.pth``, the released SSAST state dict (pretrain/official.py)
    format=audiomae   the encoder -> ``audiomae.pth``, the released Audio-MAE ``{'model': ...}``

``ckpt=``: a fine-tuning run folder or its best.pt, or (encoder formats) anything ``ckpt=`` of fine-tuning takes.
The files are written into a temporary folder beside ``out``, reloaded and compared with this model (transformers'
``from_pretrained`` on a seeded random fbank; the official loaders for the released formats), and only then renamed
to ``out``: a folder named ``out`` is always complete. A non-empty ``out`` is replaced only with ``overwrite=true``,
and only when it holds nothing but what an export writes.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from finetune.model import OfficialFileConfig
from launch.common.errors import BadInput, check, cli
from launch.common.files import replacing_folder
from launch.runtime.config import merge_config

FORMATS = ("hf", "ssast", "audiomae")
OFFICIAL_FILES = {"ssast": "ssast.pth", "audiomae": "audiomae.pth"}
EXPORT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", *OFFICIAL_FILES.values())
"""Everything an export writes: a folder holding anything else is never replaced."""
MAX_DIFF = 1e-4
"""Largest |ours - reloaded| accepted before the folder is published (fp32; the tests pin 1e-5)."""


@dataclass
class ExportConfig:
    """What to export, to which format, where."""

    ckpt: str = "???"
    """A fine-tuning run folder or best.pt; for encoder_only / ssast / audiomae also an encoder (encoder.pt, a
    pretraining run, an official file, a transformers AST folder)."""
    format: str = "hf"
    """"hf" (transformers AST), "ssast" or "audiomae" (the released formats)."""
    out: str = "???"
    """The folder to write (created; must be absent or empty unless overwrite=true)."""
    encoder_only: bool = False
    """format=hf: write the encoder as an ASTModel (no head) instead of an ASTForAudioClassification."""
    overwrite: bool = False
    """Replace a non-empty ``out`` that holds only export files."""
    verify: bool = True
    """Reload what was written and compare it with this model before publishing (max |diff| <= 1e-4)."""
    sample_rate: Optional[int] = None
    """format=hf preprocessor: the waveform rate (Hz); None: the run's config.yaml data.features, else 16000."""
    norm_mean: Optional[float] = None
    """format=hf preprocessor: log-mel mean of (x - mean) / (2 std); None: the run's config.yaml, else AudioSet's."""
    norm_std: Optional[float] = None
    """format=hf preprocessor: log-mel std; None: the run's config.yaml, else AudioSet's."""
    classes: Optional[str] = None
    """An official fine-tuned SSAST file's class names (its class_labels_indices.csv, or one name per line)."""
    official: OfficialFileConfig = field(default_factory=OfficialFileConfig)
    """What an official fine-tuned SSAST file does not store: its pooling and input shape."""

    def __post_init__(self) -> None:
        check("format", repr(self.format), self.format in FORMATS, "'hf', 'ssast' or 'audiomae'")
        check("out", repr(self.out), bool(self.out.strip()), "a folder path")
        check("sample_rate", self.sample_rate, self.sample_rate is None or self.sample_rate > 0, "> 0 Hz, or null")
        check("norm_std", self.norm_std, self.norm_std is None or self.norm_std > 0, "> 0, or null")


def load_export_config(argv: Sequence[str] = ()) -> ExportConfig:
    return merge_config(ExportConfig, argv, Path(__file__).resolve().parent / "configs")


# ------------------------------------------------------------------------------------------------ the out folder
def check_out(out: Path, overwrite: bool) -> None:
    """One line unless ``out`` is absent, empty, or (with overwrite) a folder of export files only."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"out={out}: is a file, expected a folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        raise BadInput(f"out={out}: not empty ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); pass "
                       "overwrite=true to replace it")
    foreign = [n for n in held if n not in EXPORT_FILES]
    if foreign:
        raise BadInput(f"out={out}: holds {foreign[0]}, which no export writes; not replacing it (remove it yourself)")


# --------------------------------------------------------------------------------------------------- the model
def load_model(ckpt: str, classes: str | None = None,
               official: OfficialFileConfig | None = None) -> tuple[Any, Any, dict[str, Any] | None, Path]:
    """(encoder, classifier or None, classifier payload or None, the file or folder read). A classifier is our
    best.pt or an official fine-tuned SSAST file (``classes`` and ``official`` say what that file does not)."""
    from launch.runtime import checkpoints
    from pretrain.encoder import Encoder

    p = Path(ckpt)
    best = p / checkpoints.CLASSIFIER_FILE if p.is_dir() else p
    if best.is_file() and best.name != checkpoints.ENCODER_FILE:
        try:
            obj = checkpoints.read_torch(best)
            fmt = checkpoints.format_of(obj)
            is_classifier = fmt == checkpoints.CLASSIFIER_FORMAT or (
                fmt is None and isinstance(obj, dict) and any(str(k).endswith("mlp_head.1.weight") for k in obj))
        except BadInput:  # a DeepSpeed file (pickled objects) or no torch file at all: load_encoder says what
            is_classifier = False
        if is_classifier:
            from finetune.model import load_classifier

            official = official or OfficialFileConfig()
            model, payload = load_classifier(best, classes=classes, head=official.head, encoder=official.shape())
            if not hasattr(model, "encoder"):
                raise BadInput(f"{best}: the CNN student has no transformer encoder; the export formats hold the SSAST "
                               "and Audio-MAE family (its best.pt is already the whole model: load_classifier reads it)")
            return model.encoder, model.eval(), payload, best
    from pretrain.pretrained import load_encoder

    cfg, sd, _ = load_encoder(p)
    encoder = Encoder(cfg)
    encoder.load_state_dict(sd)
    return encoder.eval(), None, None, p


def features_of(source: Path, cfg: ExportConfig) -> dict[str, Any]:
    """sample_rate / norm_mean / norm_std / kind: the command line, else the run's config.yaml data.features (the
    folder of ``source`` or up to two above it), else the FeatureConfig defaults (16 kHz, AudioSet statistics)."""
    from launch.runtime import run_folder
    from shards.features import FeatureConfig

    found: dict[str, Any] = {}
    for folder in ([source] if source.is_dir() else []) + list(source.parents)[:3]:
        tree = run_folder.read_config(folder, "give sample_rate=, norm_mean= and norm_std= or repair it")
        if tree is not None:  # a run folder's config without data.features (not a run of ours): the defaults
            data = tree.get("data")
            features = data.get("features") if isinstance(data, dict) else None
            found = dict(features) if isinstance(features, dict) else {}
            break
    given = {"sample_rate": cfg.sample_rate, "norm_mean": cfg.norm_mean, "norm_std": cfg.norm_std}
    fields = {k: found.get(k) for k in ("kind", "sample_rate", "norm_mean", "norm_std") if found.get(k) is not None}
    fields.update({k: v for k, v in given.items() if v is not None})
    try:
        feat = FeatureConfig(**fields)
    except (TypeError, ValueError) as e:
        raise BadInput(f"format=hf: features: {e}") from None
    return {"kind": feat.kind, "sample_rate": feat.sample_rate, "norm_mean": feat.norm_mean,
            "norm_std": feat.norm_std}


# ------------------------------------------------------------------------------------------------------- formats
def export_hf(tmp: Path, cfg: ExportConfig, encoder, classifier, payload, source: Path) -> dict[str, Any]:
    from pretrain import transformers_ast

    if classifier is None and not cfg.encoder_only:
        raise BadInput(f"ckpt={cfg.ckpt}: an encoder without a head; pass encoder_only=true for an ASTModel, or a "
                       "fine-tuned classifier (run folder or best.pt)")
    head_config = None if cfg.encoder_only else payload["head"]
    why = transformers_ast.refusal(encoder.cfg, head_config)
    if why:
        raise BadInput(f"format=hf: {why}")
    features = features_of(source, cfg)
    if features["kind"] != "kaldi":
        raise BadInput(f"format=hf: ASTFeatureExtractor computes kaldi fbank; this model reads features.kind="
                       f"{features['kind']}")
    head = None if cfg.encoder_only else classifier.head
    classes = None if cfg.encoder_only else list(payload["classes"])
    info = transformers_ast.write_ast(tmp, encoder, head, head_config, classes, features)
    if cfg.verify:
        info["max_diff"] = transformers_ast.compare_with_transformers(tmp, encoder, head)
        info["checked"] = "logits" if head is not None else "last_hidden_state"
    info.update(classes=classes, features=features)
    return info


def export_official(tmp: Path, cfg: ExportConfig, encoder) -> dict[str, Any]:
    import torch

    from pretrain import official

    export = official.export_official_ssast if cfg.format == "ssast" else official.export_official_audiomae
    load = official.load_official_ssast if cfg.format == "ssast" else official.load_official_audiomae
    if cfg.format == "audiomae" and encoder.cfg.num_mel_bins != official.AUDIOMAE_MEL_BINS:
        raise BadInput(f"format=audiomae: the files do not store the input size and the loaders assume "
                       f"{official.AUDIOMAE_MEL_BINS} mel bins; this encoder reads {encoder.cfg.num_mel_bins}")
    try:
        obj = export(encoder)
    except ValueError as e:
        raise BadInput(f"format={cfg.format}: {str(e).removeprefix('export: ')}") from None
    path = tmp / OFFICIAL_FILES[cfg.format]
    torch.save(obj, path)
    info: dict[str, Any] = {"architecture": f"official {cfg.format}", "files": [path.name], "tensors": len(
        obj["model"] if cfg.format == "audiomae" else obj)}
    if cfg.verify:
        _, back = load(path, token_order=encoder.cfg.token_order)
        ours = encoder.state_dict()
        info["max_diff"] = max(float((back[k].float() - ours[k].float()).abs().max()) for k in ours)
        info["checked"] = "reloaded tensors"
    return info


def run(cfg: ExportConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt`` to ``cfg.out`` (see the module docstring); returns what was written."""
    out = Path(cfg.out).resolve()
    check_out(out, cfg.overwrite)
    encoder, classifier, payload, source = load_model(cfg.ckpt, cfg.classes, cfg.official)
    with replacing_folder(out) as tmp:
        if cfg.format == "hf":
            info = export_hf(tmp, cfg, encoder, classifier, payload, source)
        else:
            info = export_official(tmp, cfg, encoder)
        if info.get("max_diff", 0.0) > MAX_DIFF:
            raise RuntimeError(f"export check failed: the reloaded model differs from ours by {info['max_diff']:.3g} "
                               f"(> {MAX_DIFF}); nothing was written to {out}")
    info.update(out=str(out), source=str(source), encoder=asdict(encoder.cfg))
    show(info, cfg)
    return info


def show(info: dict[str, Any], cfg: ExportConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"export format={cfg.format}{' (encoder only)' if cfg.encoder_only else ''}",
                  show_header=False)
    enc = info["encoder"]
    rows = [("from", info["source"]), ("to", info["out"]), ("architecture", info["architecture"]),
            ("files", ", ".join(info["files"])),
            ("encoder", f"{enc['size']} x{enc['depth'] or 'default'} depth, {enc['num_mel_bins']} mel x "
                        f"{enc['target_frames']} frames, patch {enc['patch_freq']}x{enc['patch_time']} stride "
                        f"{enc['stride_freq']}x{enc['stride_time']}")]
    if info.get("classes"):
        rows.append(("classes", f"{len(info['classes'])}: {', '.join(info['classes'][:6])}"
                                f"{', ...' if len(info['classes']) > 6 else ''}"))
    if "layer_norm_eps" in info:
        rows.append(("layer_norm_eps", f"{info['layer_norm_eps']:g} (residual scale {info['residual_scale']:.6g})"))
    if info.get("features"):
        f = info["features"]
        rows.append(("preprocessor", f"{f['sample_rate']} Hz, mean {f['norm_mean']:.6g}, std {f['norm_std']:.6g}"))
    if "max_diff" in info:
        rows.append(("check", f"max |ours - reloaded| {info['checked']} = {info['max_diff']:.2e}"))
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        invoked = Path(sys.argv[0]).name  # the console script, or the script run by path
        prog = invoked if invoked.startswith("tessera-") else "python finetune/export.py"
        print(f"usage: {prog} ckpt=RUN format=hf|ssast|audiomae out=DIR [encoder_only=true] [overwrite=true] "
              f"[key=value ...]\n\n{__doc__}")
        return 0
    return cli(lambda: run(load_export_config(argv)))
