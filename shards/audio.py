"""Audio in and out of shards: decode (soundfile), mono, resample once, checks, FLAC bytes."""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


class UnusableAudio(Exception):
    """A clip that cannot go into a shard (unreadable, empty, non-finite); the builder skips and lists it."""


SAMPLE_RATES = (8000, 192000)
"""Accepted sample rates in Hz: telephone speech to high-resolution recorders (FLAC itself stops at 655350)."""


def read(path: str | Path | io.BytesIO) -> tuple[np.ndarray, int]:
    """Decode any soundfile format (wav incl. 24-bit PCM, flac, ogg, mp3) to float32 ``[n_samples, n_channels]``."""
    try:
        x, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises LibsndfileError / RuntimeError / TypeError depending on the damage
        raise UnusableAudio(f"unreadable: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}")
    return x, int(sr)


def wav_shortfall(path: str | Path) -> tuple[int, int] | None:
    """``(frames the header declares, frames present)`` of a RIFF/WAVE file whose data chunk is cut short, else None
    (whole, not a WAV, or a streamed WAV whose header left the size open).

    libsndfile quietly shrinks such a file's frame count to what is there, so a download cut mid-file would pass as a
    short clip; the declared size in the ``data`` chunk header is the only witness.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size, pos, block_align = os.fstat(f.fileno()).st_size, 12, 0
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"fmt ":
                fmt = f.read(min(length, 16))
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else 0
            elif chunk == b"data":
                present = size - (pos + 8)
                if not block_align or length in (0, 0xFFFFFFFF) or present >= length:
                    return None
                return length // block_align, present // block_align
            pos += 8 + length + (length & 1)  # chunks are padded to an even size
    return None


def check_whole(path: str | Path) -> None:
    """Raise :class:`UnusableAudio` for a file shorter than its header says (a damaged file, not a short clip)."""
    try:
        shortfall = wav_shortfall(path)
    except OSError:
        return  # unreadable: read() says so in its own words
    if shortfall:
        raise UnusableAudio(f"truncated: header says {shortfall[0]} frames, file has {shortfall[1]}")


def to_mono(x: np.ndarray) -> np.ndarray:
    """``[n, ch]`` -> ``[n]`` by averaging channels (how TAU's device-A binaural recordings were made mono)."""
    return x.mean(axis=1, dtype=np.float32) if x.ndim == 2 else x.astype(np.float32, copy=False)


def resample(x: np.ndarray, orig_rate: int, rate: int) -> np.ndarray:
    """Band-limited sinc resampling (torchaudio's default windowed-sinc); identity when rates match."""
    if orig_rate == rate:
        return x
    y = AF.resample(torch.from_numpy(np.ascontiguousarray(x)), orig_rate, rate)
    return y.numpy()


def check(x: np.ndarray) -> None:
    """Raise :class:`UnusableAudio` for empty or non-finite audio."""
    if x.size == 0:
        raise UnusableAudio("empty: zero samples")
    if not np.isfinite(x).all():
        raise UnusableAudio("non-finite samples (NaN or Inf)")


def load_mono(path: str | Path, rate: int) -> tuple[np.ndarray, int]:
    """Decode, check, mix to mono and resample once to ``rate``. Returns ``(samples [n] float32, original_rate)``."""
    check_whole(path)
    x, orig = read(path)
    check(x)
    x = resample(to_mono(x), orig, rate)
    check(x)
    return x, orig


def encode_flac(x: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    """FLAC bytes of mono ``x`` (values are clipped to [-1, 1]; libsndfile's encoder is deterministic)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), rate, format="FLAC", subtype=subtype)
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """Shard bytes -> ``(samples [n] float32, rate)``."""
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return (x if x.ndim == 1 else x.mean(axis=1)), int(sr)
