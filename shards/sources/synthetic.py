"""Synthetic acoustic scenes: the embedded default corpus (numpy only, no downloads).

Ten scene classes, each a *mixture* of procedurally generated textures and events, recorded by nine simulated devices
in six simulated cities. It stands in for TAU Urban Acoustic Scenes 2022 (device mismatch) and CAS 2023 (city/domain
shift) when no data is given, and it is hard in the same ways: no single cue (loudness, one tone, one band) names a
scene; the classes share building blocks at different rates, levels and spectra, so telling them apart needs evidence
combined over time and frequency (a rhythm of rail clanks, syllabic modulation, reverberant tails).

Scenes (levels, activity ranges and presence probabilities are in :data:`SCENES`, the sounds in ``_scenes.py``; cities
add a few ingredients of their own, and rain to outdoor scenes)::

    scene              bed (textures)                           foreground (events)                               reverb
    airport            babble hvac rolling room                 footstep voice announce click chime music         2.0 s
    shopping_mall      babble hvac room                         footstep voice music clink announce               1.3 s
    metro_station      babble rumble rolling motor hvac room    footstep voice announce squeal clank              2.2 s
    street_pedestrian  babble rumble engine wind room           footstep voice bird music horn                    0.4 s
    public_square      babble rumble wind rain room             footstep voice bird clink music                   0.3 s
    street_traffic     rumble engine rolling wind babble room   horn footstep voice door squeal bird              0.3 s
    park               wind babble rumble engine room           bird footstep voice music                         -
    tram               motor rolling babble rumble engine room  clank squeal chime voice announce hiss footstep   0.4 s
    bus                engine rumble rolling babble room        voice chime hiss door announce horn footstep      0.4 s
    metro              rumble rolling motor babble room         clank squeal voice announce chime footstep        0.5 s

Per clip, every part's level varies by +-6 dB, the scene's loudness by +-6 dB and its spectral tilt by +-1.5 dB/octave
(where the microphone stood), and rare parts are often absent: one second of an airport may hold no announcement.

Devices (:data:`DEVICES`): ``a`` (reference binaural mics), ``b``/``c`` (phones with EQ, noise and AGC) and simulated
``s1``-``s3`` are seen in training; ``s4``-``s6`` (new resonances, narrow band, AGC, clipping) appear only in
``test``, as in TAU22. Each device is a smooth EQ curve through a few (Hz, dB) points with high/low-pass roll-offs, a
pink noise floor, a gain, and optionally AGC compression and soft clipping.

Device impulse responses (:func:`ir_devices`, :func:`write_device_irs`): a stand-in for a measured collection such as
MicIRP, for the device-IR augmentation of fine-tuning. Sixteen *extra* devices drawn from the nine's family of EQ
curves and roll-offs, each at least 2 dB (:func:`response_distance_db`) from every one of the nine, test-only ones
included; the default build writes their minimum-phase IRs to ``device_irs/ir01.wav``.. beside the shards (no part of
them: the shards are the same with or without).

Cities (:data:`CITIES`) shift event statistics: traffic, crowd and bird activity, level, spectral tilt (surfaces),
mains hum (50/60 Hz), rain probability, wind, crowd pitch (language) and reverberation (architecture). Four are seen
everywhere; ``seoul`` appears in ``unlabelled`` and ``test`` only (the CAS 2023 setting: unlabelled target-domain
data), ``montreal`` only in ``test``.

Splits::

    split       scenes                       devices                        cities
    labelled    balanced (index % 10)        seen (a x4 weight)             seen
    val         balanced                     seen (a x4 weight)             seen
    test        balanced                     all nine, uniform              all six, uniform
    unlabelled  natural prior (mild skew)    seen (a x4 weight)             seen + seoul (x2 weight)

Unlabelled clips have no ``labels`` but keep the scene in ``meta["true_label"]`` so that pseudo-label accuracy can be
measured. A clip is a pure function of ``(seed, split, index, sample_rate, duration)``: every random number comes from
``Generator(PCG64(SeedSequence([seed, crc32(split), index])))``, nothing depends on time or on which clips were
rendered before, so builds are bit-identical for the same numpy build (transcendental functions and FFTs may differ in
the last bit between CPUs/libraries, far below the 16-bit FLAC quantisation step).
"""
from __future__ import annotations

import argparse
import functools
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from launch.common.errors import BadInput
from shards.clip import Clip, Corpus
from shards.sources import _scenes as sc


@dataclass(frozen=True)
class Part:
    """One ingredient of a scene: level (dB re the others), activity range drawn per clip, presence probability."""

    level: float
    lo: float = 0.0
    hi: float = 0.0
    p: float = 1.0


@dataclass(frozen=True)
class Scene:
    level: float
    """Typical loudness (dBFS before the device); spread +-6 dB per clip, so loudness alone never names a scene."""
    rt60: float
    """Reverberation time of the place (s) applied to the events; 0: open air."""
    outdoor: bool
    """Rained on when it rains in the city."""
    prior: float
    """Relative frequency in the unlabelled split."""
    textures: dict[str, Part] = field(default_factory=dict)
    events: dict[str, Part] = field(default_factory=dict)


P = Part
SCENES: dict[str, Scene] = {
    "airport": Scene(-30, 2.0, False, 0.8,
                     dict(babble=P(0, 6, 25), hvac=P(-5, -14, -4), rolling=P(-12, 2, 6, 0.5), room=P(-10)),
                     dict(footstep=P(-10, 0.5, 3), voice=P(-8, 0.1, 0.5), announce=P(-6, 0.05, 0.2, 0.6),
                          click=P(-24, 0.1, 0.4, 0.3), chime=P(-14, 0.05, 0.2, 0.2), music=P(-18, 0.2, 0.5, 0.15))),
    "shopping_mall": Scene(-28, 1.3, False, 1.1,
                           dict(babble=P(0, 6, 30), hvac=P(-8, -14, -6), room=P(-10)),
                           dict(footstep=P(-8, 1, 5), voice=P(-7, 0.2, 0.6), music=P(-12, 0.3, 0.8, 0.6),
                                clink=P(-16, 0.2, 1.0, 0.5), announce=P(-8, 0.02, 0.1, 0.2))),
    "metro_station": Scene(-28, 2.2, False, 1.0,
                           dict(babble=P(-3, 4, 15), rumble=P(-4, 0.1, 0.5), rolling=P(-8, 2, 8, 0.5),
                                motor=P(-14, 150, 400, 0.3), hvac=P(-8, -14, -6), room=P(-10)),
                           dict(footstep=P(-8, 0.5, 3), voice=P(-8, 0.1, 0.4), announce=P(-5, 0.05, 0.2, 0.5),
                                squeal=P(-10, 0.1, 0.5, 0.4), clank=P(-10, 0.8, 2.0, 0.4))),
    "street_pedestrian": Scene(-27, 0.4, True, 1.2,
                               dict(babble=P(-4, 3, 10), rumble=P(-6, 0.1, 0.6), engine=P(-14, 25, 60, 0.3),
                                    wind=P(-10, 2, 6, 0.5), room=P(-12)),
                               dict(footstep=P(-4, 2, 7), voice=P(-5, 0.3, 1.0), bird=P(-16, 0.2, 1.0, 0.3),
                                    music=P(-16, 0.2, 0.6, 0.15), horn=P(-12, 0.02, 0.1, 0.2))),
    "public_square": Scene(-29, 0.3, True, 1.0,
                           dict(babble=P(-5, 5, 20), rumble=P(-10, 0.05, 0.3), wind=P(-8, 2, 6, 0.5),
                                rain=P(-12, 0, 6, 0.3), room=P(-12)),
                           dict(footstep=P(-8, 1, 5), voice=P(-7, 0.1, 0.6), bird=P(-12, 0.3, 1.5, 0.6),
                                clink=P(-18, 0.1, 0.5, 0.3), music=P(-15, 0.2, 0.6, 0.2))),
    "street_traffic": Scene(-25, 0.3, True, 1.3,
                            dict(rumble=P(0, 0.2, 1.2), engine=P(-8, 25, 60, 0.6), rolling=P(-6, 2, 6),
                                 wind=P(-10, 2, 6, 0.4), babble=P(-12, 2, 8, 0.4), room=P(-12)),
                            dict(horn=P(-8, 0.02, 0.15, 0.5), footstep=P(-12, 0.5, 2, 0.4),
                                 voice=P(-10, 0.05, 0.3, 0.4), door=P(-14, 0.02, 0.1, 0.2),
                                 squeal=P(-16, 0.05, 0.2, 0.15), bird=P(-20, 0.1, 0.5, 0.15))),
    "park": Scene(-33, 0.0, True, 1.2,
                  dict(wind=P(-4, 2, 8, 0.7), babble=P(-12, 2, 8, 0.5), rumble=P(-10, 0.05, 0.3),
                       engine=P(-18, 25, 60, 0.2), room=P(-10)),
                  dict(bird=P(-6, 0.2, 2.0, 0.8), footstep=P(-10, 0.3, 3, 0.6), voice=P(-10, 0.05, 0.4, 0.5),
                       music=P(-20, 0.2, 0.5, 0.1))),
    "tram": Scene(-27, 0.4, False, 0.8,
                  dict(motor=P(-8, 250, 800, 0.8), rolling=P(-4, 2, 6), babble=P(-8, 2, 10),
                       rumble=P(-8, 0.1, 0.8), engine=P(-16, 25, 60, 0.2), room=P(-10)),
                  dict(clank=P(-8, 0.6, 1.8, 0.7), squeal=P(-10, 0.1, 0.4, 0.4), chime=P(-8, 0.05, 0.2, 0.3),
                       voice=P(-7, 0.1, 0.5), announce=P(-10, 0.03, 0.15, 0.3), hiss=P(-12, 0.02, 0.1, 0.2),
                       footstep=P(-14, 0.3, 1.5, 0.3))),
    "bus": Scene(-27, 0.4, False, 0.9,
                 dict(engine=P(-3, 25, 60, 0.9), rumble=P(-6, 0.1, 0.8), rolling=P(-8, 2, 6, 0.6),
                      babble=P(-8, 2, 10), room=P(-10)),
                 dict(voice=P(-6, 0.1, 0.5), chime=P(-10, 0.05, 0.2, 0.3), hiss=P(-8, 0.02, 0.1, 0.2),
                      door=P(-12, 0.02, 0.1, 0.2), announce=P(-10, 0.03, 0.15, 0.2), horn=P(-18, 0.02, 0.1, 0.2),
                      footstep=P(-14, 0.3, 1.5, 0.3))),
    "metro": Scene(-25, 0.5, False, 0.9,
                   dict(rumble=P(-3, 0.6, 2.5), rolling=P(-2, 3, 8), motor=P(-10, 150, 600, 0.7), babble=P(-10, 2, 10),
                        room=P(-10)),
                   dict(clank=P(-8, 1.0, 2.5, 0.7), squeal=P(-8, 0.1, 0.5, 0.5), voice=P(-8, 0.1, 0.5),
                        announce=P(-8, 0.03, 0.15, 0.3), chime=P(-12, 0.05, 0.2, 0.2), footstep=P(-14, 0.3, 1.5, 0.3))),
}
SCENE_NAMES = list(SCENES)

# Which city statistic scales an ingredient's activity (a rate or a count).
GROUPS = {"rumble": "traffic", "horn": "traffic", "babble": "crowd", "footstep": "crowd", "voice": "crowd",
          "bird": "nature"}


@dataclass(frozen=True)
class Device:
    eq: tuple[tuple[float, float], ...]
    """(Hz, dB) points of the frequency response, interpolated linearly in octaves (flat beyond the ends)."""
    highpass: float
    """Hz; -12 dB/octave below (small capsules lose the bass)."""
    lowpass: float
    """Hz; -24 dB/octave above (codec and anti-alias filters)."""
    noise: float
    """Self-noise floor, dBFS (pink)."""
    gain: float = 0.0
    """Input gain, dB (+-2 dB per clip)."""
    agc: float = 0.0
    """Automatic gain control: 0 off, 1 fully flattens level changes slower than ~150 ms."""
    drive: float = 0.0
    """Soft clipping ``tanh(drive x) / drive`` of a hot preamp; 0 off."""
    weight: float = 1.0
    """Relative frequency in the training splits (device a dominates, as in TAU22)."""
    test_only: bool = False


DEVICES: dict[str, Device] = {
    "a": Device(((100, 0), (8000, 0)), 20, 16000, -84, weight=4),
    "b": Device(((200, -2), (1000, 0), (3000, 3), (6000, -2)), 120, 7500, -72, -2, agc=0.3),
    "c": Device(((150, 2), (800, -1), (2500, 2), (5000, -4)), 90, 6500, -70, 2, agc=0.5),
    "s1": Device(((300, 3), (1500, 4), (4000, -3)), 180, 6000, -66),
    "s2": Device(((100, 4), (1000, 0), (3000, -5)), 60, 5000, -70, 3),
    "s3": Device(((500, -3), (2000, 2), (5000, 4)), 250, 7500, -64, drive=2),
    "s4": Device(((200, -3), (1000, 2), (2500, 4), (5000, -3)), 160, 6000, -62, agc=0.4, test_only=True),
    "s5": Device(((120, 5), (600, -2), (2000, 0)), 100, 4500, -64, 2, drive=3, test_only=True),
    "s6": Device(((300, -2), (1200, -4), (3000, 3), (6000, 6)), 300, 7800, -60, -4, test_only=True),
}


@dataclass(frozen=True)
class City:
    hum: float
    """Mains frequency (Hz) in ventilation hum."""
    traffic: float
    """Multiplier on vehicle rates (rumble, horns)."""
    crowd: float
    """Multiplier on talkers, walkers and nearby voices."""
    nature: float
    """Multiplier on bird song."""
    tilt: float
    """Spectral tilt, dB per octave around 1 kHz (surfaces, building materials)."""
    level: float
    """Loudness offset, dB."""
    rain: float
    """Probability that an outdoor clip is rained on."""
    wind: float
    """Wind level offset, dB."""
    pitch: float
    """Scale of the babble bands (language, speaker population)."""
    reverb: float
    """Scale of reverberation times (architecture)."""
    where: str = "all"
    """``all`` (every split), ``unlabelled`` (unlabelled and test only) or ``test`` (test only)."""
    extra: dict[str, Part] = field(default_factory=dict)
    """Ingredients heard in every scene of the city unless the scene has its own (aircon units, gulls, sirens)."""


CITIES: dict[str, City] = {
    "barcelona": City(50, 1.2, 1.2, 0.8, 0.0, 1, 0.05, -2, 1.0, 1.0, extra=dict(music=P(-20, 0.2, 0.5, 0.1))),
    "helsinki": City(50, 0.8, 0.8, 1.2, -0.5, -2, 0.25, 2, 0.95, 1.1, extra=dict(wind=P(-14, 2, 6, 0.3))),
    "lyon": City(50, 1.0, 1.0, 1.0, 0.5, 0, 0.15, 0, 1.0, 0.9),
    "prague": City(50, 0.9, 1.1, 1.0, -0.3, -1, 0.2, 0, 1.05, 1.2, extra=dict(clank=P(-20, 0.5, 1.5, 0.1))),
    # the domain-shift target: dense traffic and crowds, air-conditioning units and horns everywhere, 60 Hz mains
    "seoul": City(60, 1.6, 1.4, 0.5, -1.5, 3, 0.1, -3, 1.2, 0.8, where="unlabelled",
                  extra=dict(hvac=P(-12, -10, -2, 0.6), horn=P(-14, 0.05, 0.2, 0.4), motor=P(-18, 300, 900, 0.3))),
    # never seen before test: quiet, windy and wet, idling engines and heating everywhere, church bells
    "montreal": City(60, 0.8, 0.6, 1.4, 1.0, -2, 0.5, 4, 0.85, 1.3, where="test",
                     extra=dict(wind=P(-8, 3, 8, 0.6), engine=P(-12, 20, 40, 0.5), hvac=P(-12, -12, -4, 0.5),
                                chime=P(-14, 0.05, 0.2, 0.3))),
}

SPLITS = ("labelled", "val", "test", "unlabelled")


def _pool(table: dict, weights: dict[str, float]) -> tuple[list[str], np.ndarray]:
    names = [k for k in table if weights.get(k, 0) > 0]
    w = np.array([weights[k] for k in names], float)
    return names, w / w.sum()


@functools.lru_cache(maxsize=None)
def _split_pools(split: str) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
    """(devices, probabilities), (cities, probabilities) of a split: what is seen where."""
    seen_devices = {k: d.weight for k, d in DEVICES.items() if not d.test_only}
    if split in ("labelled", "val"):
        return _pool(DEVICES, seen_devices), _pool(CITIES, {k: 1.0 for k, c in CITIES.items() if c.where == "all"})
    if split == "unlabelled":
        cities = {k: {"all": 1.0, "unlabelled": 2.0}.get(c.where, 0.0) for k, c in CITIES.items()}
        return _pool(DEVICES, seen_devices), _pool(CITIES, cities)
    if split == "test":
        return _pool(DEVICES, {k: 1.0 for k in DEVICES}), _pool(CITIES, {k: 1.0 for k in CITIES})
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


_PRIOR = np.array([s.prior for s in SCENES.values()]) / sum(s.prior for s in SCENES.values())


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index])))


def _draw_plan(rng: np.random.Generator, split: str, index: int) -> tuple[str, str, str]:
    """(scene, device, city) of a clip: the first draws of its generator, so listing a split renders nothing."""
    (devices, pd), (cities, pc) = _split_pools(split)
    if split == "unlabelled":
        scene = SCENE_NAMES[rng.choice(len(SCENES), p=_PRIOR)]
    else:
        scene = SCENE_NAMES[index % len(SCENES)]  # balanced, and a clip's class is known without drawing anything
    return scene, devices[rng.choice(len(devices), p=pd)], cities[rng.choice(len(cities), p=pc)]


def clip_plan(seed: int, split: str, index: int) -> dict[str, str]:
    """The scene, device and city of clip ``index`` of ``split`` (what :func:`render_clip` will render)."""
    scene, device, city = _draw_plan(_rng(seed, split, index), split, index)
    return {"scene": scene, "device": device, "city": city}


# ----------------------------------------------------------------------------------------------------------------------
# Rendering


def _ingredients(rng, scene: Scene, city: City) -> tuple[list, list]:
    """Draw which parts sound in this clip, with levels (+-6 dB) and activities (scaled by the city)."""
    chosen: tuple[list, list] = ([], [])
    rained = scene.outdoor and rng.random() < city.rain
    extra = dict(city.extra, **({"rain": P(-6, 0, 8), "drop": P(-12, 30, 150)} if rained else {}))
    textures = {**{k: v for k, v in extra.items() if k in sc.TEXTURES}, **scene.textures}
    events = {**{k: v for k, v in extra.items() if k in sc.EVENTS}, **scene.events}
    for out, parts in zip(chosen, (textures, events)):
        for name, part in parts.items():
            present, jitter, u = rng.random(), rng.uniform(-6, 6), rng.random()
            if present >= part.p:
                continue
            scale = getattr(city, GROUPS[name]) if name in GROUPS else 1.0
            activity = (part.lo + u * (part.hi - part.lo)) * scale
            out.append((name, part.level + jitter + (city.wind if name == "wind" else 0.0), activity))
    return chosen


def device_response(d: Device, octs: np.ndarray) -> np.ndarray:
    """Magnitude response of device ``d`` at frequencies given in octaves re 1 kHz: its EQ curve times its roll-offs
    (the linear part of the device; noise, AGC and clipping come on top when a clip is recorded)."""
    f_pts, db_pts = zip(*d.eq)
    eq = 10 ** (np.interp(octs, np.log2(np.array(f_pts) / 1000), db_pts) / 20)
    return eq * sc.band(octs, d.highpass, d.lowpass, 12, 24)


@functools.lru_cache(maxsize=64)
def _device_response(name: str, rate: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(frequency response [F], noise-floor magnitude [F] giving the device's floor RMS) of device ``name``."""
    d, g = DEVICES[name], sc.grid(rate, n)
    response = device_response(d, g.octs)
    floor = 10 ** (-3 * g.octs / 20) * response
    floor *= 10 ** (d.noise / 20) / _rms(floor, n)
    return response.astype(np.float32), floor.astype(np.float32)


def _rms(spectrum: np.ndarray, n: int) -> float:
    """RMS of ``irfft(spectrum, n, norm="ortho")`` from the spectrum (Parseval; bin 0 appears once)."""
    power = np.abs(spectrum) ** 2
    return float(np.sqrt((2 * power.sum() - power[0]) / n))


def _agc(y: np.ndarray, g: sc.Grid, amount: float) -> np.ndarray:
    """Phone-style AGC: frame levels (smoothed over ~150 ms) pulled toward the clip's mean level by ``amount``."""
    frames = np.pad(y, (0, (g.m - 1) * g.hop - g.n)).reshape(g.m - 1, g.hop)
    power = np.convolve((frames**2).mean(1), np.ones(15) / 15, mode="same") + 1e-10
    gain = (power / power.mean()) ** (-amount / 2)
    return y * sc.upsample(np.append(gain, gain[-1])[None], g)[0]


def _record(rng, spectrum: np.ndarray, g: sc.Grid, name: str) -> np.ndarray:
    """The scene's spectrum through device ``name``: EQ, gain, self-noise, AGC, soft clipping -> [n] float32."""
    d = DEVICES[name]
    response, floor = _device_response(name, g.rate, g.n)
    x = spectrum * response * np.float32(10 ** ((d.gain + rng.uniform(-2, 2)) / 20))
    x += sc.white(rng, floor.shape) * floor
    x[0] = 0  # recorders block DC (the noise rows would otherwise leave a tiny random offset)
    y = np.fft.irfft(x, g.n, norm="ortho")
    if d.agc:
        y = _agc(y, g, d.agc)
    if d.drive:
        y = np.tanh(d.drive * y) / d.drive
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def render_clip(seed: int, split: str, index: int, sample_rate: int = 16000, duration: float = 1.0
                ) -> tuple[np.ndarray, int]:
    """Clip ``index`` of ``split``: ``(samples [round(duration * sample_rate)] float32 in [-1, 1], sample_rate)``."""
    rng = _rng(seed, split, index)
    scene_name, device, city_name = _draw_plan(rng, split, index)
    scene, city = SCENES[scene_name], CITIES[city_name]
    g = sc.grid(int(sample_rate), max(1, round(duration * sample_rate)))
    textures, events = _ingredients(rng, scene, city)
    bed = sc.render_textures(rng, g, textures, sc.Local(hum=city.hum, pitch=city.pitch))
    fg = sc.render_events(rng, g, events)
    spectrum = np.fft.rfft(bed, norm="ortho")
    fg_spectrum = np.fft.rfft(fg, norm="ortho")
    rt60, variant = scene.rt60 * city.reverb * rng.uniform(0.8, 1.25), int(rng.integers(4))
    if scene.rt60 > 0:  # the room colours the events; the bed is diffuse already
        fg_spectrum *= sc.room(g.rate, g.n, sc.quantise_rt60(rt60), variant)
    spectrum += fg_spectrum
    # the city's surfaces plus where the microphone stood (near sources sound brighter): +-1.5 dB/oct per clip
    spectrum *= (10 ** ((city.tilt + rng.uniform(-1.5, 1.5)) * g.octs / 20)).astype(np.float32)
    level = scene.level + city.level + rng.uniform(-6, 6)
    spectrum *= np.float32(10 ** (level / 20) / (_rms(spectrum, g.n) + 1e-12))
    return _record(rng, spectrum, g, device), int(sample_rate)


# ----------------------------------------------------------------------------------------------------------------------
# The corpus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument("--labelled", type=int, default=2000,
                        help="labelled clips, balanced over scenes (default 2000)")
    parser.add_argument("--val", type=int, default=400, help="validation clips (default 400)")
    parser.add_argument("--test", type=int, default=800,
                        help="test clips, incl. unseen devices s4-s6 and unseen cities (default 800)")
    parser.add_argument("--unlabelled", type=int, default=6000,
                        help="unlabelled clips for pretraining / pseudo-labelling (default 6000)")
    parser.add_argument("--duration", type=float, default=1.0, help="clip length in seconds (default 1.0)")


def load(root: Path | None, args: argparse.Namespace) -> Corpus:
    """The synthetic corpus described by ``args`` (``root`` is ignored: nothing is read from disk)."""
    seed, duration, rate = int(args.seed), float(args.duration), int(getattr(args, "sample_rate", 16000))
    sizes = {split: int(getattr(args, split)) for split in SPLITS}
    if seed < 0:
        raise BadInput(f"--seed {seed}: expected a non-negative integer")
    if not duration > 0 or duration * rate < 1:
        raise BadInput(f"--duration {duration}: expected a positive number of seconds")
    for split, size in sizes.items():
        if size < 0:
            raise BadInput(f"--{split} {size}: expected a non-negative number of clips")

    def lister(split: str):
        def clips() -> Iterator[Clip]:
            for i in range(sizes[split]):
                scene, device, city = _draw_plan(_rng(seed, split, i), split, i)
                yield Clip(
                    key=f"syn-{split}-{i:06d}",
                    labels=(scene,) if split != "unlabelled" else (),
                    meta={"device": device, "city": city, "domain": city, "true_label": scene, "seed": seed,
                          "index": i},
                    render=functools.partial(render_clip, seed, split, i, rate, duration),
                )
        return clips

    info = {
        "seed": seed, "duration": duration, "sample_rate": rate,
        "devices": list(DEVICES), "test_only_devices": [k for k, d in DEVICES.items() if d.test_only],
        "cities": list(CITIES), "unlabelled_and_test_cities": [k for k, c in CITIES.items() if c.where == "unlabelled"],
        "test_only_cities": [k for k, c in CITIES.items() if c.where == "test"],
    }
    return Corpus(name="synthetic", classes=list(SCENE_NAMES), splits={s: lister(s) for s in SPLITS}, info=info)


# ----------------------------------------------------------------------------------------------------------------------
# Device impulse responses: the stand-in for a measured collection such as MicIRP


IR_FOLDER = "device_irs"
"""Folder of the corpus root that holds the stand-in impulse responses (``augment.device_ir.path=synthetic``)."""
IR_SEED = 2207
"""Seed of the stand-in devices: fixed, so the collection is the same for every corpus seed (as a download would be)."""
IR_DEVICES = 16
IR_SECONDS = 0.125
"""Length of each impulse response; the responses are smooth, so their minimum-phase IRs have decayed well before."""
IR_MIN_DISTANCE_DB = 2.0
"""Least :func:`response_distance_db` of a stand-in to each of the nine corpus devices (test-only ones included).
The corpus's own closest pair (s3, s6) is 1.6 dB apart, so no stand-in is as close to a corpus device as those two
are to each other."""
IR_BAND = (50.0, 7500.0)
"""Hz: the band where device responses are compared (below the Nyquist of the 16 kHz default)."""


def response_distance_db(a: np.ndarray, b: np.ndarray) -> float:
    """How far two magnitude responses on the same frequencies are apart, without their overall gain: the RMS over
    the frequencies of ``dB(a) - dB(b)`` minus its mean (a level change alone is 0 dB away; the level of a clip says
    nothing about the device, and the augmentation keeps the level anyway)."""
    d = 20 * np.log10(np.maximum(a, 1e-10)) - 20 * np.log10(np.maximum(b, 1e-10))
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)))


def _band_octs(high: float = IR_BAND[1], points: int = 256) -> np.ndarray:
    return np.log2(np.geomspace(IR_BAND[0], high, points) / 1000)


def _draw_ir_device(rng: np.random.Generator) -> Device:
    """A device of the nine's family: an EQ curve through 2-4 (Hz, dB) points between 100 Hz and 8 kHz (-5..+6 dB, as
    theirs) and the same high-pass (12 dB/oct, 20-300 Hz) and low-pass (24 dB/oct, 4.5-16 kHz) roll-offs."""
    k = int(rng.integers(2, 5))
    freqs = np.sort(np.exp(rng.uniform(np.log(100), np.log(8000), k)))
    points = tuple((float(np.round(f, -1)), float(np.round(rng.uniform(-5, 6), 1))) for f in freqs)
    highpass = float(np.round(np.exp(rng.uniform(np.log(20), np.log(300)))))
    lowpass = float(np.round(np.exp(rng.uniform(np.log(4500), np.log(16000))), -1))
    return Device(points, highpass, lowpass, noise=-80.0)


@functools.lru_cache(maxsize=1)
def ir_devices() -> dict[str, Device]:
    """The stand-in devices ``ir01``..: drawn in order from :data:`IR_SEED`, a draw kept only when it is at least
    :data:`IR_MIN_DISTANCE_DB` from every corpus device and 1 dB from every stand-in kept before it."""
    rng = np.random.Generator(np.random.PCG64(IR_SEED))
    octs = _band_octs()
    taken = [device_response(d, octs) for d in DEVICES.values()]
    out: dict[str, Device] = {}
    while len(out) < IR_DEVICES:
        d = _draw_ir_device(rng)
        r = device_response(d, octs)
        near = [response_distance_db(r, t) for t in taken]
        if min(near[:len(DEVICES)]) >= IR_MIN_DISTANCE_DB and min(near[len(DEVICES):], default=np.inf) >= 1.0:
            out[f"ir{len(out) + 1:02d}"] = d
            taken.append(r)
    return out


def device_ir(d: Device, rate: int, seconds: float = IR_SECONDS) -> np.ndarray:
    """The minimum-phase impulse response [round(seconds x rate)] float32 of device ``d``'s magnitude response.

    A microphone is a causal filter whose energy comes first, so the magnitude gets the minimum phase (the homomorphic
    method: the real cepstrum folded onto positive quefrencies) on a 16x longer grid, and is cut to length under a
    cosine fade of the last quarter. Peak-normalised to 0.9, as MicIRP's files are peak-normalised.
    """
    n = max(8, round(seconds * rate))
    big = 16 * n
    log_mag = np.log(np.maximum(device_response(d, sc.grid(rate, big).octs).astype(np.float64), 1e-5))
    cep = np.fft.irfft(log_mag, big)
    fold = np.zeros(big)
    fold[0], fold[big // 2] = cep[0], cep[big // 2]
    fold[1:big // 2] = 2 * cep[1:big // 2]
    h = np.fft.irfft(np.exp(np.fft.rfft(fold)), big)[:n]
    fade = n // 4
    h[n - fade:] *= np.cos(0.5 * np.pi * np.arange(1, fade + 1) / fade) ** 2
    return (0.9 * h / np.abs(h).max()).astype(np.float32)


def write_device_irs(folder: Path, rate: int) -> list[Path]:
    """Write ``<folder>/ir01.wav``.. (24-bit PCM at ``rate``), each atomically; files already there are kept."""
    import soundfile as sf

    from launch.common.files import replacing

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, d in ir_devices().items():
        path = folder / f"{name}.wav"
        if not path.exists():
            with replacing(path) as tmp:
                sf.write(tmp, device_ir(d, rate), rate, subtype="PCM_24", format="WAV")
        paths.append(path)
    return paths
