"""Sound building blocks of the synthetic corpus (:mod:`shards.sources.synthetic`): textures, events, rooms.

A clip is a *bed* of textures plus *foreground* events:

* a **texture** is Gaussian noise shaped in the frequency domain (a band with dB/octave roll-offs, optionally a comb of
  harmonics) and multiplied by a slow envelope drawn at a 100 Hz control rate (vehicles passing, syllables, gusts).
  All textures of a clip are one batched inverse FFT.
* an **event** is a kernel from a fixed bank (footstep, chirp, rail clank, ...) placed at onsets drawn by a pattern
  (Poisson, walkers' steps, typing bursts, bird trills, bogie pairs, musical beats). All placements of one kind are one
  ``np.bincount``.

The banks are made once per process and sample rate, each from its own fixed seed: they are the corpus's palette, the
same for every corpus seed (the seed picks clips, not sounds), and independent of the order they are first used in.
Nothing here loops over samples in Python; the only Python loops run over kernels of a bank (once) or rows of a clip.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

CTRL_HZ = 100.0  # envelope control rate: syllables (4 Hz) and gusts are slow, so 10 ms steps are plenty


@dataclass(frozen=True)
class Grid:
    """The time/frequency grid of one clip length at one rate (cached: clips of a corpus share it)."""

    rate: int
    n: int
    octs: np.ndarray  # [F] octaves re 1 kHz of each rfft bin (floored at 10 Hz so that DC is finite)
    f: np.ndarray  # [F] Hz
    hop: int  # samples per control step
    m: int  # control points covering the clip (one more than steps, for interpolation)

    @property
    def seconds(self) -> float:
        return self.n / self.rate


@functools.lru_cache(maxsize=32)
def grid(rate: int, n: int) -> Grid:
    f = np.fft.rfftfreq(n, 1.0 / rate).astype(np.float32)
    hop = max(1, round(rate / CTRL_HZ))
    return Grid(rate, n, _octaves(f), f, hop, -(-n // hop) + 1)


def _octaves(f: np.ndarray) -> np.ndarray:
    return np.log2(np.maximum(f, 10.0) / 1000.0).astype(np.float32)


@dataclass(frozen=True)
class Local:
    """What the city changes inside a texture: mains hum and the pitch of the crowd's talk."""

    hum: float = 50.0
    """Mains frequency (Hz) heard in ventilation hum."""
    pitch: float = 1.0
    """Scale of the babble bands (language and speaker population)."""


# ----------------------------------------------------------------------------------------------------------------------
# Spectral shapes (magnitudes on the rfft bins)


def band(octs: np.ndarray, lo: float, hi: float, slope_lo: float = 12.0, slope_hi: float = 12.0,
         tilt: float = 0.0) -> np.ndarray:
    """Magnitude [F]: 1 between ``lo`` and ``hi`` Hz, falling ``slope_lo`` / ``slope_hi`` dB per octave outside,
    times a ``tilt`` of dB per octave around 1 kHz (-3: pink)."""
    db = slope_lo * np.minimum(0.0, octs - np.log2(lo / 1000)) - slope_hi * np.maximum(0.0, octs - np.log2(hi / 1000))
    return 10.0 ** ((db + tilt * octs) / 20)


@functools.lru_cache(maxsize=128)
def _cached_band(rate: int, n: int, *args) -> np.ndarray:
    out = band(grid(rate, n).octs, *args).astype(np.float32)
    out.flags.writeable = False  # shared by every clip of this length
    return out


def shape(g: Grid, lo: float, hi: float, slope_lo: float = 12.0, slope_hi: float = 12.0, tilt: float = 0.0
          ) -> np.ndarray:
    """:func:`band` on the clip's grid, cached: textures reuse a few fixed bands in every clip (read-only)."""
    return _cached_band(g.rate, g.n, lo, hi, slope_lo, slope_hi, tilt)


@functools.lru_cache(maxsize=16)
def _hum(rate: int, n: int, mains: float) -> np.ndarray:
    g = grid(rate, n)
    return comb(g.f, mains, 0.5) * shape(g, mains * 0.9, 400, 24, 18)


def comb(f: np.ndarray, f0: float, width: float) -> np.ndarray:
    """Harmonic comb [F]: Gaussian-like peaks of height 1 at multiples of ``f0`` Hz, each ``width`` Hz wide (sigma).

    ``cos(pi f / f0) ** 2p`` peaks at every harmonic and is ``exp(-p (pi d / f0)**2)`` near one, so p sets the width.
    """
    p = 0.5 * (f0 / (np.pi * width)) ** 2
    return np.abs(np.cos(np.pi * f / f0)) ** (2 * p)


# ----------------------------------------------------------------------------------------------------------------------
# Envelopes at the control rate ([rows, m] or [m], linear gain around 1)


@functools.lru_cache(maxsize=64)
def _lowpass(size: int, step: float, cutoff: float) -> np.ndarray:
    """Gaussian low-pass gains [size // 2 + 1] for ``size`` control points ``step`` s apart, scaled so that white
    noise comes out with unit variance (by the filter's expected gain, not per clip: a 0.2 Hz drift is nearly constant
    within one second and must stay small there rather than be blown up)."""
    gain = np.exp(-0.5 * (np.fft.rfftfreq(size, step) / cutoff) ** 2)
    return gain / np.sqrt((2 * np.sum(gain**2) - gain[0] ** 2) / size)


def smooth(rng: np.random.Generator, g: Grid, rows: int, cutoff: float) -> np.ndarray:
    """[rows, m] Gaussian noise low-passed at ``cutoff`` Hz, unit variance."""
    size = -(-g.m // 16) * 16  # m is often prime (101 for one second), a slow FFT length: filter a bit more, crop
    noise = rng.standard_normal((rows, size))
    return np.fft.irfft(np.fft.rfft(noise, axis=-1) * _lowpass(size, g.hop / g.rate, cutoff), size, axis=-1)[:, : g.m]


def drift(rng, g, depth_db: float, cutoff: float = 0.5) -> np.ndarray:
    """Slow level wander of ``depth_db`` dB (standard deviation)."""
    return 10.0 ** (depth_db * smooth(rng, g, 1, cutoff)[0] / 20)


def passby(rng, g, per_second: float) -> np.ndarray:
    """Road traffic: a distant floor plus one bump per passing vehicle (Poisson arrivals, 0.7-2.5 s wide)."""
    k = rng.poisson(per_second * (g.seconds + 6))
    t0, width, height = rng.uniform(-3, g.seconds + 3, k), rng.uniform(0.7, 2.5, k), 10 ** (rng.uniform(-12, 0, k) / 20)
    t = np.arange(g.m) * (g.hop / g.rate)
    return 0.25 + (height[:, None] / (1 + ((t - t0[:, None]) / width[:, None]) ** 2)).sum(0)


def syllables(rng, g, talkers: float) -> np.ndarray:
    """Babble [2, m]: per talker, voiced (low band) and fricative (high band) energy alternating at ~4 syllables/s.

    Few talkers give deep modulation, a crowd a steady murmur; both rows average about 1 (E relu(Z+.3) = .566).
    """
    s = smooth(rng, g, max(1, int(round(talkers))), 4.0)
    return np.stack([np.maximum(s + 0.3, 0).mean(0) / 0.566, np.maximum(-s - 0.6, 0).mean(0) / 0.169])


def gusts(rng, g, depth_db: float) -> np.ndarray:
    """Wind gusts: a log-normal level wander of ``depth_db`` dB below 0.6 Hz."""
    return drift(rng, g, depth_db, 0.6)


def crackle(rng, g, depth_db: float) -> np.ndarray:
    """Rain: an independent random level every 10 ms (``depth_db`` dB spread), heard as crackle."""
    return 10.0 ** (depth_db * rng.standard_normal(g.m) / 20)


def upsample(env: np.ndarray, g: Grid) -> np.ndarray:
    """[R, m] control-rate envelope -> [R, n] by linear interpolation (``hop`` samples per control step)."""
    env = env.astype(np.float32)
    w = np.arange(g.hop, dtype=np.float32) / g.hop
    return (env[:, :-1, None] * (1 - w) + env[:, 1:, None] * w).reshape(len(env), -1)[:, : g.n]


# ----------------------------------------------------------------------------------------------------------------------
# Textures: (rng, grid, activity, local) -> (shapes [R, F], envelopes [R, m] or steady gains [R, 1]); each row becomes
# unit-RMS noise times its envelope


def _rumble(rng, g, a, local):  # road traffic; a = vehicles per second
    return shape(g, 25, 220, 12, 10)[None], passby(rng, g, a)[None]


def _engine(rng, g, a, local):  # combustion engine (bus, car); a = firing frequency in Hz
    return (shape(g, 20, 700, 6, 12) * (0.1 + comb(g.f, a, a / 12)))[None], drift(rng, g, 2.0, 1.0)[None]


def _motor(rng, g, a, local):  # electric traction motor whine (tram, metro); a = whine frequency in Hz
    return (band(g.octs, 0.8 * a, 3.5 * a, 24, 18) * comb(g.f, a, 4.0))[None], drift(rng, g, 4.0, 1.5)[None]


def _babble(rng, g, a, local):  # crowd talk; a = number of talkers
    p = local.pitch
    shapes = np.stack([shape(g, 180 * p, 900 * p, 12, 15), shape(g, 1800 * p, 5000 * p, 12, 12)])
    return shapes, syllables(rng, g, a) * np.array([[1.0], [0.35]])


def _wind(rng, g, a, local):  # wind on the microphone and in trees; a = gust depth in dB
    return shape(g, 15, 350, 6, 9)[None], gusts(rng, g, a)[None]


def _rain(rng, g, a, local):  # rain on surfaces (also a fountain); a = crackle depth in dB
    return shape(g, 1200, 9000, 6, 6)[None], crackle(rng, g, a)[None]


def _hvac(rng, g, a, local):  # ventilation: air noise plus mains hum harmonics; a = hum level in dB re the air
    return np.stack([shape(g, 80, 1500, 6, 9), _hum(g.rate, g.n, local.hum)]), np.array([[1.0], [10 ** (a / 20)]])


def _rolling(rng, g, a, local):  # tyres on asphalt, wheels on rails, trolleys; a = swell depth in dB
    return shape(g, 300, 2500, 9, 12)[None], drift(rng, g, a, 1.5)[None]


def _room(rng, g, a, local):  # the place's own pink background, everywhere; a unused
    return shape(g, 30, 9000, 6, 12, tilt=-3)[None], np.ones((1, 1))


TEXTURES: dict[str, Callable] = {
    "rumble": _rumble, "engine": _engine, "motor": _motor, "babble": _babble, "wind": _wind, "rain": _rain,
    "hvac": _hvac, "rolling": _rolling, "room": _room,
}


def render_textures(rng, g: Grid, parts: list[tuple[str, float, float]], local: Local) -> np.ndarray:
    """The bed [n]: ``parts`` are (texture, level dB, activity); each row unit-RMS noise times its envelope."""
    moving, steady = [], []
    for name, level, activity in parts:
        s, e = TEXTURES[name](rng, g, activity, local)
        s = s / (np.sqrt((2 * (s**2).sum(1, keepdims=True) - s[:, :1] ** 2) / g.n) + 1e-12)  # unit RMS (Parseval)
        e = e * 10 ** (level / 20)
        for row, env in zip(s, e):
            (steady if env.size == 1 else moving).append((row, env))
    # Steady rows share one noise: independent Gaussian noises add up to one whose power spectrum is their sum.
    rows = [r for r, _ in moving] + ([np.sqrt(sum((r * e[0]) ** 2 for r, e in steady))] if steady else [])
    envs = [e for _, e in moving] + ([np.ones(g.m)] if steady else [])
    s = np.stack(rows).astype(np.float32)
    x = np.fft.irfft(white(rng, s.shape) * s, g.n, axis=-1, norm="ortho")  # [R, n]
    return np.einsum("rn,rn->n", x, upsample(np.stack(envs), g))


def white(rng, shape: tuple[int, ...]) -> np.ndarray:
    """Complex64 white spectrum with E|z|^2 = 1: real and imaginary parts uniform, each of variance 1/2.

    Uniform draws cost a third of Gaussian ones, and every time sample of the inverse FFT sums thousands of independent
    bins, so the noise is Gaussian all the same (central limit theorem).
    """
    u = rng.random((2, *shape), dtype=np.float32) - np.float32(0.5)
    return (u[0] + 1j * u[1]) * np.float32(np.sqrt(6.0))  # var(U(-.5, .5)) = 1/12; * 6 -> 1/2


# ----------------------------------------------------------------------------------------------------------------------
# Event kernels: (rng, rate) -> list of 1-D arrays; made once per rate, then peak-normalised into a [V, L] bank


def _t(seconds: float, rate: int) -> np.ndarray:
    return np.arange(int(seconds * rate)) / rate


def _filter(x: np.ndarray, rate: int, lo: float, hi: float, slope_lo: float = 12.0, slope_hi: float = 12.0):
    """``x`` limited to ``[lo, hi]`` Hz by :func:`band` in the FFT domain (for making kernels once, not per clip)."""
    return np.fft.irfft(np.fft.rfft(x) * band(_octaves(np.fft.rfftfreq(x.size, 1 / rate)), lo, hi, slope_lo, slope_hi),
                        x.size)


def _noise(rng, n: int, rate: int, lo: float, hi: float) -> np.ndarray:
    """``n`` samples of noise limited to ``[lo, hi]`` Hz."""
    return _filter(rng.standard_normal(n), rate, lo, hi)


def _tones(t, rate, freqs, amps, taus) -> np.ndarray:
    """Decaying partials ``sum a sin(2 pi f t) exp(-t / tau)``; partials above 0.45 rate are dropped (no aliasing)."""
    f, a, tau = (np.atleast_1d(np.asarray(v, float)) for v in (freqs, amps, taus))
    f, a, tau = np.broadcast_arrays(f, a, tau)
    keep = f < 0.45 * rate
    f, a, tau = f[keep, None], a[keep, None], tau[keep, None]
    return (a * np.sin(2 * np.pi * f * t) * np.exp(-t / tau)).sum(0) if len(f) else np.zeros_like(t)


def _attack(t, seconds: float = 0.002):
    return 1 - np.exp(-t / seconds)


def _footsteps(rng, rate):
    out = []
    for _ in range(12):  # heel thump, plus a toe/heel click whose strength is the shoe (sneaker .. heels)
        t = _t(0.16, rate)
        heel = _noise(rng, t.size, rate, 60, 400) * np.exp(-t / 0.018) * _attack(t)
        click = _noise(rng, t.size, rate, 1500, 6000) * np.exp(-t / 0.004) * rng.uniform(0.1, 0.9)
        out.append(heel + np.roll(click, int(rng.uniform(0.0, 0.03) * rate)))
    return out


def _speech(rng, rate: int, seconds: float, n_syllables: int) -> np.ndarray:
    """One talker: a glottal pulse train with gliding f0 through per-syllable vowel formants, plus fricatives."""
    t = _t(seconds, rate)
    f = np.fft.rfftfreq(t.size, 1 / rate)
    f0 = rng.uniform(90, 250) * 2 ** (0.15 * np.sin(2 * np.pi * rng.uniform(0.4, 1.5) * t + rng.uniform(0, 6.3)))
    pulses = np.diff(np.floor(np.cumsum(f0) / rate), prepend=0.0)
    glottal = band(_octaves(f), 80, 500, 12, 12)
    x = np.zeros_like(t)
    for k in range(n_syllables):
        start, dur = (k + rng.uniform(0, 0.25)) * seconds / n_syllables, rng.uniform(0.5, 0.75) * seconds / n_syllables
        win = np.where((t >= start) & (t < start + dur), np.sin(np.pi * (t - start) / dur) ** 2, 0.0)
        formants = sum(1 / (1 + ((f - fc) / bw) ** 2) for fc, bw in
                       ((rng.uniform(300, 850), 80), (rng.uniform(850, 2400), 120), (rng.uniform(2400, 3200), 160)))
        x += np.fft.irfft(np.fft.rfft(pulses * win) * glottal * formants, t.size)
        if rng.random() < 0.5:  # a fricative after the vowel
            fric = np.where((t >= start + dur) & (t < start + dur + 0.06), 1.0, 0.0)
            x += _noise(rng, t.size, rate, 2500, 7000) * fric * 0.05
    return x


def _voices(rng, rate):
    return [_speech(rng, rate, 0.9, int(rng.integers(2, 5))) for _ in range(16)]


def _bell(t, rate, f0):
    return _tones(t, rate, f0 * np.array([1, 2.0, 3.0, 4.16, 5.43]), [1, 0.5, 0.25, 0.15, 0.08],
                  [0.6, 0.4, 0.25, 0.15, 0.1]) * _attack(t)


_CHIMES = [(659, 523), (784, 659), (1047, 880), (880, 698), (587, 494), (1319, 1047), (1568, 1568), (1760, 1760)]


def _chimes(rng, rate):  # ding-dong of public address systems; the last two are a tram's / bus's double ding
    out = []
    for hi, lo in _CHIMES:
        t = _t(1.3, rate)
        gap = 0.15 if hi == lo else 0.45
        out.append(_bell(t, rate, hi) + np.concatenate([np.zeros(int(gap * rate)), _bell(t, rate, lo)])[: t.size])
    return out


def _announcements(rng, rate):  # chime, then a voice through a band-limited, slightly overdriven PA
    out, chimes = [], _chimes(rng, rate)
    for v in range(6):
        chime = chimes[v][: int(0.9 * rate)]
        voice = _filter(_speech(rng, rate, 1.8, 6), rate, 300, 3400, 18, 24)
        voice = np.tanh(2 * voice / np.abs(voice).max())
        out.append(np.concatenate([chime / np.abs(chime).max(), 0.7 * voice]))
    return out


def _chirps(rng, rate):  # bird syllables: a 40-150 ms frequency sweep with a weak second harmonic
    out = []
    for _ in range(16):
        d = rng.uniform(0.04, 0.15)
        t = _t(d, rate)
        f1 = rng.uniform(2000, 5500)
        f = np.minimum(f1 + f1 * (rng.uniform(0.6, 1.6) - 1) * (t / d) ** rng.uniform(0.5, 2), 0.45 * rate)
        ph = 2 * np.pi * np.cumsum(f) / rate
        out.append((np.sin(ph) + np.where(2 * f < 0.45 * rate, 0.25, 0) * np.sin(2 * ph)) * np.sin(np.pi * t / d) ** 2)
    return out


SCALE = [0, 2, 4, 5, 7, 9, 11]  # major scale: notes are bank variants, 3 octaves from C3


def _notes(rng, rate):  # plucked harmonic tones, like a guitar or a harp
    t = _t(0.8, rate)
    k = np.arange(1, 11)
    return [_tones(t, rate, 440 * 2 ** ((48 + 12 * o + s - 69) / 12) * k, k**-1.2, 0.6 / k**0.6) * _attack(t, 0.004)
            for o in range(3) for s in SCALE]


def _clanks(rng, rate):  # a wheel hitting a rail joint: a click plus a few metallic modes
    t = _t(0.12, rate)
    return [_noise(rng, t.size, rate, 200, 6000) * np.exp(-t / 0.004)
            + _tones(t, rate, rng.uniform(700, 3500, 3), rng.uniform(0.1, 0.4, 3), rng.uniform(0.01, 0.04, 3))
            for _ in range(8)]


def _squeals(rng, rate):  # brake or wheel squeal: a tone with vibrato, swelling and fading
    out = []
    for _ in range(6):
        t = _t(1.0, rate)
        f = rng.uniform(1800, 4500) * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(5, 8) * t))
        ph = 2 * np.pi * np.cumsum(f) / rate
        out.append((np.sin(ph) + np.where(2 * f < 0.45 * rate, 0.3, 0) * np.sin(2 * ph)) * np.sin(np.pi * t) ** 0.7)
    return out


def _doors(rng, rate):  # a door slam: low thump, panel modes and the latch click
    t = _t(0.45, rate)
    return [_noise(rng, t.size, rate, 40, 300) * np.exp(-t / 0.05) * _attack(t)
            + _tones(t, rate, rng.uniform(100, 500, 3), 0.02, 0.08)
            + 0.4 * _noise(rng, t.size, rate, 2000, 6000) * np.exp(-t / 0.003) for _ in range(6)]


def _clicks(rng, rate):  # keyboard keys
    t = _t(0.03, rate)
    return [_noise(rng, t.size, rate, 1500, 7000) * np.exp(-t / 0.003)
            + _tones(t, rate, rng.uniform(2000, 4500), 0.02, 0.006) for _ in range(8)]


def _clinks(rng, rate):  # glasses, cups and cutlery
    t = _t(0.4, rate)
    return [_tones(t, rate, rng.uniform(1800, 3500) * np.array([1, 2.76, 5.4]), [1, 0.5, 0.3], rng.uniform(0.08, 0.25))
            for _ in range(8)]


def _horns(rng, rate):  # car horns: two square-ish tones a third apart, gated
    out = []
    for lo, hi in [(420, 500), (350, 440), (400, 480), (330, 415)]:
        t = _t(0.6, rate)
        odd = np.arange(1, 16, 2)
        gate = np.clip(np.minimum(t / 0.015, (rng.uniform(0.25, 0.55) - t) / 0.05), 0, 1)
        out.append((_tones(t, rate, lo * odd, 1 / odd, 1e9) + _tones(t, rate, hi * odd, 1 / odd, 1e9)) * gate)
    return out


def _hisses(rng, rate):  # pneumatic doors of buses and trams
    t = _t(0.7, rate)
    return [_noise(rng, t.size, rate, 1500, 8000) * _attack(t, 0.01) * np.exp(-t / 0.2) for _ in range(4)]


def _drops(rng, rate):  # single rain drops
    t = _t(0.012, rate)
    return [_noise(rng, t.size, rate, 2500, 8000) * np.exp(-t / 0.0015) for _ in range(8)]


# ----------------------------------------------------------------------------------------------------------------------
# Onset patterns: (rng, activity, clip seconds, kernel seconds, variants) -> (times s, variant ids, gains dB)


def poisson(rng, a, T, span, V):
    """Independent events, ``a`` per second (those that started up to one kernel before the clip are heard too)."""
    k = rng.poisson(a * (T + span))
    return rng.uniform(-span, T, k), rng.integers(0, V, k), rng.uniform(-4, 4, k)


def steps(rng, a, T, span, V):
    """Footsteps of about ``a`` walkers, each every 0.45-0.65 s with its own shoes and distance."""
    w = rng.poisson(a)
    period, base, gain = rng.uniform(0.45, 0.65, w), rng.integers(0, V, w), rng.uniform(-12, 0, w)
    k = np.arange(int((T + span) / 0.45) + 2)
    t = -span + rng.uniform(0, 1, w)[:, None] * period[:, None] + period[:, None] * k + rng.normal(0, 0.01, (w, k.size))
    var = (base[:, None] + k % 2) % V  # left foot, right foot
    return t.ravel(), var.ravel(), (gain[:, None] + rng.normal(0, 1.5, t.shape)).ravel()


def bursts(rng, a, T, span, V):
    """Typing: bursts at ``a`` per second, each of 3-12 keystrokes about 0.16 s apart."""
    b = rng.poisson(a * (T + 2))
    t = rng.uniform(-2, T, b)[:, None] + np.cumsum(rng.exponential(0.12, (b, 12)) + 0.04, axis=1)
    keep = np.arange(12) < rng.integers(3, 13, b)[:, None]
    return t[keep], rng.integers(0, V, t.shape)[keep], rng.uniform(-6, 0, t.shape)[keep]


def trills(rng, a, T, span, V):
    """Bird song: trills at ``a`` per second, each 3-8 repeats of one chirp 0.07-0.16 s apart."""
    b = rng.poisson(a * (T + 1.5))
    t = rng.uniform(-1.5, T, b)[:, None] + rng.uniform(0.07, 0.16, b)[:, None] * np.arange(8)
    keep = np.arange(8) < rng.integers(3, 9, b)[:, None]
    var = np.broadcast_to(rng.integers(0, V, b)[:, None], t.shape)
    gain = np.broadcast_to(rng.uniform(-15, 0, b)[:, None], t.shape)
    return t[keep], var[keep], gain[keep]


def bogies(rng, a, T, span, V):
    """Rail joints: every 1/``a`` s the two axles of a bogie hit the joint 0.08-0.15 s apart ("da-dum")."""
    period, gap = 1 / max(a, 1e-3), rng.uniform(0.08, 0.15)
    first = rng.uniform(0, period) - period * np.ceil((span + gap) / period)
    t = first + period * np.arange(int((T - first) / period) + 1)
    t = np.concatenate([t, t + gap]) + rng.normal(0, 0.004, 2 * t.size)
    return t, rng.integers(0, V, t.size), rng.normal(0, 2, t.size) - np.repeat([0.0, 2.0], t.size // 2)


def beats(rng, a, T, span, V):
    """Music: eighth notes at 80-140 bpm, each sounding with probability ``a``; chords change every bar."""
    step = 30 / rng.uniform(80, 140)
    k = np.arange(-int(span / step) - 1, int(T / step) + 1)
    t = k * step + rng.uniform(0, step)
    on = rng.random(k.size) < a
    root = rng.integers(0, 7, k.size // 8 + 2)[(k - k[0]) // 8]  # one chord root per bar of 8 eighths
    degree = root + rng.choice([0, 2, 4], k.size) + 7 * rng.integers(0, 3, k.size)  # a chord tone in one of 3 octaves
    gain = rng.uniform(-8, 0, k.size) + np.where(k % 2 == 0, 2.0, 0.0)  # on-beat notes a little louder
    return t[on], np.where(degree >= V, degree - 7, degree)[on], gain[on]


@dataclass(frozen=True)
class EventKind:
    kernels: Callable
    pattern: Callable


EVENTS: dict[str, EventKind] = {
    "footstep": EventKind(_footsteps, steps),        # activity: walkers
    "voice": EventKind(_voices, poisson),            # utterances per second of nearby talkers
    "announce": EventKind(_announcements, poisson),  # announcements per second
    "chime": EventKind(_chimes, poisson),            # bells per second
    "bird": EventKind(_chirps, trills),              # trills per second
    "music": EventKind(_notes, beats),               # probability that an eighth note sounds
    "clank": EventKind(_clanks, bogies),             # bogies per second
    "squeal": EventKind(_squeals, poisson),
    "door": EventKind(_doors, poisson),
    "click": EventKind(_clicks, bursts),             # typing bursts per second
    "clink": EventKind(_clinks, poisson),
    "horn": EventKind(_horns, poisson),
    "hiss": EventKind(_hisses, poisson),
    "drop": EventKind(_drops, poisson),
}


@functools.lru_cache(maxsize=None)
def bank(name: str, rate: int) -> np.ndarray:
    """[V, L] float32 kernels of event kind ``name`` at ``rate``, each with peak 1 (seeded by the name alone)."""
    rng = np.random.Generator(np.random.PCG64(zlib.crc32(name.encode())))
    kernels = EVENTS[name].kernels(rng, rate)
    out = np.zeros((len(kernels), max(len(k) for k in kernels)), np.float32)
    for i, k in enumerate(kernels):
        out[i, : len(k)] = k / (np.abs(k).max() + 1e-12)
    return out


def place(n: int, kernels: np.ndarray, starts: np.ndarray, variants: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """[n] sum of ``gains[i] * kernels[variants[i]]`` starting at sample ``starts[i]`` (cut at both clip ends)."""
    idx = starts[:, None] + np.arange(kernels.shape[1])
    keep = (idx >= 0) & (idx < n)
    return np.bincount(idx[keep], (kernels[variants] * gains[:, None].astype(np.float32))[keep], minlength=n)


def render_events(rng, g: Grid, parts: list[tuple[str, float, float]]) -> np.ndarray:
    """The foreground [n]: ``parts`` are (event kind, level dB, activity); kernels have peak 1 at 0 dB."""
    out = np.zeros(g.n)
    for name, level, activity in parts:
        kernels = bank(name, g.rate)
        t, var, gain_db = EVENTS[name].pattern(rng, activity, g.seconds, kernels.shape[1] / g.rate, len(kernels))
        starts = np.round(np.asarray(t) * g.rate).astype(np.int64)
        out += place(g.n, kernels, starts, np.asarray(var, np.int64), 10 ** ((level + np.asarray(gain_db)) / 20))
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Rooms


def quantise_rt60(rt60: float) -> float:
    """Snap a reverberation time to a 1.5x ladder from 0.2 s, so that few room responses need caching."""
    return round(0.2 * 1.5 ** round(np.log(max(rt60, 0.2) / 0.2) / np.log(1.5)), 3)


@functools.lru_cache(maxsize=64)
def room(rate: int, n: int, rt60: float, variant: int) -> np.ndarray:
    """[F] complex64 transfer function of a diffuse room, circular over the clip.

    Direct sound plus an exponential noise tail (-60 dB at ``rt60``) whose energy grows with the room: bigger halls
    are more reverberant. Circular convolution wraps the tails of late events to the clip's start, where they sound
    like the tails of events just before it.
    """
    rng = np.random.Generator(np.random.PCG64([rate, int(rt60 * 1000), variant]))
    t = np.arange(min(n, int(rt60 * rate))) / rate
    tail = rng.standard_normal(t.size) * 10 ** (-3 * t / rt60)
    # high frequencies die first: the tail loses 6 dB/oct above 3 kHz
    tail = _filter(tail, rate, 20, 3000, 0, 6)
    h = tail * np.sqrt(0.8 * rt60 / (np.sum(tail**2) + 1e-12))
    h[0] += 1.0
    return np.fft.rfft(h, n).astype(np.complex64)
