"""Waveforms -> normalised log-mel features, batched on the batch's device (CPU or GPU).

Two front ends, both ``[B, n_samples] -> [B, T, F]`` (time-major, as Audio-MAE feeds its encoder):

* :func:`fbank`: the Kaldi fbank that SSAST and Audio-MAE compute per clip in their DataLoader workers
  (``torchaudio.compliance.kaldi.fbank(w - w.mean(), htk_compat=True, use_energy=False, window_type='hanning',
  num_mel_bins=128, dither=0.0, frame_shift=10)``), reproduced step by step for a whole batch. On CPU its float32
  operations before the FFT are the same as torchaudio's, so the result equals torchaudio run with one thread (the
  DataLoader-worker setting) to about 1e-6; elsewhere float32 rounding alone moves spectral valleys by up to ~3e-3
  in log (measured against a float64 reference).
* :func:`cpjku_mel`: CP-JKU's ``AugmentMelSTFT`` (PaSST / EfficientAT / cpjku_dcase23) at the 32 kHz, 3072/500/4096,
  256-mel setting.

Then :func:`crop_or_pad` (log-mel domain, before normalisation, as SSAST), :func:`spec_augment` (torchaudio
Frequency/TimeMasking with ``iid_masks``), :func:`normalize` and SSAST's :func:`noise_and_shift`. :func:`build_features`
composes them from a :class:`FeatureConfig`. ``python -m shards.norm_stats DIR`` (shards/norm_stats.py) measures mean/std on a shard set.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor, nn

from launch.common.errors import check

# (mean, std) of the log-mel, used as (x - mean) / (2 std) (SSAST src/run.py recipes, Audio-MAE dataset.py).
NORM_STATS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),  # also LibriSpeech and AudioSet+LibriSpeech pretraining in SSAST
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
    # CP-JKU's "fast normalization" (x + 4.5) / 5 written in the same form: (x - (-4.5)) / (2 * 2.5).
    "cpjku": (-4.5, 2.5),
}
AUDIOSET_MEAN, AUDIOSET_STD = NORM_STATS["audioset"]

# Kaldi floors the mel energies at numeric_limits<float>::epsilon() before the log (torchaudio kaldi.EPSILON).
_KALDI_EPS = torch.finfo(torch.float32).eps
# On CPU the batch is processed in blocks of about this many frames: every intermediate (2 KiB a frame) then stays in
# cache. One pass over 64 x 10 s clips streams ~100 MB per elementwise step through DRAM and measured 2-3x slower.
_CPU_BLOCK_FRAMES = 2048


# ----------------------------------------------------------------------------------------------------------------------
# Constants, built once per (geometry, device)


@functools.lru_cache(maxsize=32)
def _hann(length: int, periodic: bool, device: torch.device) -> Tensor:
    return torch.hann_window(length, periodic=periodic, device=device, dtype=torch.float32)  # [L]


@dataclass(frozen=True)
class _MelBanks:
    """Kaldi triangular mel banks (mel = 1127 ln(1 + f/700)) on one device, ready for ``power @ banks``."""

    dense: Tensor
    """``[n_fft/2, M]``; ``get_mel_banks`` leaves out the Nyquist bin (kaldi pads a zero column), callers drop it."""
    blocks: tuple[tuple[int, int, int, int, Tensor], ...]
    """``(mel_lo, mel_hi, fft_lo, fft_hi, dense[fft_lo:fft_hi, mel_lo:mel_hi])`` per group of 16 mel bins: each group
    only sees the FFT bins under its triangles, so the CPU product does ~1/8 of the dense FLOPs (the skipped weights
    are exactly 0; only the summation blocking changes, ~1 ulp)."""


@functools.lru_cache(maxsize=32)
def _mel_banks(num_bins: int, n_fft: int, sample_rate: float, low: float, high: float, device: torch.device,
               group: int = 16) -> _MelBanks:
    # vtln_low/high/warp at kaldi's defaults (100, -500, 1.0: no warping), as both fbank and AugmentMelSTFT pass them
    banks, _ = kaldi.get_mel_banks(num_bins, n_fft, float(sample_rate), float(low), float(high), 100.0, -500.0, 1.0)
    dense = banks.T.contiguous()  # [n_fft/2, M] float32
    blocks = []
    for lo in range(0, num_bins, group):
        hi = min(lo + group, num_bins)
        rows = dense[:, lo:hi].ne(0).any(dim=1).nonzero().flatten()
        f_lo, f_hi = (int(rows.min()), int(rows.max()) + 1) if rows.numel() else (0, 0)
        blocks.append((lo, hi, f_lo, f_hi, dense[f_lo:f_hi, lo:hi].contiguous().to(device)))
    return _MelBanks(dense.to(device), tuple(blocks))


def _mel_project(power: Tensor, banks: _MelBanks) -> Tensor:
    """``power [..., K >= n_fft/2] -> mel energies [..., M]`` in float32.

    CPU: block-sparse (see :class:`_MelBanks`). CUDA: one dense product in float64, because a float32 matmul may run in
    TF32 when the caller allowed it globally (``torch.backends.cuda.matmul``), a ~1e-3 relative error. For 64 x 10 s
    clips that is ~4 GFLOP of float64 (estimated well under a millisecond on an H100; not measured here).
    """
    half, num_bins = banks.dense.shape
    lead = power.shape[:-1]
    if power.device.type == "cuda":
        return torch.matmul(power[..., :half].double(), banks.dense.double()).float()
    flat = power.reshape(-1, power.shape[-1])  # [N, K] (a view when power is contiguous)
    parts = [flat[:, f_lo:f_hi] @ block if f_hi > f_lo else flat.new_zeros(flat.shape[0], hi - lo)
             for lo, hi, f_lo, f_hi, block in banks.blocks]
    return torch.cat(parts, dim=1).view(*lead, num_bins)  # [..., M]


def _power(spec: Tensor) -> Tensor:
    """``|X|^2 = re^2 + im^2`` of a complex ``[..., K]`` view, as a contiguous real ``[..., K]`` tensor."""
    sq = torch.view_as_real(spec).square()  # [..., K, 2]
    return sq[..., 0] + sq[..., 1]


def _kaldi_geometry(sample_rate: float, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int, int]:
    """``(shift, size, padded)`` in samples, computed with kaldi's own float expressions
    (torchaudio ``_get_waveform_and_window_properties``)."""
    shift = int(sample_rate * frame_shift_ms * 0.001)
    size = int(sample_rate * frame_length_ms * 0.001)
    padded = 1 if size == 0 else 2 ** (size - 1).bit_length()  # round_to_power_of_two: 400 -> 512
    return shift, size, padded


# ----------------------------------------------------------------------------------------------------------------------
# Kaldi fbank (SSAST / Audio-MAE)


def _logmel_frames(frames: Tensor, window: Tensor, banks: _MelBanks, padded: int) -> Tensor:
    """Kaldi's per-frame steps on ``frames [b, T, L]`` (a strided view) -> log-mel ``[b, T, M]``.

    Same float32 operations, in the same order, as torchaudio's ``_get_window`` + ``fbank``.
    """
    b, t, length = frames.shape
    buf = torch.empty(b, t, padded, device=frames.device, dtype=frames.dtype)  # [b, T, 512]
    buf[..., length:] = 0  # zero padding to the next power of two happens after windowing
    x = buf[..., :length]  # [b, T, L]
    torch.sub(frames, frames.mean(dim=-1, keepdim=True), out=x)  # remove_dc_offset: each frame minus its mean
    # preemphasis 0.97: x[j] -= 0.97 x[j-1], with x[-1] := x[0] (kaldi pads the frame by replicating its first sample).
    # Each right-hand side is a new tensor, so the updates read the values from before preemphasis.
    x[..., 1:] -= 0.97 * x[..., :-1]
    x[..., :1] -= 0.97 * x[..., :1]
    x *= window  # hanning: torch.hann_window(L, periodic=False)
    spec = torch.fft.rfft(buf)[..., : padded // 2]  # [b, T, 256]: the Nyquist bin has no mel weight
    power = _power(spec)  # |X|^2 (torchaudio: abs().pow(2), the same to ~1 ulp)
    energies = _mel_project(power, banks)  # [b, T, M]
    return energies.clamp_min_(_KALDI_EPS).log_()  # log(max(e, float eps))


def fbank(wave: Tensor, sample_rate: int = 16000, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
          frame_shift_ms: float = 10.0) -> Tensor:
    """Kaldi log-mel fbank of a batch: ``wave [B, n] -> [B, T, M]``, ``T = 1 + (n - 400) // 160`` at 16 kHz.

    Equals ``torchaudio.compliance.kaldi.fbank((w - w.mean())[None], htk_compat=True, sample_frequency=sample_rate,
    use_energy=False, window_type='hanning', num_mel_bins=num_mel_bins, dither=0.0, frame_shift=frame_shift_ms,
    frame_length=frame_length_ms)`` for every row ``w`` (SSAST / Audio-MAE ``_wav2fbank``). Computed in float32 on
    ``wave.device``; autocast is switched off inside.
    """
    if wave.dim() != 2:
        raise ValueError(f"fbank expects wave [B, n_samples], got shape {tuple(wave.shape)}")
    shift, size, padded = _kaldi_geometry(sample_rate, frame_length_ms, frame_shift_ms)
    batch, n = wave.shape
    if n < size:
        raise ValueError(f"clips of {n} samples are shorter than one {size}-sample frame")
    num_frames = 1 + (n - size) // shift  # snip_edges=True: only frames that fit entirely
    device = wave.device
    with torch.autocast(device.type, enabled=False):
        x = wave.float()
        # SSAST/Audio-MAE subtract the clip mean first. Reducing along dim 1 of [B, n] sums each row exactly as a
        # one-thread w.mean() does, which keeps the input of every FFT identical to torchaudio's.
        x = x - x.mean(dim=1, keepdim=True)  # [B, n], contiguous
        frames = x.as_strided((batch, num_frames, size), (n, shift, 1))  # [B, T, L] view (kaldi _get_strided)
        window = _hann(size, False, device)
        # kaldi defaults: low_freq 20 Hz, high_freq 0 -> Nyquist
        banks = _mel_banks(num_mel_bins, padded, float(sample_rate), 20.0, 0.0, device)
        block = batch if device.type != "cpu" else max(1, _CPU_BLOCK_FRAMES // num_frames)
        if block >= batch:
            return _logmel_frames(frames, window, banks, padded)
        out = torch.empty(batch, num_frames, num_mel_bins, device=device)  # [B, T, M]
        for i in range(0, batch, block):
            out[i : i + block] = _logmel_frames(frames[i : i + block], window, banks, padded)
        return out


# ----------------------------------------------------------------------------------------------------------------------
# CP-JKU mel (PaSST / EfficientAT AugmentMelSTFT)


def cpjku_mel(wave: Tensor, sample_rate: int = 32000, num_mel_bins: int = 256, win_length: int = 3072,
              hop_length: int = 500, n_fft: int = 4096, fmin: float = 0.0, fmax: Optional[float] = None,
              periodic_window: bool = True, fast_norm: bool = True) -> Tensor:
    """CP-JKU log-mel: ``wave [B, n] -> [B, T, M]`` with ``T = 1 + (n - 1) // hop_length`` (640 for 10 s at 32 kHz).

    The eval-mode path of CP-JKU's ``AugmentMelSTFT.forward`` (EfficientAT ``models/preprocess.py``, cpjku_dcase23
    ``models/mel.py``), batched:

    1. preemphasis ``conv1d(x, [[[-0.97, 1]]])``: ``y[i] = x[i+1] - 0.97 x[i]``, one sample shorter;
    2. ``torch.stft(n_fft, hop, win_length, window=hann(win_length), center=True, pad_mode='reflect')`` (the window is
       zero-padded to ``n_fft`` in the middle) and the power spectrum ``re^2 + im^2``;
    3. kaldi mel banks ``get_mel_banks(M, n_fft, sr, fmin, fmax)`` with a zero Nyquist column, a float32 matmul (here
       block-sparse on CPU and float64 on CUDA, see :func:`_mel_project`);
    4. ``log(x + 1e-5)``, then with ``fast_norm`` ``(x + 4.5) / 5``.

    Differences in the sources: EfficientAT and cpjku_dcase23 build ``hann_window(periodic=False)`` and, with ``fmax``
    unset, use ``sr // 2 - fmax_aug_range // 2`` (15 kHz for the range 2000); cpjku_dcase24 defaults to a periodic
    window and logs ``clip(x, 1e-7)``. The defaults here (periodic window, ``fmax = sr / 2``) are the configuration
    asked for; pass ``periodic_window=False, fmax=15000`` for EfficientAT's eval path. The training-time fmin/fmax
    jitter is left out; masking is :func:`spec_augment`.
    """
    if wave.dim() != 2:
        raise ValueError(f"cpjku_mel expects wave [B, n_samples], got shape {tuple(wave.shape)}")
    if wave.shape[1] - 1 <= n_fft // 2:
        raise ValueError(f"clips of {wave.shape[1]} samples are too short for center=True reflect padding "
                         f"of {n_fft // 2}")
    high = sample_rate / 2 if fmax is None else fmax
    device = wave.device
    with torch.autocast(device.type, enabled=False):
        x = wave.float()
        x = x[:, 1:] - 0.97 * x[:, :-1]  # [B, n-1] preemphasis (valid conv with [-0.97, 1])
        spec = torch.stft(x, n_fft, hop_length=hop_length, win_length=win_length,
                          window=_hann(win_length, periodic_window, device), center=True, pad_mode="reflect",
                          normalized=False, onesided=True, return_complex=True)  # [B, n_fft/2 + 1, T]
        power = _power(spec[:, : n_fft // 2].transpose(1, 2))  # [B, T, n_fft/2]: the Nyquist bin has no mel weight
        banks = _mel_banks(num_mel_bins, n_fft, float(sample_rate), float(fmin), float(high), device)
        logmel = (_mel_project(power, banks) + 1e-5).log()  # [B, T, M]
        return (logmel + 4.5) / 5.0 if fast_norm else logmel


# ----------------------------------------------------------------------------------------------------------------------
# Length, normalisation, statistics


def crop_or_pad(feats: Tensor, target_frames: int) -> Tensor:
    """``[B, T, F] -> [B, target_frames, F]``: keep the first frames or zero-pad the tail
    (SSAST ``ZeroPad2d((0, 0, 0, p))``)."""
    t = feats.shape[1]
    if t == target_frames:
        return feats
    if t > target_frames:
        return feats[:, :target_frames]
    return F.pad(feats, (0, 0, 0, target_frames - t))


def normalize(feats: Tensor, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD) -> Tensor:
    """``(x - mean) / (2 std)`` (SSAST/Audio-MAE), giving mean 0 and std 0.5 on the data the constants came from.

    Constants in :data:`NORM_STATS`: AudioSet (-4.2677393, 4.5689974), ESC-50 (-6.6268077, 5.358466),
    SpeechCommands (-6.845978, 5.5654526).
    """
    return (feats - mean) / (std * 2)


class RunningStats:
    """Mean and (population) std over every value of every batch, merged in float64 (Chan et al.'s pairwise update).

    SSAST's ``get_norm_stats.py`` instead averages per-batch means and per-batch stds; the mean agrees, its std is
    slightly lower when batch means vary.
    """

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: Tensor) -> None:
        n = x.numel()
        if n == 0:
            return
        x = x.detach().double()
        mean_b = float(x.mean())
        m2_b = float((x - mean_b).square().sum())
        total = self.count + n
        delta = mean_b - self.mean
        self.mean += delta * n / total
        self.m2 += m2_b + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else float("nan")


def measure_stats(batches: Iterable[Tensor]) -> tuple[float, float]:
    """``(mean, std)`` of all values in an iterable of log-mel tensors (any shape, e.g. ``[B, T, F]``)."""
    stats = RunningStats()
    for x in batches:
        stats.update(x)
    if stats.count == 0:
        raise ValueError("measure_stats: no values")
    return stats.mean, stats.std


# ----------------------------------------------------------------------------------------------------------------------
# Augmentation


def _uniform(shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device,
             dtype: torch.dtype) -> Tensor:
    """``U[0, 1)`` drawn from ``generator`` (on its own device, then moved) or from the global RNG of ``device``."""
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _device_generator(generator: Optional[torch.Generator], device: torch.device) -> Optional[torch.Generator]:
    """``generator`` if it lives on ``device``, else a generator on ``device`` seeded from it (large draws stay on
    the device)."""
    if generator is None or generator.device == device:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


def _axis_mask(size: int, param: int, batch: int, generator, device, dtype) -> Tensor:
    """torchaudio ``mask_along_axis_iid``: width ``floor(v)``, ``v ~ U[0, param)``; start
    ``floor(U[0, 1) * (size - v))``.

    Returns the boolean mask ``[B, size]``. Draws ``rand(B)`` for ``v``, then ``rand(B)`` for the start, as torchaudio
    does.
    """
    value = _uniform((batch,), generator, device, dtype) * param
    min_value = _uniform((batch,), generator, device, dtype) * (size - value)
    start = min_value.long()[:, None]  # [B, 1]
    end = (min_value.long() + value.long())[:, None]
    idx = torch.arange(size, device=device)
    return (idx >= start) & (idx < end)  # [B, size]


def spec_augment(feats: Tensor, freq_mask: int, time_mask: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """One frequency and one time mask per sample, filled with 0: ``[B, T, F] -> [B, T, F]``.

    Same semantics and draw order as ``TimeMasking(time_mask, iid_masks=True)(FrequencyMasking(freq_mask,
    iid_masks=True)(x))`` on the ``[B, F, T]`` layout (SSAST, Audio-MAE, CP-JKU): width uniform in ``{0..param-1}``;
    a parameter below 1 draws nothing. With the same seed a CPU ``generator`` reproduces torchaudio's masks exactly.
    torchaudio's quirk is kept: ``floor(U (size - v)) + floor(v) <= size - 1``, so the last mel bin and the last frame
    are never masked.
    """
    batch, t, f = feats.shape
    out = feats
    if freq_mask >= 1:
        mask = _axis_mask(f, freq_mask, batch, generator, feats.device, feats.dtype)  # [B, F]
        out = out.masked_fill(mask[:, None, :], 0.0)
    if time_mask >= 1:
        mask = _axis_mask(t, time_mask, batch, generator, feats.device, feats.dtype)  # [B, T]
        out = out.masked_fill(mask[:, :, None], 0.0)
    return out


def noise_and_shift(feats: Tensor, generator: Optional[torch.Generator] = None, max_shift: int = 10) -> Tensor:
    """SSAST's fine-tuning ``noise`` augmentation on normalised features ``[B, T, F]``, per sample:

    ``x + rand(T, F) * u / 10`` with ``u ~ U[0, 1)``, then ``torch.roll`` in time by ``s`` frames with
    ``s = np.random.randint(-10, 10)``, i.e. uniform in ``{-10..9}`` (numpy's upper bound is exclusive).
    """
    batch, t, f = feats.shape
    device = feats.device
    gen = _device_generator(generator, device)
    scale = _uniform((batch, 1, 1), gen, device, feats.dtype)
    noisy = feats + _uniform((batch, t, f), gen, device, feats.dtype) * scale / 10
    shift = torch.randint(-max_shift, max_shift, (batch,), generator=gen, device=device)  # [B]
    src = (torch.arange(t, device=device)[None, :] - shift[:, None]) % t  # roll: out[i] = x[(i - s) % T]
    return torch.gather(noisy, 1, src[:, :, None].expand(batch, t, f))


# ----------------------------------------------------------------------------------------------------------------------
# Config and module


@dataclass
class FeatureConfig:
    """How a batch of waveforms becomes the encoder's input ``[B, target_frames, num_mel_bins]``."""

    kind: str = "kaldi"
    """Front end: "kaldi" (SSAST/Audio-MAE fbank, 25 ms / 10 ms) or "cpjku" (PaSST/EfficientAT mel, 32 kHz only)."""
    sample_rate: int = 16000
    """Rate of the waveforms (Hz); must match the shards. "cpjku" is defined at 32000."""
    num_mel_bins: int = 128
    """Mel bins F (SSAST/Audio-MAE 128; the CP-JKU report setting 256)."""
    target_frames: int = 1024
    """Frames T after cropping / zero-padding the log-mel tail (10 s -> 998 kaldi frames, padded to 1024)."""
    norm_mean: Optional[float] = None
    """Mean of the log-mel for (x - mean) / (2 std); None: AudioSet's -4.2677393 (kaldi) or CP-JKU's -4.5 (cpjku).
    Measure your own with ``python -m shards.norm_stats SHARDS_DIR``."""
    norm_std: Optional[float] = None
    """Std of the log-mel; None: AudioSet's 4.5689974 (kaldi) or 2.5 (cpjku, making (x + 4.5) / 5)."""
    freq_mask: int = 0
    """SpecAugment frequency-mask parameter in bins (width uniform in 0..freq_mask-1; 0 = off). SSAST AudioSet: 48."""
    time_mask: int = 0
    """SpecAugment time-mask parameter in frames (0 = off). SSAST AudioSet: 192."""
    noise: bool = False
    """SSAST fine-tuning noise: + rand * rand / 10, then a roll of -10..9 frames."""

    def __post_init__(self) -> None:
        if self.kind not in ("kaldi", "cpjku"):
            raise ValueError(f"features.kind must be 'kaldi' or 'cpjku', got {self.kind!r}")
        if self.kind == "cpjku" and self.sample_rate != 32000:
            raise ValueError(f"features.kind=cpjku is defined at 32 kHz (hop 500 = 15.6 ms); "
                             f"got sample_rate={self.sample_rate}")
        if self.target_frames < 1 or self.num_mel_bins < 4:
            raise ValueError(f"features: target_frames={self.target_frames} or num_mel_bins={self.num_mel_bins} "
                             f"too small")
        default_mean, default_std = NORM_STATS["audioset" if self.kind == "kaldi" else "cpjku"]
        self.norm_mean = default_mean if self.norm_mean is None else float(self.norm_mean)
        self.norm_std = default_std if self.norm_std is None else float(self.norm_std)
        if self.norm_std <= 0:
            raise ValueError(f"features.norm_std must be positive, got {self.norm_std}")
        check("data.features.freq_mask", self.freq_mask, 0 <= self.freq_mask <= self.num_mel_bins,
              f"0..num_mel_bins ({self.num_mel_bins}) bins (0: off)")
        check("data.features.time_mask", self.time_mask, 0 <= self.time_mask <= self.target_frames,
              f"0..target_frames ({self.target_frames}) frames (0: off)")


def log_mel(wave: Tensor, cfg: FeatureConfig) -> Tensor:
    """The configured front end without normalisation: ``[B, n] -> [B, T, F]``."""
    if cfg.kind == "cpjku":
        return cpjku_mel(wave, cfg.sample_rate, cfg.num_mel_bins, fast_norm=False)
    return fbank(wave, cfg.sample_rate, cfg.num_mel_bins)


class Features(nn.Module):
    """``wave [B, n] -> [B, target_frames, F]``: log-mel, crop/pad, (train) SpecAugment, normalise, (train) noise.

    The order of SSAST's ``__getitem__``: masks fill 0 in the log-mel domain, so after normalisation masked and padded
    cells both read ``(0 - mean) / (2 std)``. Augmentation runs only in training mode; call ``.eval()`` for evaluation.
    No parameters or buffers (constants are cached per device), so ``.to(device)`` is free.
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, wave: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        cfg = self.cfg
        x = crop_or_pad(log_mel(wave, cfg), cfg.target_frames)  # [B, T, F]
        if self.training and (cfg.freq_mask or cfg.time_mask):
            x = spec_augment(x, cfg.freq_mask, cfg.time_mask, generator)
        x = normalize(x, cfg.norm_mean, cfg.norm_std)
        if self.training and cfg.noise:
            x = noise_and_shift(x, generator)
        return x

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"kind={c.kind}, sr={c.sample_rate}, mel={c.num_mel_bins}, frames={c.target_frames}, "
                f"norm=({c.norm_mean:.4f}, {c.norm_std:.4f}), masks=({c.freq_mask}, {c.time_mask}), noise={c.noise}")


def build_features(cfg: FeatureConfig) -> Features:
    return Features(cfg)
