"""Device-robust augmentations: frequency-wise MixStyle statistics, convolution with known impulse responses, the IR
collection loader and its one-line errors, and the synthetic corpus's stand-in device IRs."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from finetune.augment import (
    apply_device_ir,
    band_statistics,
    build_ir_bank,
    convolve_with_ir,
    draw_device_irs,
    eligible_clips,
    freq_mixstyle,
    load_ir_bank,
    mix_band_statistics,
    rms,
)
from finetune.config import DeviceIRConfig, load_finetune_config
from launch.common.errors import BadInput
from launch.runtime.config import config_hash
from shards.default import SyntheticDataConfig, ensure_device_irs, ensure_synthetic
from shards.sources import synthetic
from shards.writer import BuildOptions, build


def features(b: int = 6, t: int = 50, f: int = 16, seed: int = 0) -> torch.Tensor:
    """Log-mel-like [B, T, F]: each clip and band with its own offset and spread (a device's colouring)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, f, generator=g) * (0.5 + torch.rand(b, 1, f, generator=g)) \
        + 4 * torch.randn(b, 1, f, generator=g)


def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(1), x.std(1)  # per clip and band, over time: [B, F]


# ----------------------------------------------------------------------------------------------------------------------
# Frequency-wise MixStyle


def cpjku_mixstyle(x, lmda, perm, eps=1e-6):
    """The body of CP-JKU's ``mixstyle`` (cpjku_dcase23 helpers/utils.py) on [B, C, F, T], lam and perm given."""
    f_mu = x.mean(dim=[1, 3], keepdim=True)
    f_var = x.var(dim=[1, 3], keepdim=True)
    f_sig = (f_var + eps).sqrt()
    x_normed = (x - f_mu) / f_sig
    lmda = lmda.view(-1, 1, 1, 1)
    mu_mix = f_mu * lmda + f_mu[perm] * (1 - lmda)
    sig_mix = f_sig * lmda + f_sig[perm] * (1 - lmda)
    return x_normed * sig_mix + mu_mix


def test_mixstyle_with_lambda_one_changes_nothing():
    x = features()
    out = mix_band_statistics(x, torch.ones(6), torch.randperm(6))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_mixstyle_with_lambda_zero_gives_each_clip_its_partners_band_statistics():
    x = features()
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    mu, sd = stats(mix_band_statistics(x, torch.zeros(6), perm))
    mu_x, sd_x = stats(x)
    torch.testing.assert_close(mu, mu_x[perm], atol=1e-5, rtol=0)
    torch.testing.assert_close(sd, sd_x[perm], atol=1e-5, rtol=0)


def test_mixed_band_statistics_are_the_lambda_mix_of_the_two_clips():
    x = features()
    perm, lam = torch.tensor([1, 2, 3, 4, 5, 0]), torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.25])
    mu, sd = stats(mix_band_statistics(x, lam, perm))
    mu_x, sd_x = stats(x)
    torch.testing.assert_close(mu, lam[:, None] * mu_x + (1 - lam[:, None]) * mu_x[perm], atol=1e-5, rtol=0)
    torch.testing.assert_close(sd, lam[:, None] * sd_x + (1 - lam[:, None]) * sd_x[perm], atol=1e-5, rtol=0)
    # the shape inside each band is kept: a mixed band is an affine map of the clip's own band
    z = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)
    z_out = mix_band_statistics(x, lam, perm)
    torch.testing.assert_close((z_out - mu[:, None]) / sd[:, None], z, atol=1e-4, rtol=0)


def test_matches_cpjku_mixstyle_on_their_layout_with_channels():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, 16, 40, generator=g) * 3 + torch.randn(5, 1, 16, 1, generator=g)  # [B, C, F, T]
    lam, perm = torch.rand(5, generator=g), torch.randperm(5, generator=g)
    torch.testing.assert_close(mix_band_statistics(x, lam, perm, freq_dim=2), cpjku_mixstyle(x, lam, perm))
    # our time-major [B, T, F] layout gives the same numbers
    y = features()
    lam, perm = torch.rand(6, generator=g), torch.randperm(6, generator=g)
    theirs = cpjku_mixstyle(y.transpose(1, 2)[:, None], lam, perm)[:, 0].transpose(1, 2)
    torch.testing.assert_close(mix_band_statistics(y, lam, perm), theirs)


def test_band_statistics_shape():
    mu, sigma = band_statistics(features(), freq_dim=-1)
    assert mu.shape == sigma.shape == (6, 1, 16)


def test_mixstyle_p0_is_the_identity_and_draws_nothing():
    x, g = features(), torch.Generator().manual_seed(3)
    state = g.get_state()
    assert freq_mixstyle(x, 0.0, 0.3, g) is x
    assert torch.equal(g.get_state(), state)


def test_mixstyle_is_deterministic_under_a_generator_and_p_decides_per_batch():
    x = features()
    a = freq_mixstyle(x, 1.0, 0.3, torch.Generator().manual_seed(5))
    b = freq_mixstyle(x, 1.0, 0.3, torch.Generator().manual_seed(5))
    c = freq_mixstyle(x, 1.0, 0.3, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, x)
    applied = [freq_mixstyle(x, 0.4, 0.3, torch.Generator().manual_seed(s)) is not x for s in range(400)]
    assert 0.33 < np.mean(applied) < 0.47  # one coin per batch, P = 0.4


# ----------------------------------------------------------------------------------------------------------------------
# Convolution with device impulse responses


def waves(b: int = 4, n: int = 800, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, n, generator=torch.Generator().manual_seed(seed))


def test_a_delayed_scaled_impulse_gives_the_delayed_scaled_clip():
    x = waves()
    ir = torch.zeros(4, 10)
    ir[:, 7] = 0.5
    out = convolve_with_ir(x, ir)
    assert out.shape == x.shape
    torch.testing.assert_close(out[:, 7:], 0.5 * x[:, :-7], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :7], torch.zeros(4, 7), atol=1e-5, rtol=0)


def test_convolution_matches_numpy_convolve_cut_to_the_clip():
    x = waves(2, 1000)
    irs = torch.zeros(2, 300)
    irs[0, 0], irs[0, 1] = 1.0, -0.8  # a two-tap IR (a first difference: a bass roll-off)
    irs[1] = torch.randn(300, generator=torch.Generator().manual_seed(9)) * torch.exp(-torch.arange(300) / 40.0)
    out = convolve_with_ir(x, irs)
    for row in range(2):
        expected = np.convolve(x[row].numpy().astype(np.float64), irs[row].numpy().astype(np.float64))[:1000]
        np.testing.assert_allclose(out[row].numpy(), expected, atol=1e-4)


def bank(k: int = 3, length: int = 16) -> "object":
    from finetune.augment import IRBank

    irs = torch.zeros(k, length)
    for i in range(k):
        irs[i, i + 1] = 1.0 + i  # IR i: delay i + 1 samples, gain 1 + i
    return IRBank([f"ir{i}.wav" for i in range(k)], irs, 16000, "mem")


def test_device_ir_p0_is_the_identity_and_draws_nothing():
    x, g = waves(), torch.Generator().manual_seed(0)
    state = g.get_state()
    out, chosen = apply_device_ir(x, bank(), 0.0, g)
    assert out is x and (chosen == -1).all() and torch.equal(g.get_state(), state)


def test_chosen_irs_are_deterministic_under_a_generator_and_applied_to_those_clips():
    x = waves(64, 200)
    first = draw_device_irs(64, 3, 0.6, torch.Generator().manual_seed(11))
    again = draw_device_irs(64, 3, 0.6, torch.Generator().manual_seed(11))
    other = draw_device_irs(64, 3, 0.6, torch.Generator().manual_seed(12))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert 0.4 < (first >= 0).float().mean() < 0.8 and set(first[first >= 0].tolist()) == {0, 1, 2}
    out, chosen = apply_device_ir(x, bank(), 0.6, torch.Generator().manual_seed(11), keep_level=False)
    assert torch.equal(chosen, first)
    for i, k in enumerate(chosen.tolist()):
        expected = x[i] if k < 0 else torch.cat([torch.zeros(k + 1), (1.0 + k) * x[i, :-(k + 1)]])
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_keep_level_and_the_device_filter():
    x = waves(8, 400)
    meta = [{"device": d} for d in ("a", "b", "A", "s1", "a", "c", "a", "s2")]
    eligible = eligible_clips(meta, ["a"])
    assert eligible.tolist() == [True, False, True, False, True, False, True, False]
    assert eligible_clips(meta, None) is None
    out, chosen = apply_device_ir(x, bank(), 1.0, torch.Generator().manual_seed(2), eligible)
    assert (chosen[~eligible] == -1).all() and (chosen[eligible] >= 0).all()
    assert torch.equal(out[~eligible], x[~eligible])
    torch.testing.assert_close(rms(out), rms(x), rtol=1e-5, atol=0)  # louder IRs, same level


# ----------------------------------------------------------------------------------------------------------------------
# The IR collection: loading, resampling, caching, one-line errors


def write_ir(path: Path, rate: int, n: int, fmt: str = "WAV", subtype: str = "PCM_24") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h = np.zeros(n)
    h[3], h[4] = 0.9, -0.3
    sf.write(path, h, rate, format=fmt, subtype=subtype)


def test_folder_is_read_recursively_resampled_once_and_cached(tmp_path):
    write_ir(tmp_path / "ribbon" / "RCA_44BX.wav", 44100, 441)
    write_ir(tmp_path / "phones" / "p1.flac", 16000, 100, "FLAC", "PCM_16")
    (tmp_path / "README.txt").write_text("MicIRP")  # not audio: skipped
    (tmp_path / ".hidden.wav").write_bytes(b"junk")  # hidden: skipped
    b = load_ir_bank(tmp_path, 16000)
    assert b.names == ["phones/p1.flac", "ribbon/RCA_44BX.wav"] and b.rate == 16000
    assert b.irs.shape == (2, 160) and b.irs.dtype == torch.float32  # 10 ms at 44.1 kHz -> 160 samples at 16 kHz
    assert float(b.irs[0, 100:].abs().max()) == 0  # the shorter IR is zero-padded
    assert load_ir_bank(tmp_path, 16000) is b  # read once per process


@pytest.mark.parametrize("case,match", [
    ("missing", r"augment.device_ir.path=.*nope: does not exist"),
    ("empty", r"augment.device_ir.path=.*: holds no audio file"),
    ("junk", r"augment.device_ir.path: .*bad\.wav: unreadable"),
    ("long", r"augment.device_ir.path: .*long\.wav: impulse response of 3.00 s is longer than "
             r"augment.device_ir.max_seconds=2.0"),
    ("zeros", r"augment.device_ir.path: .*zeros\.wav: the impulse response is all zeros"),
])
def test_a_bad_collection_is_one_line_naming_the_key_and_file(tmp_path, case, match):
    folder = tmp_path / case
    folder.mkdir()
    write_ir(folder / "good.wav", 16000, 64)
    if case == "missing":
        folder = folder / "nope"
    elif case == "empty":
        (folder / "good.wav").unlink()
        (folder / "notes.txt").write_text("no audio here")
    elif case == "junk":
        (folder / "bad.wav").write_bytes(b"RIFF this is not a wav file at all")
    elif case == "long":
        write_ir(folder / "long.wav", 16000, 48000)
    elif case == "zeros":
        sf.write(folder / "zeros.wav", np.zeros(64), 16000)
    with pytest.raises(BadInput, match=match) as e:
        load_ir_bank(folder, 16000)
    assert "\n" not in str(e.value)


def test_config_keys_are_off_by_default_and_range_checked():
    cfg = load_finetune_config([])
    assert cfg.augment.freq_mixstyle == 0 and cfg.augment.device_ir.path == ""
    assert build_ir_bank(cfg.augment.device_ir, cfg.data.synthetic, 16000) is None
    assert config_hash(load_finetune_config(["augment.freq_mixstyle=0.4"])) != config_hash(cfg)
    assert config_hash(load_finetune_config(["augment.device_ir.path=synthetic"])) != config_hash(cfg)
    for bad, key in [("augment.freq_mixstyle=1.5", "augment.freq_mixstyle"),
                     ("augment.freq_mixstyle_alpha=0", "augment.freq_mixstyle_alpha"),
                     ("augment.device_ir.p=-0.1", "augment.device_ir.p"),
                     ("augment.device_ir.max_seconds=0", "augment.device_ir.max_seconds")]:
        with pytest.raises(BadInput, match=key):
            load_finetune_config([bad])


# ----------------------------------------------------------------------------------------------------------------------
# The synthetic corpus's stand-in collection


def measured_response(path: Path, band_hz: np.ndarray) -> np.ndarray:
    """|FFT| of an IR file at the given frequencies (zero-padded to 2^16 points)."""
    h, rate = sf.read(path)
    spectrum = np.abs(np.fft.rfft(h, 1 << 16))
    return np.interp(band_hz, np.fft.rfftfreq(1 << 16, 1 / rate), spectrum)


def test_stand_in_irs_are_new_devices_of_the_corpus_family(tmp_path):
    """Each written IR has the response of its drawn device (to 0.1 dB) and is at least IR_MIN_DISTANCE_DB (gain-free
    RMS dB over 50 Hz-7.5 kHz) from every one of the nine corpus devices, the test-only s4-s6 included."""
    cfg = DeviceIRConfig(path="synthetic")
    syn = SyntheticDataConfig(root=str(tmp_path))
    b = build_ir_bank(cfg, syn, 16000)
    folder = ensure_device_irs(syn, 16000)
    assert not (folder.parent / "manifest.json").exists()  # the IRs alone: no shard was built for them
    assert b.names == [f"ir{i:02d}.wav" for i in range(1, synthetic.IR_DEVICES + 1)]
    assert b.irs.shape == (synthetic.IR_DEVICES, 2000)
    hz = np.geomspace(*synthetic.IR_BAND, 256)
    octs = np.log2(hz / 1000)
    corpus = {k: synthetic.device_response(d, octs) for k, d in synthetic.DEVICES.items()}
    responses = []
    for name, device in synthetic.ir_devices().items():
        measured = measured_response(folder / f"{name}.wav", hz)
        assert synthetic.response_distance_db(measured, synthetic.device_response(device, octs)) < 0.1, name
        nearest = min(corpus, key=lambda k: synthetic.response_distance_db(measured, corpus[k]))
        assert synthetic.response_distance_db(measured, corpus[nearest]) >= synthetic.IR_MIN_DISTANCE_DB, (name, nearest)
        responses.append(measured)
    for i in range(len(responses)):  # and they differ from one another
        assert all(synthetic.response_distance_db(responses[i], r) >= 1.0 for r in responses[i + 1:])
    # a response 2 dB away is audibly another device: the corpus's own closest pair is 1.6 dB apart
    assert synthetic.response_distance_db(corpus["s3"], corpus["s6"]) < synthetic.IR_MIN_DISTANCE_DB


def test_the_stand_in_irs_leave_the_corpus_shards_byte_for_byte_as_before(tmp_path):
    syn = SyntheticDataConfig(root=str(tmp_path / "with"), labelled=4, val=2, test=3, unlabelled=2, duration=0.25)
    with_irs = ensure_synthetic(syn, 16000, workers=1)
    args = dict(source="synthetic", seed=0, labelled=4, unlabelled=2, val=2, test=3, duration=0.25)
    import argparse

    corpus = synthetic.load(None, argparse.Namespace(**args, sample_rate=16000))
    plain = tmp_path / "plain"
    build(corpus, plain, list(corpus.splits), BuildOptions(sample_rate=16000, shard_size=500, workers=1), root=None,
          source_args=args)
    assert sorted(p.name for p in (with_irs / synthetic.IR_FOLDER).iterdir()) == [
        f"ir{i:02d}.wav" for i in range(1, synthetic.IR_DEVICES + 1)]
    tars = sorted(p.name for p in plain.glob("*.tar"))
    assert tars == sorted(p.name for p in with_irs.glob("*.tar")) and len(tars) == 4
    for name in tars:
        assert (with_irs / name).read_bytes() == (plain / name).read_bytes(), name
    assert json.loads((with_irs / "manifest.json").read_text()) == json.loads((plain / "manifest.json").read_text())
    with tarfile.open(with_irs / "test-000000.tar") as tar:
        assert not any("ir" in n and n.endswith(".wav") for n in tar.getnames())
