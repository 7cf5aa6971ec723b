"""Features: batched kaldi fbank == torchaudio's; CP-JKU mel; normalisation; SpecAugment; noise/shift; stats."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio
import torchaudio.compliance.kaldi as kaldi
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from shards.audio import decode_flac, encode_flac
from shards.features import (
    NORM_STATS,
    FeatureConfig,
    build_features,
    cpjku_mel,
    crop_or_pad,
    fbank,
    measure_stats,
    noise_and_shift,
    normalize,
    spec_augment,
)
from shards.norm_stats import main as norm_stats_main

TOL = 1e-6  # max abs difference allowed on the log-mel values on CPU (what the README states); measured: 9.54e-7,
# one float32 ulp of a log-mel value in [8, 16), so values of 16 and more (int16-scaled input) would need 2e-6
GPU_TOL = 1e-3  # cuFFT against pocketfft (see test_fbank_on_gpu_matches_cpu)
LOG_EPS = math.log(torch.finfo(torch.float32).eps)  # kaldi's floor: log(float eps) = -15.94


@pytest.fixture(autouse=True)
def one_thread():
    """Compare with torchaudio run on one thread, as in SSAST/Audio-MAE DataLoader workers: with more threads torch
    splits the 1-D ``w.mean()`` reduction, whose last-bit change alone moves kaldi's own output by up to ~5e-4 in the
    spectral valleys."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def kaldi_ref(wave: torch.Tensor, sr: int = 16000, bins: int = 128) -> torch.Tensor:
    """SSAST / Audio-MAE ``_wav2fbank``, one clip at a time: [B, n] -> [B, T, bins]."""
    return torch.stack([
        kaldi.fbank((w - w.mean())[None], htk_compat=True, sample_frequency=sr, use_energy=False,
                    window_type="hanning", num_mel_bins=bins, dither=0.0, frame_shift=10)
        for w in wave
    ])


def max_err(wave: torch.Tensor, sr: int = 16000, bins: int = 128) -> float:
    ours, ref = fbank(wave, sr, bins), kaldi_ref(wave, sr, bins)
    assert ours.shape == ref.shape == (wave.shape[0], 1 + (wave.shape[1] - int(sr * 0.025)) // int(sr * 0.01), bins)
    return float((ours - ref).abs().max())


# ----------------------------------------------------------------------------------------------------------------------
# Kaldi fbank


@pytest.mark.parametrize("batch,n", [(1, 16000), (64, 16000), (3, 48077), (2, 160000), (5, 400), (7, 12345)])
def test_fbank_matches_kaldi_on_noise(batch, n):
    g = torch.Generator().manual_seed(batch * 100003 + n)
    wave = 0.1 * torch.randn(batch, n, generator=g)
    assert max_err(wave) < TOL


STRUCTURED = ["tones", "silence", "clicks", "low_noise", "dc_offset", "clipped_square", "pcm16_quantised"]


def _structured(n: int) -> dict[str, torch.Tensor]:
    t = torch.arange(n) / 16000
    g = torch.Generator().manual_seed(1)
    click = torch.zeros(2, n)
    click[0, n // 3] = 1.0
    click[1, [100, 4000, n - 5]] = -0.8
    return {
        "tones": torch.stack([0.5 * torch.sin(2 * math.pi * f * t) for f in (440.0, 1234.5, 7990.0, 25.0)]),
        "silence": torch.zeros(3, n),
        "clicks": click,
        "low_noise": 1e-5 * torch.randn(2, n, generator=g),
        "dc_offset": 0.4 + 0.05 * torch.randn(2, n, generator=g),
        "clipped_square": torch.sign(torch.sin(2 * math.pi * 300 * t)).repeat(2, 1),
        "pcm16_quantised": torch.round(0.2 * torch.randn(2, n, generator=g) * 32767) / 32767,
    }


@pytest.mark.parametrize("kind", STRUCTURED)
def test_fbank_matches_kaldi_on_structured_input(kind):
    wave = _structured(16000 + 333)[kind]
    assert max_err(wave) < TOL


def test_fbank_of_silence_is_kaldis_log_floor():
    out = fbank(torch.zeros(2, 16000))
    assert torch.equal(out, torch.full_like(out, LOG_EPS))


@settings(max_examples=6, deadline=None, derandomize=True)
@given(batch=st.integers(1, 8), n=st.integers(400, 40000), log_amp=st.floats(-5, 0), seed=st.integers(0, 2**31))
def test_fbank_matches_kaldi_property(batch, n, log_amp, seed):
    g = torch.Generator().manual_seed(seed)
    wave = (10.0**log_amp) * torch.randn(batch, n, generator=g) + 0.01 * torch.rand(batch, 1, generator=g)
    assert max_err(wave) < TOL


def test_fbank_other_rate_and_bins():
    wave = 0.1 * torch.randn(3, 8000 * 2 + 17, generator=torch.Generator().manual_seed(3))
    assert max_err(wave, sr=8000, bins=64) < TOL


def test_fbank_rejects_bad_shapes():
    with pytest.raises(ValueError, match="wave"):
        fbank(torch.zeros(16000))
    with pytest.raises(ValueError, match="shorter"):
        fbank(torch.zeros(2, 399))


def test_fbank_is_batch_independent_and_ignores_autocast():
    wave = 0.1 * torch.randn(4, 16000, generator=torch.Generator().manual_seed(4))
    whole = fbank(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = fbank(wave)
    assert inside.dtype == torch.float32
    assert torch.equal(whole, inside)
    assert torch.equal(whole[2:3], fbank(wave[2:3]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fbank_on_gpu_matches_cpu():
    # cuFFT rounds differently from pocketfft; float32 noise then moves the deepest spectral valleys (a tone's far bins)
    # by up to ~3e-3 in log, the same size as torchaudio's own float32 error against a float64 reference.
    wave = torch.cat([0.1 * torch.randn(6, 160000, generator=torch.Generator().manual_seed(5)),
                      _structured(160000)["tones"]])
    d = (fbank(wave.cuda()).cpu() - fbank(wave)).abs()
    assert float(d.max()) < 1e-2
    assert float((d > GPU_TOL).float().mean()) < 1e-2


# ----------------------------------------------------------------------------------------------------------------------
# CP-JKU mel


def cpjku_ref(wave: torch.Tensor, periodic: bool, fmax: float) -> torch.Tensor:
    """AugmentMelSTFT.forward in eval mode (EfficientAT models/preprocess.py), clip by clip: [B, n] -> [B, T, M]."""
    window = torch.hann_window(3072, periodic=periodic)
    out = []
    for w in wave:
        x = F.conv1d(w[None, None], torch.tensor([[[-0.97, 1.0]]])).squeeze(1)
        x = torch.stft(x, 4096, hop_length=500, win_length=3072, center=True, normalized=False, window=window,
                       return_complex=True)
        x = torch.view_as_real(x).pow(2).sum(-1)
        basis, _ = kaldi.get_mel_banks(256, 4096, 32000.0, 0.0, fmax, 100.0, -500.0, 1.0)
        basis = F.pad(basis, (0, 1))
        mel = (torch.matmul(basis, x) + 1e-5).log()
        out.append(((mel + 4.5) / 5.0)[0].T)
    return torch.stack(out)


@pytest.mark.parametrize("n,frames", [(32000, 64), (320000, 640), (32000 + 777, 66)])
def test_cpjku_shapes(n, frames):
    assert cpjku_mel(torch.zeros(2, n)).shape == (2, frames, 256)


@pytest.mark.parametrize("periodic,fmax", [(True, 16000.0), (False, 15000.0)])
def test_cpjku_matches_per_clip_stft(periodic, fmax):
    g = torch.Generator().manual_seed(6)
    t = torch.arange(48000) / 32000
    wave = torch.cat([0.1 * torch.randn(2, 48000, generator=g), 0.5 * torch.sin(2 * math.pi * 1000 * t)[None]])
    ours = cpjku_mel(wave, periodic_window=periodic, fmax=fmax)
    ref = cpjku_ref(wave, periodic, fmax)
    assert ours.shape == ref.shape == (3, 96, 256)
    assert float((ours - ref).abs().max()) < 1e-4


# ----------------------------------------------------------------------------------------------------------------------
# Normalisation, crop/pad, config


def test_normalisation_constants():
    assert NORM_STATS["audioset"] == (-4.2677393, 4.5689974)
    assert NORM_STATS["esc50"] == (-6.6268077, 5.358466)
    assert NORM_STATS["speechcommands"] == (-6.845978, 5.5654526)
    x = torch.randn(2, 5, 4)
    assert torch.allclose(normalize(x), (x + 4.2677393) / (2 * 4.5689974))
    assert torch.allclose(normalize(x, *NORM_STATS["cpjku"]), (x + 4.5) / 5)
    cfg = FeatureConfig()
    assert (cfg.norm_mean, cfg.norm_std) == NORM_STATS["audioset"]
    cj = FeatureConfig(kind="cpjku", sample_rate=32000, num_mel_bins=256)
    assert (cj.norm_mean, cj.norm_std) == (-4.5, 2.5)
    assert FeatureConfig(norm_mean=-6.6268077, norm_std=5.358466).norm_mean == -6.6268077


def test_config_checks():
    with pytest.raises(ValueError, match="kind"):
        FeatureConfig(kind="mfcc")
    with pytest.raises(ValueError, match="32 kHz"):
        FeatureConfig(kind="cpjku")


def test_crop_or_pad():
    x = torch.randn(2, 98, 8)
    padded = crop_or_pad(x, 100)
    assert padded.shape == (2, 100, 8) and torch.equal(padded[:, :98], x) and not padded[:, 98:].any()
    assert torch.equal(crop_or_pad(x, 50), x[:, :50])
    assert torch.equal(crop_or_pad(x, 98), x)


def test_features_module_pads_before_normalising():
    wave = 0.1 * torch.randn(3, 16000, generator=torch.Generator().manual_seed(7))  # 98 frames
    feats = build_features(FeatureConfig(target_frames=100)).eval()
    out = feats(wave)
    assert out.shape == (3, 100, 128)
    assert torch.allclose(out[:, :98], normalize(kaldi_ref(wave)), atol=TOL)
    pad_value = (0 - NORM_STATS["audioset"][0]) / (2 * NORM_STATS["audioset"][1])  # SSAST: padded frames read 0.467
    assert torch.allclose(out[:, 98:], torch.full((3, 2, 128), pad_value))
    assert torch.equal(build_features(FeatureConfig(target_frames=50)).eval()(wave), out[:, :50])


def test_features_module_cpjku():
    wave = 0.1 * torch.randn(2, 32000, generator=torch.Generator().manual_seed(8))
    cfg = FeatureConfig(kind="cpjku", sample_rate=32000, num_mel_bins=256, target_frames=64)
    out = build_features(cfg).eval()(wave)
    assert torch.allclose(out, cpjku_mel(wave), atol=1e-5)  # (x + 4.5) / 5 through the generic normalisation


def test_features_module_augments_only_in_training():
    cfg = FeatureConfig(target_frames=100, freq_mask=24, time_mask=40, noise=True)
    feats = build_features(cfg)
    wave = 0.1 * torch.randn(4, 16000, generator=torch.Generator().manual_seed(9))
    a = feats(wave, torch.Generator().manual_seed(1))
    b = feats(wave, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, feats(wave, torch.Generator().manual_seed(2)))
    assert torch.equal(feats.eval()(wave), build_features(FeatureConfig(target_frames=100)).eval()(wave))


# ----------------------------------------------------------------------------------------------------------------------
# SpecAugment, noise and shift


def test_spec_augment_equals_torchaudio_iid_masking():
    x = torch.randn(16, 100, 64) + 5.0
    torch.manual_seed(123)
    freq = torchaudio.transforms.FrequencyMasking(20, iid_masks=True)
    time = torchaudio.transforms.TimeMasking(30, iid_masks=True)
    ref = time(freq(x.transpose(1, 2))).transpose(1, 2)  # torchaudio works on [B, F, T]
    ours = spec_augment(x, 20, 30, torch.Generator().manual_seed(123))
    assert torch.equal(ours, ref)


def test_spec_augment_statistics():
    batch, t, f, fm, tm = 2000, 50, 40, 12, 20
    x = torch.ones(batch, t, f)
    out = spec_augment(x, fm, tm, torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    freq_masked = (out == 0).all(dim=1)  # [B, F]: bins zero in every frame
    time_masked = (out == 0).all(dim=2)  # [B, T]
    fw, tw = freq_masked.sum(1), time_masked.sum(1)
    assert fw.max() == fm - 1 and tw.max() == tm - 1 and fw.min() == 0  # width uniform in {0..param-1}
    assert abs(fw.float().mean() - (fm - 1) / 2) < 0.3 and abs(tw.float().mean() - (tm - 1) / 2) < 0.5
    # one contiguous band each, and everything outside the two bands untouched
    assert ((freq_masked.diff(dim=1).ne(0).sum(1)) <= 2).all()
    expected = ~(freq_masked[:, None, :] | time_masked[:, :, None])
    assert torch.equal(out.bool(), expected)
    # torchaudio's quirk, kept: end = floor(U (size - v)) + floor(v) <= size - 1, so the last bin/frame is never masked
    assert freq_masked[:, 0].any() and freq_masked[:, -2].any() and not freq_masked[:, -1].any()
    assert time_masked[:, 0].any() and time_masked[:, -2].any() and not time_masked[:, -1].any()


def test_spec_augment_determinism_and_off():
    x = torch.randn(8, 30, 20)
    a = spec_augment(x, 10, 10, torch.Generator().manual_seed(5))
    assert torch.equal(a, spec_augment(x, 10, 10, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, spec_augment(x, 10, 10, torch.Generator().manual_seed(6)))
    g = torch.Generator().manual_seed(5)
    assert torch.equal(spec_augment(x, 0, 0, g), x)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(5).get_state())  # nothing drawn


def test_noise_and_shift():
    batch, t, f = 400, 64, 8
    x = (10.0 * torch.arange(t, dtype=torch.float32))[None, :, None].expand(batch, t, f).contiguous()
    out = noise_and_shift(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, noise_and_shift(x, torch.Generator().manual_seed(0)))
    # the frame index survives the noise (< 0.1), so the roll can be read back: out[:, 0] = x[(0 - s) % T]
    src0 = torch.round(out[:, 0, 0] / 10).long()
    shift = torch.where(src0 == 0, 0, t - src0)
    shift = torch.where(shift >= t - 10, shift - t, shift)
    assert shift.min() == -10 and shift.max() == 9  # np.random.randint(-10, 10)
    rolled = torch.stack([torch.roll(x[b], int(shift[b]), 0) for b in range(batch)])
    noise = out - rolled
    assert noise.min() >= 0 and noise.max() < 0.1
    # per sample: noise = rand * u / 10 with one u per clip, so its maximum spreads over [0, 0.1)
    per_clip_max = noise.amax(dim=(1, 2))
    assert per_clip_max.min() < 0.02 and per_clip_max.max() > 0.08


# ----------------------------------------------------------------------------------------------------------------------
# Statistics and the stats command


def test_measure_stats_equals_global_mean_std():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(b, 7, 5, generator=g) * s + m for b, s, m in [(3, 1.0, -4.0), (1, 3.0, 2.0), (8, 0.5, 0.0)]]
    mean, std = measure_stats(batches)
    flat = torch.cat([b.flatten() for b in batches]).double()
    assert mean == pytest.approx(float(flat.mean()), abs=1e-9)
    assert std == pytest.approx(float(flat.std(unbiased=False)), abs=1e-9)
    with pytest.raises(ValueError):
        measure_stats([])


@pytest.fixture()
def tiny_shards(tmp_path):
    """Five clips (1 s, 1 s, 1 s, 0.5 s, 1 s) in three shards written with plain webdataset, plus a manifest."""
    rng = np.random.default_rng(0)
    lengths = [16000, 16000, 16000, 8000, 16000]
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    with wds.ShardWriter(str(tmp_path / "train-%06d.tar"), maxcount=2, verbose=0) as sink:
        for i, x in enumerate(clips):
            sink.write({"__key__": f"clip-{i:03d}", "flac": encode_flac(x, 16000), "json": json.dumps({"index": i})})
    shards = sorted(tmp_path.glob("train-*.tar"))
    manifest = {"sample_rate": 16000, "splits": {"train": {
        "shards": [{"file": p.name, "count": c} for p, c in zip(shards, [2, 2, 1])], "sample_rate": 16000}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path, clips


def _override(text: str) -> tuple[float, float]:
    line = next(l for l in text.splitlines() if l.startswith("data.features.norm_mean="))
    mean, std = (float(part.split("=")[1]) for part in line.split())
    return mean, std


def test_stats_command(tiny_shards, capsys):
    folder, clips = tiny_shards
    decoded = [torch.from_numpy(decode_flac(encode_flac(x, 16000))[0]) for x in clips]  # 16-bit FLAC round trip
    assert norm_stats_main([str(folder), "--split", "train"]) == 0
    mean, std = _override(capsys.readouterr().out)
    want = measure_stats(fbank(x[None]) for x in decoded)
    assert mean == pytest.approx(want[0], abs=1e-6) and std == pytest.approx(want[1], abs=1e-6)

    assert norm_stats_main([str(folder / "train-{000000..000001}.tar"), "--clips", "3", "--target-frames", "100"]) == 0
    mean3, std3 = _override(capsys.readouterr().out)
    want3 = measure_stats(crop_or_pad(fbank(x[None]), 100) for x in decoded[:3])
    assert mean3 == pytest.approx(want3[0], abs=1e-6) and std3 == pytest.approx(want3[1], abs=1e-6)

    assert norm_stats_main([str(folder), "--split", "test"]) == 2  # no such split: one error line
    assert "no split 'test'" in capsys.readouterr().err
    assert norm_stats_main([str(folder / "nowhere")]) == 2
    assert "no such shard" in capsys.readouterr().err
