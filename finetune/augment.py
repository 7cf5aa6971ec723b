"""Device-robust fine-tuning augmentations of CP-JKU's DCASE Task 1 systems, batched on the training device.

* :func:`freq_mixstyle`: frequency-wise MixStyle (Schmid et al., "CP-JKU submission to DCASE22: distilling knowledge
  for low-complexity convolutional neural networks from a patchout audio transformer"; ``mixstyle`` in
  ``helpers/utils.py`` of CPJKU/cpjku_dcase22 and fschmid56/cpjku_dcase23). MixStyle (Zhou et al., ICLR 2021) mixes
  the per-channel statistics of CNN feature maps; CP-JKU take them per *frequency band* of the log-mel input, where a
  recording device leaves its mark (its frequency response shifts each band's mean)::

      mu_f, sigma_f = mean, std over time (and channels) of band f          [B, 1, F]
      x' = (x - mu) / sigma * (lam sigma + (1 - lam) sigma[perm]) + (lam mu + (1 - lam) mu[perm])

  with lam ~ Beta(alpha, alpha) per clip, one random permutation ``perm`` of the batch, the whole batch mixed with
  probability p (one draw per batch, as theirs), statistics detached, ``sigma = sqrt(var + 1e-6)`` (unbiased var).
* :func:`apply_device_ir`: device impulse response (DIR) augmentation (Schmid et al., DCASE 2023 technical report;
  ``DIRAugmentDataset`` in fschmid56/cpjku_dcase23 ``datasets/dcase23.py``): with probability p a clip is convolved
  with an impulse response drawn uniformly from a collection of measured microphones (MicIRP), the full convolution
  cut to the clip's first n samples (``convolve(x, dir, 'full')[:, :n]``). Here as one batched FFT convolution on the
  device; by default the convolved clip keeps its RMS (CP-JKU keep the output level as it is).
* :func:`load_ir_bank`: the collection, read once per process (any soundfile format, recursive, resampled once).

Random numbers come from the step's ``torch.Generator`` (the loop seeds one per micro-step), so a step is reproducible
and a resumed run draws what the uninterrupted one drew; nothing is drawn when an augmentation is off.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from launch.common.errors import BadInput
from launch.runtime.loop import to_device

if TYPE_CHECKING:
    from finetune.config import DeviceIRConfig
    from shards.default import SyntheticDataConfig

MIXSTYLE_EPS = 1e-6
"""Added to the variance before the square root (CP-JKU's ``eps``)."""


# ----------------------------------------------------------------------------------------------------------------------
# Frequency-wise MixStyle


def beta_sample(alpha: float, n: int, generator: torch.Generator) -> Tensor:
    """``n`` draws of Beta(alpha, alpha) [n] float32 from ``generator`` (torch's Beta sampler takes no generator, so
    numpy's, seeded by one draw of ``generator``)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n).astype(np.float32))


def band_statistics(x: Tensor, freq_dim: int = -1, eps: float = MIXSTYLE_EPS) -> tuple[Tensor, Tensor]:
    """Per clip and frequency band: mean and ``sqrt(var + eps)`` over every other axis but the batch (time, channels).
    Both keep ``x``'s rank with size 1 on the reduced axes, e.g. ``[B, T, F] -> [B, 1, F]``."""
    freq_dim = freq_dim % x.dim()
    dims = [d for d in range(1, x.dim()) if d != freq_dim]
    mu = x.mean(dim=dims, keepdim=True)
    sigma = (x.var(dim=dims, keepdim=True) + eps).sqrt()  # unbiased, as CP-JKU's x.var
    return mu, sigma


def mix_band_statistics(x: Tensor, lam: Tensor, perm: Tensor, freq_dim: int = -1, eps: float = MIXSTYLE_EPS
                        ) -> Tensor:
    """Frequency-wise MixStyle with given mixing weights ``lam`` [B] and partners ``perm`` [B] (indices into the batch):
    each band is normalised by its clip's statistics and re-scaled with the mix of its and its partner's."""
    mu, sigma = band_statistics(x, freq_dim, eps)
    mu, sigma = mu.detach(), sigma.detach()  # no gradient through the statistics (MixStyle)
    lam = lam.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
    perm = perm.to(x.device)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sigma_mix = lam * sigma + (1 - lam) * sigma[perm]
    return (x - mu) / sigma * sigma_mix + mu_mix


def freq_mixstyle(x: Tensor, p: float, alpha: float, generator: torch.Generator, freq_dim: int = -1,
                  eps: float = MIXSTYLE_EPS) -> Tensor:
    """CP-JKU's frequency-wise MixStyle of a batch of log-mel features (``[B, T, F]`` here, ``[B, C, F, T]`` theirs:
    ``freq_dim`` says which axis holds the bands): with probability ``p`` the whole batch is mixed with a random
    permutation of itself, lam ~ Beta(alpha, alpha) per clip. ``p = 0``: ``x`` itself and no draw."""
    if p <= 0 or x.shape[0] < 2:
        return x
    if not torch.rand((), generator=generator) < p:
        return x
    lam = beta_sample(alpha, x.shape[0], generator)
    perm = torch.randperm(x.shape[0], generator=generator)
    return mix_band_statistics(x, lam, perm, freq_dim, eps)


# ----------------------------------------------------------------------------------------------------------------------
# Device impulse responses


def convolve_with_ir(wave: Tensor, ir: Tensor) -> Tensor:
    """Linear convolution of each clip ``wave`` [B, n] with its impulse response ``ir`` [B, L] (zero-padded IRs are
    fine), cut to the first n samples, as CP-JKU's ``convolve(x, dir, 'full')[:, :n]``; one batched real FFT."""
    n, length = wave.shape[-1], ir.shape[-1]
    size = 1 << (n + length - 2).bit_length()  # >= n + L - 1: no circular wrap-around
    spectrum = torch.fft.rfft(wave.float(), size) * torch.fft.rfft(ir.to(wave.device).float(), size)
    return torch.fft.irfft(spectrum, size)[..., :n].to(wave.dtype)


def draw_device_irs(batch: int, num_irs: int, p: float, generator: torch.Generator,
                    eligible: Optional[Tensor] = None) -> Tensor:
    """Which impulse response each clip gets: [B] int64 index into the collection, -1 for none. Every clip draws
    (apply?, which) whatever it gets, so the draws of one clip do not depend on the others; ``eligible`` [B] bool
    (e.g. recorded by device a) limits who can get one."""
    if p <= 0 or num_irs == 0:
        return torch.full((batch,), -1, dtype=torch.long)
    apply = torch.rand(batch, generator=generator) < p
    which = torch.randint(0, num_irs, (batch,), generator=generator)
    if eligible is not None:
        apply &= eligible.cpu()
    return torch.where(apply, which, torch.full_like(which, -1))


def rms(wave: Tensor) -> Tensor:
    """Root mean square of each clip [B, n] -> [B, 1]."""
    return wave.float().pow(2).mean(-1, keepdim=True).sqrt()


@dataclass
class IRBank:
    """A collection of impulse responses at one sample rate, zero-padded to the longest."""

    names: list[str]
    """Each IR's path relative to the folder."""
    irs: Tensor
    """[K, L] float32, row k zero beyond its own length."""
    rate: int
    folder: str

    def to(self, device: torch.device | str) -> "IRBank":
        return IRBank(self.names, self.irs.to(device), self.rate, self.folder)


def apply_device_ir(wave: Tensor, bank: IRBank, p: float, generator: torch.Generator,
                    eligible: Optional[Tensor] = None, keep_level: bool = True) -> tuple[Tensor, Tensor]:
    """CP-JKU's DIR augmentation of a batch ``wave`` [B, n] (on any device): each (eligible) clip is convolved with a
    random impulse response of ``bank`` with probability ``p``; ``keep_level`` restores each convolved clip's RMS.
    Returns ``(wave, chosen)``, ``chosen`` [B] as :func:`draw_device_irs`."""
    chosen = draw_device_irs(wave.shape[0], bank.irs.shape[0], p, generator, eligible)
    rows = torch.nonzero(chosen >= 0).flatten()
    if not len(rows):
        return wave, chosen
    rows_dev = to_device(rows, wave.device)  # drawn on the host: queued, not waited for
    clips = wave.index_select(0, rows_dev)
    out = convolve_with_ir(clips, bank.irs.index_select(0, to_device(chosen[rows], bank.irs.device)))
    if keep_level:
        out = out * (rms(clips) / rms(out).clamp_min(1e-8)).to(out.dtype)
    wave = wave.clone()
    wave[rows_dev] = out
    return wave, chosen


AUDIO_SUFFIXES = (frozenset(f".{ext.lower()}" for ext in sf.available_formats()) | {".aif", ".oga", ".opus"}) - {".raw"}
"""File name endings soundfile can read by themselves (wav, flac, ogg, aiff, mp3 ... as this libsndfile has them; not
headerless raw)."""


def find_ir_files(folder: Path, key: str) -> list[Path]:
    """The audio files under ``folder`` (recursive, sorted; hidden files and other files such as READMEs skipped)."""
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise BadInput(f"{key}={folder}: {what}; expected a folder of impulse response files (wav, flac ...)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise BadInput(f"{key}={folder}: holds no audio file (searched recursively for wav, flac, ogg, aiff ...); "
                       "expected impulse responses such as MicIRP's wav files")
    return files


def read_ir(path: Path, rate: int, max_seconds: float, key: str) -> np.ndarray:
    """One impulse response as float32 mono at ``rate``; any problem is one :class:`BadInput` line naming the file."""
    from shards.audio import UnusableAudio, load_mono

    try:
        ir, orig = load_mono(path, rate)
    except UnusableAudio as e:
        raise BadInput(f"{key}: {path}: {e}; expected a readable impulse response file") from None
    seconds = len(ir) / rate
    if seconds > max_seconds:
        raise BadInput(f"{key}: {path}: impulse response of {seconds:.2f} s is longer than "
                       f"augment.device_ir.max_seconds={max_seconds} (a device IR lasts milliseconds; raise the limit "
                       "if this is intended)")
    if not np.abs(ir).max() > 0:
        raise BadInput(f"{key}: {path}: the impulse response is all zeros")
    return ir


@functools.lru_cache(maxsize=4)
def _cached_bank(folder: str, rate: int, max_seconds: float, key: str) -> IRBank:
    root = Path(folder)
    files = find_ir_files(root, key)
    irs = [read_ir(p, rate, max_seconds, key) for p in files]
    padded = np.zeros((len(irs), max(len(h) for h in irs)), np.float32)
    for row, h in zip(padded, irs):
        row[:len(h)] = h
    return IRBank([str(p.relative_to(root)) for p in files], torch.from_numpy(padded), rate, folder)


def load_ir_bank(folder: str | Path, rate: int, max_seconds: float = 2.0,
                 key: str = "augment.device_ir.path") -> IRBank:
    """Every impulse response under ``folder``, resampled once to ``rate`` and kept in memory (a process reads a
    folder once, however many runs or rounds use it). Raises :class:`BadInput` naming ``key`` and the file."""
    return _cached_bank(str(Path(folder).resolve()), int(rate), float(max_seconds), key)


def eligible_clips(meta: Sequence[dict], devices: Optional[Sequence[str]]) -> Optional[Tensor]:
    """[B] bool: clips whose ``meta["device"]`` is in ``devices`` (case-insensitive); None when every clip is."""
    if devices is None:
        return None
    wanted = {str(d).lower() for d in devices}
    return torch.tensor([str(m.get("device", "")).lower() in wanted for m in meta], dtype=torch.bool)


def build_ir_bank(cfg: DeviceIRConfig, synthetic: SyntheticDataConfig, rate: int) -> Optional[IRBank]:
    """The collection ``augment.device_ir`` names, at the data's ``rate``: None when off (empty path or p = 0);
    "synthetic" is the embedded corpus's stand-in (written now if missing, without building the shards)."""
    if not cfg.path or cfg.p <= 0:
        return None
    if cfg.path == "synthetic":
        from shards.default import ensure_device_irs

        return load_ir_bank(ensure_device_irs(synthetic, rate), rate, cfg.max_seconds)
    return load_ir_bank(Path(cfg.path).expanduser(), rate, cfg.max_seconds)
