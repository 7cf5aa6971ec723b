"""Official fine-tuned SSAST files: the reference ASTModel fine-tuned (ft_avgtok / ft_cls), saved as traintest.py
saves it, loaded by our classifier loader: the same logits in fp32; the shape given, inferred or refused; class names;
the file as a fine-tuning start."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune.heads import HeadConfig
from finetune.model import build_classifier, class_names, load_classifier
from launch.common.errors import BadInput
from pretrain.encoder import EncoderConfig, adapt_pos_embed
from pretrain.official import finetuned_shapes
from pretrain.pretrained import load_encoder
from pretrain.tools.reference_ssast import OfficialAST

DEPTH, CLASSES = 2, 5
SCRATCH = EncoderConfig(size="tiny", depth=DEPTH, target_frames=48, cls_tokens=2)


def official_finetuned(patch=(16, 16), stride=(10, 10), frames=128, seed=0) -> OfficialAST:
    """ASTModel(pretrain_stage=False) from a random tiny pretraining model, then random weights everywhere (fp32)."""
    torch.manual_seed(seed)
    pre = OfficialAST(fshape=patch[0], tshape=patch[1], fstride=patch[0], tstride=patch[1], input_tdim=64,
                      model_size="tiny", depth=DEPTH)
    ft = OfficialAST(label_dim=CLASSES, fshape=patch[0], tshape=patch[1], fstride=stride[0], tstride=stride[1],
                     input_tdim=frames, model_size="tiny", pretrain_stage=False,
                     load_pretrained_mdl_path=nn.DataParallel(pre).state_dict(), depth=DEPTH)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # LayerNorm gains near 1, the rest near 0, so every tensor matters
        for name, p in ft.named_parameters():
            p.copy_((1.0 if name.endswith("weight") and p.ndim == 1 else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
    return ft.eval()


def save_as_official(model: OfficialAST, path) -> None:
    """traintest.py: ``torch.save(audio_model.state_dict(), ...)`` with audio_model = nn.DataParallel(ASTModel)."""
    torch.save(nn.DataParallel(model).state_dict(), path)


@pytest.fixture(scope="module")
def patch_file(tmp_path_factory):
    """A 16x16-patch model fine-tuned at stride 10 on 128 frames (12x12 tokens), as SpeechCommands-length SSAST."""
    path = tmp_path_factory.mktemp("official") / "audio_model.wa.pth"
    model = official_finetuned()
    save_as_official(model, path)
    return model, path


def _one_line(e) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("kind,task", [("mean", "ft_avgtok"), ("cls", "ft_cls")])
@pytest.mark.parametrize("shape", [dict(stride_freq=10, stride_time=10, target_frames=128), dict(target_frames=128)])
def test_official_finetuned_file_gives_the_official_logits(patch_file, kind, task, shape):
    official, path = patch_file
    sd = torch.load(path, weights_only=True)
    assert "module.mlp_head.1.weight" in sd and not any("p_input" in k or "predlayer" in k for k in sd)
    model, payload = load_classifier(path, head=kind, encoder=shape)  # strides given, or inferred from the frames
    model.eval()
    assert model.encoder.grid == (12, 12) and payload["encoder"]["stride_time"] == 10
    assert payload["classes"] == ["0", "1", "2", "3", "4"] and payload["head"]["kind"] == kind
    x = torch.randn(3, 128, 128, generator=torch.Generator().manual_seed(2))  # [B, T, F], fp32
    with torch.no_grad():
        ours, ref = model(x), official(x, task)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)  # measured: up to 6e-6 on logits up to ~7
    assert ref.abs().max() > 1.0  # logits that are not all ~0


def test_frame_model_at_time_stride_1_inferred_from_the_frame_count(tmp_path):
    official = official_finetuned(patch=(128, 2), stride=(128, 1), frames=48)
    path = tmp_path / "frame.pth"
    save_as_official(official, path)
    with pytest.raises(BadInput) as e:  # 47 tokens: time stride 1 on 48 frames, or 2 on 94
        load_classifier(path)
    assert "stride 128x1 on 128 mel x 48 frames; stride 128x2 on 128 mel x 94 frames" in _one_line(e)
    assert _one_line(e).endswith("give encoder.stride_freq, encoder.stride_time, the frame count (target_frames)")
    model, payload = load_classifier(path, head="cls", encoder={"target_frames": 48, "stride_freq": None})
    assert (payload["encoder"]["stride_freq"], payload["encoder"]["stride_time"]) == (128, 1)
    x = torch.randn(2, 48, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), official(x, "ft_cls"), atol=1e-5, rtol=1e-5)


def test_shapes_inferred_where_one_fits_and_refused_where_several_do(patch_file, tmp_path):
    # the released recipes' shapes are unambiguous once the frame count is known: 16x16 patches at stride 10
    assert finetuned_shapes((16, 16), 1212, 128, target_frames=1024) == [
        dict(num_mel_bins=128, stride_freq=10, stride_time=10, target_frames=1024)]  # AudioSet 12x101
    assert [(s["stride_freq"], s["stride_time"]) for s in finetuned_shapes((16, 16), 600, 128, target_frames=512)] \
        == [(10, 10)]  # ESC-50 12x50
    assert [(s["stride_freq"], s["stride_time"]) for s in finetuned_shapes((16, 16), 512, 128, target_frames=1024)] \
        == [(15, 16), (16, 16)]  # 8 rows come from stride 15 or 16 on 128 mel bins
    assert finetuned_shapes((16, 16), 144, 128, 10, 10) == [
        dict(num_mel_bins=128, stride_freq=10, stride_time=10, target_frames=126)]  # the shortest clip with 12x12
    path = tmp_path / "stride16.pth"
    save_as_official(official_finetuned(stride=(16, 16)), path)  # 8x8 tokens
    with pytest.raises(BadInput) as e:
        load_classifier(path, encoder={"target_frames": 128})
    assert "fits several fine-tuning shapes (stride 15x15 on 128 mel x 128 frames;" in _one_line(e)
    assert _one_line(e).endswith("give encoder.stride_freq, encoder.stride_time")
    model, _ = load_classifier(path, encoder={"target_frames": 128, "stride_freq": 16, "stride_time": 16})
    assert model.encoder.grid == (8, 8)
    with pytest.raises(BadInput, match=r"144 patch tokens of 16x16: no fine-tuning shape fits 128 mel bins and "
                                       r"stride_freq=10, stride_time=10, target_frames=100; give the encoder\.st"):
        load_classifier(patch_file[1], encoder={"target_frames": 100, "stride_freq": 10, "stride_time": 10})
    with pytest.raises(BadInput, match=r"'mean' \(ft_avgtok\) or 'cls' \(ft_cls\)"):
        load_classifier(patch_file[1], head="double_norm", encoder={"target_frames": 128})


def test_fine_tuning_starts_from_an_official_finetuned_file(patch_file):
    official, path = patch_file
    cfg, sd, info = load_encoder(path, target_frames=128, stride_freq=10, stride_time=10)  # was "missing p_input"
    assert info["format"] == "ssast-official" and cfg.grid == (12, 12)
    torch.testing.assert_close(sd["pos_embed"], official.v.pos_embed.detach(), atol=0, rtol=0)
    overrides = {"target_frames": 64, "stride_freq": 10, "stride_time": 10, "drop_path": 0.1}  # shorter clips
    model, info = build_classifier(str(path), overrides, SCRATCH, HeadConfig(kind="cls"), 3, False)
    assert model.encoder.grid == (12, 5) and model.encoder.cfg.drop_path == 0.1
    assert any("its own grid" in n for n in info["notes"])
    expected = adapt_pos_embed(official.v.pos_embed.detach(), (12, 12), (12, 5), 2)  # SSAST's time center cut
    torch.testing.assert_close(model.encoder.pos_embed.detach(), expected, atol=0, rtol=0)
    assert torch.equal(model.encoder.blocks[1].mlp.fc2.weight, official.v.blocks[1].mlp.fc2.weight)


def test_class_names_and_one_line_refusals(patch_file, tmp_path):
    official, path = patch_file
    labels = tmp_path / "class_labels_indices.csv"  # SSAST's label file format, rows out of order
    labels.write_text("index,mid,display_name\n1,/m/b,Bark\n0,/m/s,Speech\n2,/m/c,Car\n")
    notes: list[str] = []
    assert class_names(str(labels), 3, "x", notes) == ["Speech", "Bark", "Car"]
    plain = tmp_path / "names.txt"
    plain.write_text("a\nb\n\nc\n")
    assert class_names(str(plain), 3, "x", notes) == ["a", "b", "c"]
    assert class_names("a, b,c", 3, "x", notes) == ["a", "b", "c"] and class_names(None, 2, "x", notes) == ["0", "1"]
    with pytest.raises(BadInput) as e:
        load_classifier(path, classes="a,b", encoder={"target_frames": 128})
    assert _one_line(e) == f"{path}: classes= gives 2 names, the checkpoint's head has 5 outputs"
    _, payload = load_classifier(path, classes=list("vwxyz"), encoder={"target_frames": 128})
    assert payload["classes"] == list("vwxyz") and payload["format"] == "ssast-official"
    pretraining = tmp_path / "ssast_pretrained.pth"
    torch.save(nn.DataParallel(OfficialAST(input_tdim=64, model_size="tiny", fshape=16, tshape=16, fstride=16,
                                           tstride=16, depth=1)).state_dict(), pretraining)
    with pytest.raises(BadInput, match="an SSAST pretraining file .* not a classifier; fine-tune it with ckpt="):
        load_classifier(pretraining)
    sd = torch.load(path, weights_only=True)
    del sd["module.mlp_head.1.weight"]
    torch.save(sd, tmp_path / "neither.pth")
    with pytest.raises(BadInput) as e:
        load_encoder(tmp_path / "neither.pth")
    assert "missing module.p_input_fdim (a pretraining file) or module.mlp_head.1.weight (a fine-tuned file)" \
        in _one_line(e)
