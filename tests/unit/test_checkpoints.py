"""Official checkpoints in and ours out: the reference models' fine-tune forwards and pretraining losses reproduced by
our encoder after import, exact export -> import round trips, load_encoder's formats and its one-line errors."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from finetune.heads import HeadConfig, build_head
from launch.common.errors import BadInput
from launch.runtime.checkpoints import ENCODER_FORMAT, write_encoder
from launch.runtime.config import to_yaml
from pretrain.audiomae import AudioMAE, AudioMAEConfig, audiomae_pos_embed
from pretrain.config import PretrainConfig
from pretrain.encoder import Encoder, EncoderConfig, adapt_pos_embed
from pretrain.official import (
    export_official_audiomae,
    export_official_ssast,
    load_official_audiomae,
    load_official_audiomae_model,
    load_official_ssast,
    load_official_ssast_model,
)
from pretrain.pretrained import load_encoder
from pretrain.ssast import SSAST, SSASTConfig
from pretrain.tools.reference_mae import OfficialAudioMAE, OfficialAudioMAEViT
from pretrain.tools.reference_ssast import OfficialAST, official_joint_loss

F64 = torch.float64
D, HEADS, DEPTH = 192, 3, 2  # "tiny" width with 2 blocks


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Non-trivial values in every float parameter (LayerNorm gains near 1, tau spread) so each one matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not p.is_floating_point() or name.startswith(("v.head", "head_dist")):  # timm's unused 1000-way heads
                continue
            if name.endswith("tau"):
                p.copy_(torch.linspace(0.5, 1.5, p.numel()))
                continue
            gain = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.0
            p.copy_(gain + scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def official_ast(patch=(16, 16), frames=128, dtype=F64, seed=0) -> OfficialAST:
    f, t = patch
    model = OfficialAST(fshape=f, tshape=t, fstride=f, tstride=t, input_fdim=128, input_tdim=frames,
                        model_size="tiny", depth=DEPTH)
    return randomise(model.to(dtype), seed).eval()


def released(model: torch.nn.Module) -> dict:
    """``nn.DataParallel(model).state_dict()``: every key ``module.``-prefixed."""
    return {f"module.{k}": v for k, v in model.state_dict().items()}


def ssast_head_from(mlp_head: torch.nn.Sequential, n: int, dtype=F64) -> torch.nn.Module:
    """Our kind=mean head (ft_avgtok) holding the official mlp_head = Sequential(LayerNorm, Linear) weights."""
    head = build_head(HeadConfig(kind="mean"), D, DEPTH, n).to(dtype).eval()
    head.norm.load_state_dict(mlp_head[0].state_dict())
    head.mlp[-1].load_state_dict(mlp_head[1].state_dict())
    return head


# ------------------------------------------------------------------------------------------------- SSAST import
def test_reference_keys_are_the_release_keys_and_export_reproduces_them():
    sd = released(official_ast())
    blocks = {f"module.v.blocks.{i}.{m}.{p}" for i in range(DEPTH) for m in
              ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")}
    other = {"module.v.cls_token", "module.v.dist_token", "module.v.pos_embed", "module.v.patch_embed.proj.weight",
             "module.v.patch_embed.proj.bias", "module.v.norm.weight", "module.v.norm.bias", "module.mask_embed",
             "module.p_input_fdim", "module.p_input_tdim"}
    other |= {f"module.{h}.{i}.{p}" for h in ("cpredlayer", "gpredlayer") for i in (0, 2) for p in ("weight", "bias")}
    other |= {f"module.v.{h}.{p}" for h in ("head", "head_dist") for p in ("weight", "bias")}
    assert set(sd) == blocks | other
    assert sd["module.v.pos_embed"].shape == (1, 2 + 64, D)
    assert sd["module.v.patch_embed.proj.weight"].shape == (D, 1, 16, 16)  # [out, in, freq, time]
    assert sd["module.p_input_tdim"].ndim == 0 and sd["module.p_input_tdim"].item() == 128
    assert sd["module.cpredlayer.2.weight"].shape == (256, D) and sd["module.v.head.weight"].shape == (1000, D)
    cfg, model_sd = load_official_ssast_model(sd)
    ours = SSAST(SSASTConfig(encoder=cfg, mask_patches=20))
    ours.load_state_dict(model_sd)
    exported = export_official_ssast(ours)
    assert set(exported) == set(sd)
    assert all(exported[k].shape == v.shape for k, v in sd.items())


def test_import_infers_the_shape_with_or_without_the_module_prefix():
    sd = released(official_ast(patch=(128, 2), frames=64))
    cfg, enc = load_official_ssast(sd)
    assert cfg == EncoderConfig(size="tiny", depth=2, num_mel_bins=128, target_frames=64, patch_freq=128,
                                patch_time=2, stride_freq=128, stride_time=2, cls_tokens=2, token_order="freq")
    cfg2, enc2 = load_official_ssast({k[len("module."):]: v for k, v in sd.items()})
    assert cfg2 == cfg and all(torch.equal(enc[k], enc2[k]) for k in enc)
    assert torch.equal(enc["cls_tokens"], torch.cat([sd["module.v.cls_token"], sd["module.v.dist_token"]], 1))
    assert torch.equal(enc["patch_embed.proj.weight"], sd["module.v.patch_embed.proj.weight"])  # same layout


# (patch, pretraining frames) -> (fine-tuning frames, stride, mel): same grid; stride 10 with the time cut (8x8 ->
# 8x5) then frequency interpolation (-> 12x5); stride 10 with time interpolation (-> 12x15); frame model at tstride 1;
# 64 mel bins: the frequency cut 8 -> 4 (official slices "+ t_dim" rows: right only because t_dim = f_dim = 4 here).
FT_CASES = [((16, 16), 128, 128, (16, 16), 128), ((16, 16), 128, 64, (10, 10), 128),
            ((16, 16), 128, 160, (10, 10), 128), ((128, 2), 64, 48, (128, 1), 128), ((16, 16), 128, 64, (16, 16), 64)]


@pytest.mark.parametrize("patch,pre_frames,ft_frames,stride,mel", FT_CASES)
def test_ssast_finetune_forward_matches_official_ft_avgtok(patch, pre_frames, ft_frames, stride, mel):
    sd = released(official_ast(patch, pre_frames))
    official = OfficialAST(label_dim=5, fshape=patch[0], tshape=patch[1], fstride=stride[0], tstride=stride[1],
                           input_fdim=mel, input_tdim=ft_frames, model_size="tiny", pretrain_stage=False,
                           load_pretrained_mdl_path=sd, depth=DEPTH).double().eval()
    randomise(official.mlp_head, seed=1)
    cfg, enc_sd = load_official_ssast(sd, target_frames=ft_frames, stride_freq=stride[0], stride_time=stride[1],
                                      num_mel_bins=mel)
    enc = Encoder(cfg).double().eval()
    enc.load_state_dict(enc_sd)
    assert enc.pos_embed.shape == official.v.pos_embed.shape
    torch.testing.assert_close(enc.pos_embed, official.v.pos_embed, atol=1e-12, rtol=0)
    head = ssast_head_from(official.mlp_head, 5)
    x = torch.randn(3, ft_frames, mel, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = head(*enc(x, return_layers=False))
        ref = official(x, "ft_avgtok")
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)


def test_ssast_finetune_forward_float32_sdpa_vs_naive():
    sd = released(official_ast(dtype=torch.float32))
    official = OfficialAST(label_dim=4, fshape=16, tshape=16, fstride=10, tstride=10, input_tdim=96,
                           model_size="tiny", pretrain_stage=False, load_pretrained_mdl_path=sd, depth=DEPTH).eval()
    cfg, enc_sd = load_official_ssast(sd, target_frames=96, stride_freq=10, stride_time=10)
    enc = Encoder(cfg).eval()
    enc.load_state_dict(enc_sd)
    head = ssast_head_from(official.mlp_head, 4, torch.float32)
    x = torch.randn(2, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(head(*enc(x, return_layers=False)), official(x, "ft_avgtok"), atol=1e-4, rtol=1e-4)


def test_ssast_pretraining_losses_equal_the_official_mpc_mpg_on_fixed_masks():
    ref = official_ast()
    cfg, model_sd = load_official_ssast_model(released(ref))
    ours = SSAST(SSASTConfig(encoder=cfg, mask_patches=20)).double().eval()
    ours.load_state_dict(model_sd)
    x = 0.5 * torch.randn(2, 128, 128, dtype=F64, generator=torch.Generator().manual_seed(3))
    ids_c, ids_g = ours.draw_masks(2, torch.Generator().manual_seed(4))
    out = ours(x, ids_c, ids_g)
    loss, nce, mse, acc = official_joint_loss(ref, x, mask_patch=20, ids_c=ids_c, ids_g=ids_g)
    torch.testing.assert_close(out.nce.double(), nce, rtol=1e-5, atol=1e-6)  # ours runs InfoNCE in float32
    torch.testing.assert_close(out.mse.double(), mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), loss, rtol=1e-5, atol=1e-6)
    assert out.acc.item() == pytest.approx(acc.item())


def test_official_python_loop_masks_are_valid():
    import random

    random.seed(0)
    ref = official_ast()
    acc, nce = ref(torch.randn(2, 128, 128, dtype=F64), "pretrain_mpc", mask_patch=30)  # masks drawn inside
    assert torch.isfinite(nce) and 0 <= acc <= 1
    from pretrain.tools.reference_ssast import gen_maskid_patch

    ids = gen_maskid_patch(512, 400, 64)
    assert len(set(ids.tolist())) == 400 and ids.min() > 0 and ids.tolist() == sorted(ids.tolist())


# --------------------------------------------------------------------------------------------- Audio-MAE import
def official_mae(seed=0, decoder_mode=1) -> OfficialAudioMAE:
    model = OfficialAudioMAE(img_size=(128, 128), embed_dim=D, depth=DEPTH, num_heads=HEADS, decoder_embed_dim=64,
                             decoder_num_heads=4, decoder_depth=2, decoder_mode=decoder_mode, local_depth=2,
                             meta_hidden=16, norm_pix_loss=True)
    pos, dpos = model.pos_embed.detach().clone(), model.decoder_pos_embed.detach().clone()
    randomise(model.double(), seed)
    with torch.no_grad():  # the fixed sin-cos tables stay the official ones
        model.pos_embed.copy_(pos)
        model.decoder_pos_embed.copy_(dpos)
    return model.eval()


def full_training_dict(model: torch.nn.Module) -> dict:
    """misc.save_model's {'model','optimizer','epoch','scaler','args'}."""
    return {"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 32,
            "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.8)}


def test_audiomae_finetune_forward_matches_models_vit_global_pool():
    mae = official_mae()
    ckpt = full_training_dict(mae)
    assert torch.allclose(mae.pos_embed.float(), audiomae_pos_embed(D, (8, 8), "official"))  # the quirk table
    vit = OfficialAudioMAEViT(num_classes=5, img_size=(128, 128), embed_dim=D, depth=DEPTH, num_heads=HEADS).double()
    msg = vit.load_pretrained(ckpt)
    assert set(msg.missing_keys) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert "norm.weight" in msg.unexpected_keys and "mask_token" in msg.unexpected_keys
    randomise(vit.fc_norm, 1)
    randomise(vit.head, 2)
    vit.eval()
    cfg, enc_sd = load_official_audiomae(ckpt)
    assert (cfg.token_order, cfg.cls_tokens, cfg.pos_embed, cfg.target_frames, cfg.grid) == ("time", 1, "sincos", 128,
                                                                                              (8, 8))
    enc = Encoder(cfg).double().eval()
    enc.load_state_dict(enc_sd)
    torch.testing.assert_close(enc.patch_embed.proj.weight, mae.patch_embed.proj.weight.transpose(2, 3))
    head = build_head(HeadConfig(kind="mean_fc_norm"), D, DEPTH, 5).double().eval()
    head.norm.load_state_dict(vit.fc_norm.state_dict())
    head.mlp[-1].load_state_dict(vit.head.state_dict())
    x = torch.randn(3, 128, 128, dtype=F64)  # [B, T, F]
    with torch.no_grad():
        torch.testing.assert_close(head(*enc(x)), vit(x.unsqueeze(1)), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("decoder_mode", [1, 0])
def test_audiomae_pretraining_loss_equals_the_official_on_the_same_noise(decoder_mode):
    ref = official_mae(decoder_mode=decoder_mode)
    cfg, model_sd = load_official_audiomae_model({"model": ref.state_dict()})
    ours = AudioMAE(AudioMAEConfig(encoder=cfg, decoder="local" if decoder_mode else "global", decoder_dim=64,
                                   decoder_depth=2, decoder_heads=4, meta_hidden=16)).double().eval()
    ours.load_state_dict(model_sd)
    x = torch.randn(2, 128, 128, dtype=F64)
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(5))
    ids_shuffle = noise.argsort(1)
    ids_restore, ids_keep = ids_shuffle.argsort(1), ids_shuffle[:, :ours.num_keep]
    mask = torch.ones(2, 64).scatter_(1, ids_keep, 0.0)
    with torch.no_grad():
        out = ours(x, ids_keep, ids_restore, mask)
        loss, pred, ref_mask = ref(x.unsqueeze(1), 0.8, noise)
    assert torch.equal(out.mask, ref_mask)
    torch.testing.assert_close(out.pred, pred, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out.loss, loss.float(), atol=1e-6, rtol=1e-6)  # norm_pix_mse returns float32


# ------------------------------------------------------------------------------------------------ round trips
def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_ssast_export_import_round_trip_is_exact_and_loads_into_the_official_model():
    cfg = EncoderConfig(size="tiny", depth=DEPTH, target_frames=128, cls_tokens=2)
    model = randomise(SSAST(SSASTConfig(encoder=cfg, mask_patches=20)))
    exported = export_official_ssast(model)
    cfg2, enc_sd = load_official_ssast(exported)
    assert cfg2 == cfg and _equal(enc_sd, model.encoder.state_dict())
    ref = OfficialAST(fshape=16, tshape=16, fstride=16, tstride=16, input_tdim=128, model_size="tiny", depth=DEPTH)
    ref.load_state_dict({k[len("module."):]: v for k, v in exported.items()}, strict=True)
    x = torch.randn(1, 128, 128)
    ids = torch.arange(1, 21).unsqueeze(0)
    ours = model(x, ids, ids)
    acc, nce = ref(x, "pretrain_mpc", mask_patch=20, mask_index=ids)
    torch.testing.assert_close(ours.nce, nce, atol=1e-4, rtol=1e-4)


def test_audiomae_export_import_round_trip_is_exact():
    cfg = EncoderConfig(size="tiny", depth=DEPTH, target_frames=128, cls_tokens=1, pos_embed="sincos",
                        token_order="time")
    model = randomise(AudioMAE(AudioMAEConfig(encoder=cfg, decoder_dim=64, decoder_depth=2, decoder_heads=4,
                                              meta_hidden=16)))
    exported = export_official_audiomae(model)
    cfg2, enc_sd = load_official_audiomae(exported)
    assert cfg2 == cfg and _equal(enc_sd, model.encoder.state_dict())
    cfg3, full = load_official_audiomae_model(exported)
    assert _equal(full, model.state_dict())
    ref = OfficialAudioMAE(img_size=(128, 128), embed_dim=D, depth=DEPTH, num_heads=HEADS, decoder_embed_dim=64,
                           decoder_num_heads=4, decoder_mode=1, local_depth=2, meta_hidden=16)
    ref.load_state_dict(exported["model"], strict=True)
    # a frequency-major, 1-cls encoder goes out time-major and comes back with token_order="freq"
    enc = randomise(Encoder(EncoderConfig(size="tiny", depth=1, target_frames=64, cls_tokens=1)))
    cfg4, sd4 = load_official_audiomae(export_official_audiomae(enc), token_order="freq")
    assert cfg4.token_order == "freq" and _equal(sd4, enc.state_dict())


def test_export_refuses_what_the_official_formats_cannot_hold():
    with pytest.raises(ValueError, match="2 cls tokens"):
        export_official_ssast(Encoder(EncoderConfig(depth=1, target_frames=64, cls_tokens=1)))
    with pytest.raises(ValueError, match="1 cls token"):
        export_official_audiomae(Encoder(EncoderConfig(depth=1, target_frames=64, cls_tokens=2)))
    with pytest.raises(ValueError, match="stride == patch"):
        export_official_ssast(Encoder(EncoderConfig(depth=1, target_frames=64, cls_tokens=2, stride_time=10)))


# ------------------------------------------------------------------------------------------------ load_encoder
def test_load_encoder_reads_our_deepspeed_free_export(tmp_path):
    cfg = EncoderConfig(size="tiny", depth=DEPTH, target_frames=128, cls_tokens=2)
    enc = randomise(Encoder(cfg))
    path = tmp_path / "encoder.pt"
    write_encoder(path, enc.state_dict(), "ssast", dataclasses.asdict(cfg), step=7, extra={"config_hash": "abc"})
    cfg2, sd, info = load_encoder(path)
    assert cfg2 == cfg and _equal(sd, enc.state_dict())
    assert (info["format"], info["method"], info["step"], info["head"]) == (ENCODER_FORMAT, "ssast", 7, "mean")
    cfg3, sd3, info3 = load_encoder(path, target_frames=64, stride_freq=10, stride_time=10)
    assert cfg3.grid == (12, 5) and info3["notes"]
    torch.testing.assert_close(sd3["pos_embed"], adapt_pos_embed(enc.pos_embed.detach(), (8, 8), (12, 5), 2))
    Encoder(cfg3).load_state_dict(sd3)


def test_load_encoder_reads_official_files(tmp_path):
    ssast_file, mae_file, ft_file = tmp_path / "ssast.pth", tmp_path / "pretrained.pth", tmp_path / "finetuned.pth"
    torch.save(released(official_ast(dtype=torch.float32)), ssast_file)
    mae = official_mae().float()
    torch.save(full_training_dict(mae), mae_file)
    vit = OfficialAudioMAEViT(num_classes=5, img_size=(128, 128), embed_dim=D, depth=DEPTH, num_heads=HEADS)
    vit.load_pretrained({"model": mae.state_dict()})
    torch.save({"model": vit.state_dict()}, ft_file)
    cfg, sd, info = load_encoder(ssast_file)
    assert (info["format"], info["method"], info["head"], cfg.cls_tokens) == ("ssast-official", "ssast", "mean", 2)
    cfg, sd, info = load_encoder(mae_file)
    assert (info["format"], info["head"], cfg.token_order) == ("audiomae-official", "mean_fc_norm", "time")
    assert "official_head" not in info
    cfg, sd, info = load_encoder(ft_file)
    assert set(info["official_head"]) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert torch.equal(sd["norm.weight"], torch.ones(D)) and any("norm" in n for n in info["notes"])
    assert torch.equal(sd["blocks.1.mlp.fc2.weight"], mae.state_dict()["blocks.1.mlp.fc2.weight"])
    cfg, sd, info = load_encoder(mae_file, target_frames=64)  # shorter clips keep their pretraining rows
    torch.testing.assert_close(sd["pos_embed"], mae.pos_embed[:, :1 + 32].detach())
    cfg, sd, info = load_encoder(mae_file, stride_freq=10, stride_time=10)  # another grid: rebuilt, same quirk
    assert cfg.grid == (12, 12) and "official layout" in info["notes"][-1]
    torch.testing.assert_close(sd["pos_embed"], audiomae_pos_embed(D, (12, 12), "official"))
    with pytest.raises(BadInput, match="a pretraining model keeps its grid"):
        load_official_audiomae_model(mae_file, target_frames=64)


def _fake_deepspeed_run(tmp_path, with_config=True):
    """A run folder as pretrain/train.py leaves it, with DeepSpeed's ZeRO-1 model-states file (module weights)."""
    cfg = EncoderConfig(size="tiny", depth=DEPTH, target_frames=128, cls_tokens=2)
    model = randomise(SSAST(SSASTConfig(encoder=cfg, mask_patches=20)))
    run = tmp_path / "run"
    for step, complete in ((3, True), (6, False)):  # step 6 crashed mid-save: no COMPLETE marker
        ckpt = run / "checkpoints" / f"step_{step:08d}"
        ckpt.mkdir(parents=True)
        torch.save({"module": model.state_dict(), "buffer_names": [], "ds_config": {"zero_optimization": {"stage": 1}},
                    "ds_version": "0.19.8", "step": step, "micro_step": step}, ckpt / "mp_rank_00_model_states.pt")
        if complete:
            (ckpt / "COMPLETE").write_text(json.dumps({"step": step}))
    (run / "checkpoints" / "latest").write_text("step_00000003")
    if with_config:
        (run / "config.yaml").write_text(to_yaml(PretrainConfig(method="ssast", ssast=model.cfg)))
    return run, model


def test_load_encoder_reads_our_deepspeed_run_and_checkpoint_folders(tmp_path):
    run, model = _fake_deepspeed_run(tmp_path)
    ckpt = run / "checkpoints" / "step_00000003"
    for path in (run, run / "checkpoints", ckpt, ckpt / "mp_rank_00_model_states.pt"):  # all name step 3
        cfg, sd, info = load_encoder(path)
        assert cfg == model.cfg.encoder and _equal(sd, model.encoder.state_dict()), path
        assert (info["format"], info["method"], info["step"], info["source"]) == ("deepspeed", "ssast", 3, str(ckpt))
    (run / "config.yaml").unlink()
    cfg, sd, info = load_encoder(run)
    assert cfg == model.cfg.encoder and any("inferred" in n for n in info["notes"])


# ------------------------------------------------------------------------------------------------------ errors
def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_truncated_and_foreign_files_give_one_line(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(released(official_ast(dtype=torch.float32)), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadInput) as e:
        load_encoder(path)
    assert _one_line(e) == f"{path}: cannot be read as a torch checkpoint (truncated?)"
    torch.save(torch.zeros(3), path)
    with pytest.raises(BadInput, match="not an SSAST or Audio-MAE checkpoint: holds a Tensor"):
        load_encoder(path)
    with pytest.raises(BadInput, match="no such file or directory"):
        load_encoder(tmp_path / "missing.pth")
    with pytest.raises(BadInput, match="no complete DeepSpeed checkpoint"):
        load_encoder(tmp_path)


def test_missing_and_mismatched_keys_are_named(tmp_path):
    sd = released(official_ast(dtype=torch.float32))
    for k in ("module.v.pos_embed", "module.v.patch_embed.proj.weight", "module.v.patch_embed.proj.bias",
              "module.v.norm.weight", "module.v.blocks.1.mlp.fc2.bias"):
        del sd[k]
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)
    with pytest.raises(BadInput) as e:
        load_encoder(path)
    assert _one_line(e) == (f"{path}: not an SSAST or Audio-MAE checkpoint: missing module.v.pos_embed, "
                            "module.v.patch_embed.proj.weight (+3 more)")
    bad = released(official_ast(dtype=torch.float32))
    bad["module.v.pos_embed"] = bad["module.v.pos_embed"][:, :60]
    with pytest.raises(BadInput) as e:
        load_official_ssast(bad)
    assert "module.v.pos_embed has shape (1, 60, 192), expected (1, 66, 192) (2 cls + 8x8 patches" in _one_line(e)
    with pytest.raises(BadInput, match="missing pos_embed, patch_embed.proj.weight"):
        load_official_audiomae({"model": {"cls_token": torch.zeros(1, 1, D)}})
    with pytest.raises(BadInput, match="encoder.size='base' but the checkpoint has 'tiny'"):
        load_official_ssast(released(official_ast(dtype=torch.float32)), size="base")
    torch.save({"format": "tessera-encoder/9", "state_dict": {}}, path)
    with pytest.raises(BadInput, match="is not 'tessera-encoder/1'"):
        load_encoder(path)
