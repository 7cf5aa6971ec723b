"""The transformers AST format (pretrain/transformers_ast.py) and ``finetune/export.py``: our classifier and encoder
against transformers' own ``ASTForAudioClassification`` / ``ASTModel`` (logits and hidden states to 1e-5 in fp32),
the reverse import through ``load_encoder``, the refusals, the released formats from the same command, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn

from finetune.conversion import ExportConfig, check_out, load_export_config, run
from finetune.heads import HeadConfig, build_head
from finetune.model import Classifier
from launch.common.errors import BadInput
from launch.runtime.checkpoints import write_classifier, write_encoder
from pretrain import transformers_ast
from pretrain.encoder import LN_EPS, Encoder, EncoderConfig, reorder_pos_embed
from pretrain.official import load_official_audiomae, load_official_ssast
from pretrain.pretrained import load_encoder

transformers = pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]
CLASSES = ["bus", "park", "tram"]
# 32 mel x 48 frames, 16x16 patches at SSAST's fine-tuning stride 10 in frequency, 12 in time: a 2x3 grid
TINY = dict(size="tiny", depth=2, num_mel_bins=32, target_frames=48, stride_freq=10, stride_time=12, cls_tokens=2)


def _classifier(cfg: EncoderConfig, kind: str = "cls") -> Classifier:
    """A cls-head classifier whose norms are far from identity: the final norm's small gain makes the head norm's
    input variance ~0.1, where 1e-5 vs 1e-6 moves the logits by ~1e-4 (so the eps handling is really tested)."""
    torch.manual_seed(0)
    enc = Encoder(cfg)
    model = Classifier(enc, build_head(HeadConfig(kind=kind), enc.embed_dim, enc.depth, len(CLASSES)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        enc.norm.weight.uniform_(0.2, 0.4)
        enc.pos_embed.normal_(0, 0.5)
        model.head.mlp[-1].weight.mul_(3.0)
    return model.eval()


def _write_run(folder: Path, model: Classifier, kind: str = "cls") -> Path:
    """A fine-tuning run folder: best.pt plus the config.yaml lines the export reads (data.features)."""
    write_classifier(folder / "best.pt", model.state_dict(), encoder=asdict(model.encoder.cfg),
                     head=asdict(HeadConfig(kind=kind)), classes=CLASSES, step=7, val={}, pretrained={})
    (folder / "config.yaml").write_text("data:\n  features:\n    kind: kaldi\n    sample_rate: 16000\n"
                                        "    norm_mean: -3.5\n    norm_std: 2.25\n")
    return folder


def _fbank(cfg: EncoderConfig, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, cfg.target_frames, cfg.num_mel_bins, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------------------- ours vs transformers
@pytest.mark.parametrize("token_order", ["freq", "time"])
def test_classifier_logits_equal_transformers_ast_for_audio_classification(tmp_path, token_order):
    model = _classifier(EncoderConfig(**TINY, token_order=token_order))
    info = transformers_ast.write_ast(tmp_path, model.encoder, model.head, {"kind": "cls", "hidden": []}, CLASSES,
                                      {"sample_rate": 16000, "norm_mean": -3.5, "norm_std": 2.25})
    assert info["layer_norm_eps"] == 1e-5 and info["residual_scale"] == pytest.approx(10 ** 0.5)
    theirs = transformers.ASTForAudioClassification.from_pretrained(tmp_path).eval()
    conf = theirs.config
    assert (conf.patch_size, conf.frequency_stride, conf.time_stride, conf.max_length, conf.num_mel_bins) == \
        (16, 10, 12, 48, 32)
    assert (conf.hidden_size, conf.num_hidden_layers, conf.num_attention_heads, conf.intermediate_size) == \
        (192, 2, 3, 768)
    assert [conf.id2label[i] for i in range(3)] == CLASSES and conf.label2id["tram"] == 2
    x = _fbank(model.encoder.cfg)
    with torch.no_grad():
        ours = model.encoder(x)
        logits = model.head(ours.last, ours.layers, ours.num_cls)
        got = theirs(input_values=x, output_hidden_states=True)
    torch.testing.assert_close(got.logits, logits, atol=1e-5, rtol=0)
    # the residual scale is invisible after the final norm: last_hidden_state is ours (patch rows freq-major)
    last = reorder_pos_embed(ours.last, model.encoder.cfg.grid, 2, token_order, "freq")
    torch.testing.assert_close(got.hidden_states[-1].abs().mean() / ours.layers[-1].abs().mean(),
                               torch.tensor(10 ** 0.5), rtol=1e-4, atol=0)
    theirs_last = theirs.audio_spectrogram_transformer(input_values=x).last_hidden_state
    torch.testing.assert_close(theirs_last, last, atol=1e-5, rtol=0)
    fe = transformers.ASTFeatureExtractor.from_pretrained(tmp_path)
    assert (fe.mean, fe.std, fe.sampling_rate, fe.num_mel_bins, fe.max_length) == (-3.5, 2.25, 16000, 32, 48)


def test_residual_scale_turns_the_head_eps_into_the_encoder_eps():
    """LN_eps(c x) = LN_{eps/c^2}(x): the identity the classifier export rests on, at a variance where eps matters."""
    x = torch.randn(4, 192, dtype=torch.float64) * 1e-3
    c = transformers_ast.residual_scale(1e-5)
    torch.testing.assert_close(nn.functional.layer_norm(c * x, (192,), eps=1e-5),
                               nn.functional.layer_norm(x, (192,), eps=LN_EPS), rtol=1e-12, atol=1e-12)
    assert transformers_ast.residual_scale(None) == 1.0


def test_encoder_only_last_hidden_state_equals_ours_and_round_trips_exactly(tmp_path):
    cfg = EncoderConfig(**TINY, token_order="time")
    model = _classifier(cfg)
    transformers_ast.write_ast(tmp_path, model.encoder)
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["architectures"] == ["ASTModel"] and conf["layer_norm_eps"] == LN_EPS
    assert transformers_ast.SCALE_KEY not in conf
    theirs = transformers.ASTModel.from_pretrained(tmp_path).eval()
    x = _fbank(cfg)
    with torch.no_grad():
        last = reorder_pos_embed(model.encoder(x).last, cfg.grid, 2, "time", "freq")
        torch.testing.assert_close(theirs(input_values=x).last_hidden_state, last, atol=1e-5, rtol=0)
    back_cfg, back, info = load_encoder(tmp_path, token_order="time")  # through ckpt='s one entry point
    assert back_cfg == cfg and info["format"] == "transformers-ast" and info["head"] == "cls"
    ours = model.encoder.state_dict()
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)


def test_classifier_folder_imports_as_the_encoder_with_the_scale_divided_out(tmp_path):
    model = _classifier(EncoderConfig(**TINY))
    transformers_ast.write_ast(tmp_path, model.encoder, model.head, {"kind": "cls", "hidden": []}, CLASSES)
    cfg, back, info = load_encoder(tmp_path / "model.safetensors", stride_time=10)  # a file inside works too
    notes = " | ".join(info["notes"])
    assert cfg.stride_time == 10 and "tessera_residual_scale=3.16228" in notes and "3-class AST head" in notes
    assert info["labels"] == CLASSES
    _, same_grid, _ = load_encoder(tmp_path)
    ours = model.encoder.state_dict()
    for k in ours:  # x * sqrt(10) / sqrt(10) in float32: equal to the last bit or one
        torch.testing.assert_close(same_grid[k], ours[k], rtol=2.5e-7, atol=0)


@pytest.mark.parametrize("layout", ["save_pretrained", "pytorch_model.bin"])
def test_a_folder_written_by_transformers_loads_as_our_encoder(tmp_path, layout):
    """The reverse direction against transformers itself: its randomly initialised ASTModel, saved either way,
    becomes our Encoder with the same last_hidden_state (eps 1e-6 as ours; qkv_bias off gives zero biases)."""
    conf = transformers.ASTConfig(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768,
                                  patch_size=16, frequency_stride=16, time_stride=10, max_length=40, num_mel_bins=32,
                                  layer_norm_eps=LN_EPS, qkv_bias=layout == "save_pretrained")
    torch.manual_seed(0)
    theirs = transformers.ASTModel(conf).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.1)
    if layout == "save_pretrained":
        theirs.save_pretrained(tmp_path)
    else:
        conf.save_pretrained(tmp_path)
        torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")
    cfg, sd, info = load_encoder(tmp_path)
    assert (cfg.patch_freq, cfg.stride_freq, cfg.stride_time, cfg.target_frames, cfg.cls_tokens) == (16, 16, 10, 40, 2)
    ours = Encoder(cfg).eval()
    ours.load_state_dict(sd)
    x = _fbank(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).last, theirs(input_values=x).last_hidden_state, atol=1e-5, rtol=0)
    assert not info["notes"] if layout == "save_pretrained" else "qkv_bias" in info["notes"][0]


# ------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("enc, head, why", [
    (dict(num_mel_bins=32, target_frames=48, patch_freq=32, patch_time=2, stride_freq=32, stride_time=1,
          cls_tokens=2), None, "frame tokens (32 mel x 2 frames)"),
    (dict(num_mel_bins=32, target_frames=48, cls_tokens=1), None, "1 cls token (Audio-MAE)"),
    (dict(num_mel_bins=32, target_frames=48, cls_tokens=2), {"kind": "mean"}, "not the mean of the patch tokens"),
    (dict(num_mel_bins=32, target_frames=48, cls_tokens=2), {"kind": "mean_fc_norm"}, "before it"),
    (dict(num_mel_bins=32, target_frames=48, cls_tokens=2), {"kind": "double_norm"}, "every block's output"),
    (dict(num_mel_bins=32, target_frames=48, cls_tokens=2), {"kind": "cls", "hidden": [64]}, "hidden layers [64]"),
])
def test_what_ast_cannot_hold_is_refused_saying_why(enc, head, why):
    assert why in transformers_ast.refusal(EncoderConfig(**enc), head)
    assert transformers_ast.refusal(EncoderConfig(**{**enc, "cls_tokens": 2, "patch_time": enc.get("patch_freq", 16)}),
                                    None if head is None else {"kind": "cls"}) is None


def test_bad_folders_give_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": transformers_ast.MODEL_TYPE, "hidden_size": 192,
                                                      "num_attention_heads": 4, "num_hidden_layers": 1}))
    with pytest.raises(BadInput, match="num_attention_heads=4, our width 192 has 3"):
        load_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": transformers_ast.MODEL_TYPE, "hidden_size": 192,
                                                      "num_attention_heads": 3, "num_hidden_layers": 1,
                                                      "intermediate_size": 768, "max_length": 48, "num_mel_bins": 32}))
    with pytest.raises(BadInput, match="without weights"):
        load_encoder(tmp_path)
    torch.save({"embeddings.cls_token": torch.zeros(1, 1, 192)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(BadInput, match="missing embeddings.position_embeddings"):
        load_encoder(tmp_path)


def test_the_command_refuses_a_full_out_a_headless_hf_export_and_a_mean_head(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="not empty"):
        check_out(tmp_path / "full", overwrite=False)
    with pytest.raises(BadInput, match="holds notes.txt, which no export writes"):
        check_out(tmp_path / "full", overwrite=True)
    model = _classifier(EncoderConfig(**TINY), kind="mean")
    run_dir = _write_run(tmp_path / "run", model, kind="mean")
    with pytest.raises(BadInput, match="format=hf: AST's head pools the cls and distillation tokens"):
        run(ExportConfig(ckpt=str(run_dir), out=str(tmp_path / "out")))
    encoder_file = write_encoder(tmp_path / "encoder.pt", model.encoder.state_dict(), "ssast",
                                 asdict(model.encoder.cfg), step=1)
    with pytest.raises(BadInput, match="an encoder without a head; pass encoder_only=true"):
        run(ExportConfig(ckpt=str(encoder_file), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("fmt, cls_tokens", [("ssast", 2), ("audiomae", 1)])
def test_the_released_formats_are_reachable_from_the_same_command(tmp_path, fmt, cls_tokens):
    cfg = EncoderConfig(size="tiny", depth=1, num_mel_bins=32 if fmt == "ssast" else 128, target_frames=32,
                        cls_tokens=cls_tokens,
                        **({"pos_embed": "sincos", "token_order": "time"} if fmt == "audiomae" else {}))
    enc = Encoder(cfg)
    src = write_encoder(tmp_path / "encoder.pt", enc.state_dict(), fmt, asdict(cfg), step=1)
    out = tmp_path / "export"
    info = run(ExportConfig(ckpt=str(src), format=fmt, out=str(out)))
    assert info["max_diff"] == 0.0 and sorted(p.name for p in out.iterdir()) == [f"{fmt}.pth"]
    _, back = (load_official_ssast if fmt == "ssast" else load_official_audiomae)(out / f"{fmt}.pth")
    assert all(torch.equal(back[k], v) for k, v in enc.state_dict().items())
    with pytest.raises(BadInput, match="not empty"):
        run(ExportConfig(ckpt=str(src), format=fmt, out=str(out)))
    run(ExportConfig(ckpt=str(src), format=fmt, out=str(out), overwrite=True))  # export files only: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.pt", "export"]


def test_export_cli_writes_a_folder_transformers_loads(tmp_path):
    model = _classifier(EncoderConfig(**TINY))
    run_dir = _write_run(tmp_path / "run", model)
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, str(REPO / "finetune" / "export.py"), f"ckpt={run_dir}", "format=hf",
                           f"out={out}"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ASTForAudioClassification" in proc.stdout and "max |ours - reloaded| logits" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert json.loads((out / "preprocessor_config.json").read_text())["mean"] == -3.5  # from the run's config.yaml
    theirs = transformers.AutoModelForAudioClassification.from_pretrained(out).eval()
    x = _fbank(model.encoder.cfg)
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_values=x).logits, model(x), atol=1e-5, rtol=0)


def test_without_transformers_the_export_says_which_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` meets when it is absent
    model = _classifier(EncoderConfig(**TINY))
    with pytest.raises(BadInput, match=r"needs transformers: pip install 'tessera-audio\[hf\]'"):
        transformers_ast.write_ast(tmp_path, model.encoder)


def test_an_official_fine_tuned_ssast_file_exports_to_transformers_with_the_official_logits(tmp_path):
    """The SSAST release's own ``ft_cls`` fine-tuned file -> ASTForAudioClassification: transformers gives the
    reference ASTModel's logits (its grid inferred from the frame count, its class names from class_labels_indices)."""
    from tests.unit.test_official_finetuned import official_finetuned, save_as_official

    official = official_finetuned(frames=128)
    save_as_official(official, tmp_path / "audio_model.wa.pth")
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},c{i}\n" for i in range(5)))
    run(load_export_config([f"ckpt={tmp_path / 'audio_model.wa.pth'}", f"out={tmp_path / 'hf'}",
                            f"classes={tmp_path / 'labels.csv'}", "official.head=cls", "official.target_frames=128"]))
    theirs = transformers.ASTForAudioClassification.from_pretrained(tmp_path / "hf").eval()
    assert [theirs.config.id2label[i] for i in range(5)] == [f"c{i}" for i in range(5)]
    x = torch.randn(2, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_values=x).logits, official(x, "ft_cls"), atol=1e-5, rtol=1e-5)
