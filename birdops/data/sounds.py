"""The pretraining corpus: generated 10 s sound scenes of everyday sound classes, several per clip.

The embedded stand-in for AudioSet (``pretrain`` stage). AudioSet is 2 M ten-second YouTube clips
labelled with 527 classes of an ontology (human sounds, animals, music, sounds of things, natural
sounds), usually several per clip. This corpus keeps what makes it useful for transfer: the clips
are disjoint from the bird task (no bird class: the nearest are other animals and human whistling),
10 s long (longer than the 4 s fine-tuning clip, so fine-tuning slices the position embedding as it
does for the real checkpoint), multi-label mixtures of one to three sources over coloured background
noise, and the classes cover the spectro-temporal shapes of everyday sound: harmonic stacks with
pitch contours (speech, music, animals), tones and sweeps (sirens, alarms, whistling), pulse trains
(insects, frogs, engines), impulses (knocks, footsteps, drums) and noise textures (rain, wind,
water), from 30 Hz rumble to 10 kHz buzz.

``SOUND_CLASSES`` names them after AudioSet ontology labels. Every class is a function
``(rng, num_samples, sample_rate_hz) -> (num_samples,) float32`` that draws its own parameters
(pitch, tempo, timbre, timing) on every call, so no two recordings of a class are alike. A
recording is a pure function of ``(seed, class, index)`` (:func:`render_stem`); :class:`SceneBank`
mixes them into labelled scenes, fresh ones for every batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from birdops.data.noise import band_noise, wind_noise

Generator = Callable[[np.random.Generator, int, int], np.ndarray]
FloatArray = np.ndarray


# ------------------------------------------------------------------------------------ primitives
def _harmonics(f0_hz: FloatArray, amplitudes: FloatArray, sample_rate_hz: int) -> FloatArray:
    """A harmonic stack on the fundamental contour ``f0_hz (n,)``: ``sum_k a_k sin(k phase)``, ``(n,)``.

    Harmonic ``k`` (1-based, ``amplitudes[k - 1]``) is left out once it would pass 95 % of Nyquist.
    ``sin(k phase)`` comes from the Chebyshev recurrence ``s_k = 2 cos(phase) s_(k-1) - s_(k-2)``: two
    multiply-adds per harmonic instead of a sine.
    """
    phase = np.mod((2 * np.pi / sample_rate_hz) * np.cumsum(f0_hz, dtype=np.float64), 2 * np.pi)  # (n,)
    top_hz = float(f0_hz.max()) if len(f0_hz) else 0.0
    count = min(len(amplitudes), int(0.95 * sample_rate_hz / 2 / max(top_hz, 1e-9)))
    return _stack(np.sin(phase).astype(np.float32), np.cos(phase).astype(np.float32), amplitudes[:count])


def _stack(sine: FloatArray, cosine: FloatArray, gains: FloatArray | list[FloatArray]) -> FloatArray:
    """``sum_k gains[k - 1] * sin(k phase)`` from ``sin(phase)``, ``cos(phase)``; a gain may be a curve."""
    wave = np.zeros_like(sine)
    previous, current, twice_cos = np.zeros_like(sine), sine, 2.0 * cosine
    for gain in gains:
        wave += np.float32(gain) * current if np.ndim(gain) == 0 else gain * current
        previous, current = current, twice_cos * current - previous
    return wave


def _decay(num_samples: int, attack_s: float, decay_s: float, sample_rate_hz: int) -> FloatArray:
    """A linear attack then an exponential decay with time constant ``decay_s``, peak 1, ``(n,)``."""
    t = np.arange(num_samples, dtype=np.float32) / sample_rate_hz
    attack = np.minimum(t / max(attack_s, 1e-4), 1.0)
    return attack * np.exp(-np.maximum(t - attack_s, 0.0) / decay_s)


def _hann(num_samples: int) -> FloatArray:
    """A smooth rise and fall over ``num_samples`` (Hann-shaped; square-root for a flatter top)."""
    return np.sqrt(np.hanning(max(num_samples, 3))[:num_samples]).astype(np.float32)


def _onsets(rng: np.random.Generator, duration_s: float, interval_s: float, jitter: float) -> FloatArray:
    """Event times (s) from a random start, ``interval_s`` apart with relative ``jitter``."""
    times, t = [], float(rng.uniform(0.0, min(interval_s, duration_s * 0.5)))
    while t < duration_s:
        times.append(t)
        t += interval_s * float(np.exp(rng.normal(0.0, jitter)))
    return np.array(times)


def _add(track: FloatArray, event: FloatArray, start: int) -> None:
    """``track[start:] += event``, cut at the track's end."""
    stop = min(start + len(event), len(track))
    if stop > start >= 0:
        track[start:stop] += event[: stop - start]


def _bursts(
    rng: np.random.Generator,
    num_samples: int,
    sample_rate_hz: int,
    interval_s: float,
    jitter: float,
    make: Callable[[], FloatArray],
) -> FloatArray:
    """A track of events ``make()`` placed at :func:`_onsets`."""
    track = np.zeros(num_samples, dtype=np.float32)
    for onset_s in _onsets(rng, num_samples / sample_rate_hz, interval_s, jitter):
        _add(track, make(), round(onset_s * sample_rate_hz))
    return track


def _contour(
    rng: np.random.Generator, num_samples: int, knots_per_s: float, sample_rate_hz: int
) -> FloatArray:
    """A smooth random curve around 0 (unit-variance knots linearly interpolated), ``(n,)``."""
    count = max(2, int(num_samples / sample_rate_hz * knots_per_s) + 2)
    knots = rng.standard_normal(count)
    return np.interp(np.linspace(0, count - 1, num_samples), np.arange(count), knots).astype(np.float32)


def _seconds(rng: np.random.Generator, low: float, high: float, sample_rate_hz: int) -> int:
    return max(8, round(float(rng.uniform(low, high)) * sample_rate_hz))


# -------------------------------------------------------------------------------- human sounds
def speech(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Voiced syllables (4-7 per s): a glottal harmonic stack shaped by three moving formants."""
    f0 = rng.uniform(90.0, 250.0) * np.exp(0.08 * _contour(rng, n, 3.0, sr))  # intonation
    formants = [
        rng.uniform(*band) * np.exp(0.15 * _contour(rng, n, 6.0, sr))
        for band in ((300.0, 900.0), (900.0, 2500.0), (2500.0, 3500.0))
    ]
    phase = np.mod((2 * np.pi / sr) * np.cumsum(f0, dtype=np.float64), 2 * np.pi)
    block = 128  # formant gains change slowly: computed every 128 samples (6 ms), held in between
    f0_slow, formants_slow = f0[::block], [f[::block] for f in formants]
    gains = []
    for k in range(1, int(4500.0 / f0.max()) + 1):
        gain = sum(np.exp(-0.5 * ((k * f0_slow - f) / 120.0) ** 2) for f in formants_slow) / k**0.5
        gains.append(np.repeat(gain.astype(np.float32), block)[:n])
    wave = _stack(np.sin(phase).astype(np.float32), np.cos(phase).astype(np.float32), gains)
    syllables = np.clip(np.sin(2 * np.pi * np.cumsum(np.full(n, rng.uniform(4.0, 7.0))) / sr), 0.0, None)
    pauses = _contour(rng, n, 0.7, sr) > -0.6  # breaths between phrases
    return (wave * syllables**0.6 * pauses).astype(np.float32)


def whistling(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """A whistled tune: a nearly pure tone on a stepped melody (1-2.5 kHz) with vibrato."""
    base = rng.uniform(1000.0, 2500.0)
    note_s = rng.uniform(0.2, 0.6)
    steps = rng.integers(-5, 6, size=int(n / sr / note_s) + 2)
    melody = base * 2 ** (np.repeat(steps, round(note_s * sr))[:n] / 12.0)
    vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * rng.uniform(4.0, 7.0) * np.arange(n) / sr)
    return _harmonics(melody * vibrato, np.array([1.0, 0.05]), sr) * (_contour(rng, n, 1.0, sr) > -0.8)


def footsteps(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Low thumps with a scuff, 1.5-2.5 per s."""

    def step() -> FloatArray:
        m = _seconds(rng, 0.05, 0.12, sr)
        out: np.ndarray = band_noise(rng, m, 40.0, rng.uniform(300.0, 1500.0), sr) * _decay(
            m, 0.003, 0.02, sr
        )
        return out

    return _bursts(rng, n, sr, 1.0 / rng.uniform(1.5, 2.5), 0.08, step)


def clapping(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Hand claps: broadband 5-15 ms bursts, regular or applause-like."""

    def clap() -> FloatArray:
        m = _seconds(rng, 0.03, 0.06, sr)
        out: np.ndarray = band_noise(rng, m, 500.0, 8000.0, sr) * _decay(
            m, 0.001, rng.uniform(0.005, 0.015), sr
        )
        return out

    return _bursts(rng, n, sr, rng.uniform(0.08, 0.5), rng.uniform(0.05, 0.5), clap)


# ------------------------------------------------------------------------------------- animals
def dog_bark(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Groups of one to four barks: noisy harmonic bursts (f0 300-900 Hz) falling in pitch."""
    f0 = rng.uniform(300.0, 900.0)

    def bark() -> FloatArray:
        m = _seconds(rng, 0.1, 0.25, sr)
        fall = f0 * np.linspace(1.1, 0.8, m)
        voiced = _harmonics(fall, 1.0 / np.arange(1, 12) ** 0.7, sr)
        rough = band_noise(rng, m, 300.0, 4000.0, sr)
        out: np.ndarray = (voiced + 0.5 * rough) * _decay(m, 0.01, 0.06, sr)
        return out

    def group() -> FloatArray:
        return _bursts(rng, round(rng.uniform(0.4, 1.2) * sr), sr, rng.uniform(0.25, 0.4), 0.1, bark)

    return _bursts(rng, n, sr, rng.uniform(1.5, 3.5), 0.3, group)


def cat_meow(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Meows: a harmonic tone rising then falling (400-1000 Hz), 0.4-1 s."""

    def meow() -> FloatArray:
        m = _seconds(rng, 0.4, 1.0, sr)
        u = np.linspace(0.0, 1.0, m)
        f0 = rng.uniform(400.0, 1000.0) * (1.0 + 0.4 * np.sin(np.pi * u**0.7))
        out: np.ndarray = _harmonics(f0, 0.7 ** np.arange(10), sr) * _hann(m)
        return out

    return _bursts(rng, n, sr, rng.uniform(1.5, 3.0), 0.3, meow)


def frog(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Croaks: a low harmonic stack (150-500 Hz) pulsed at 20-60 Hz, 0.2-0.6 s, repeated."""
    f0, pulse_hz = rng.uniform(150.0, 500.0), rng.uniform(20.0, 60.0)
    croak_s = rng.uniform(0.2, 0.6)

    def croak() -> FloatArray:
        m = round(croak_s * sr)
        pulses = np.clip(np.sin(2 * np.pi * pulse_hz * np.arange(m) / sr), 0.0, None) ** 2
        out: np.ndarray = _harmonics(np.full(m, f0), 0.8 ** np.arange(12), sr) * pulses * _hann(m)
        return out

    return _bursts(rng, n, sr, croak_s + rng.uniform(0.2, 1.0), 0.15, croak)


def cricket(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Chirps of three to six 10-25 ms pulses of a 3-7 kHz carrier, one to four chirps per s."""
    carrier_hz = rng.uniform(3000.0, 7000.0)
    pulse_s, pulses = rng.uniform(0.01, 0.025), int(rng.integers(3, 7))

    def chirp() -> FloatArray:
        m = round(pulse_s * 2 * pulses * sr)
        t = np.arange(m) / sr
        gate = (np.mod(t, 2 * pulse_s) < pulse_s).astype(np.float32)
        return np.sin(2 * np.pi * carrier_hz * t).astype(np.float32) * gate

    return _bursts(rng, n, sr, 1.0 / rng.uniform(1.0, 4.0), 0.05, chirp)


def cicada(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """A sustained buzz: a 4-9 kHz noise band amplitude-modulated at 80-250 Hz, swelling and fading."""
    low = rng.uniform(3500.0, 6500.0)
    band = band_noise(rng, n, low, low + rng.uniform(1000.0, 3000.0), sr)
    buzz = 0.5 * (1.0 + np.sin(2 * np.pi * rng.uniform(80.0, 250.0) * np.arange(n) / sr))
    swell = np.clip(1.0 + _contour(rng, n, 0.5, sr), 0.0, None)
    return (band * buzz * swell).astype(np.float32)


# --------------------------------------------------------------------------------------- music
def piano(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Struck notes on a random scale (MIDI 40-90): decaying harmonics, 2-5 notes per s."""
    root = rng.integers(40, 78)

    def note() -> FloatArray:
        m = _seconds(rng, 0.6, 1.5, sr)
        hz = 440.0 * 2 ** ((root + rng.choice([0, 2, 4, 5, 7, 9, 11, 12]) - 69) / 12.0)
        out: np.ndarray = _harmonics(np.full(m, hz), 1.0 / np.arange(1, 9) ** 1.5, sr) * _decay(
            m, 0.004, 0.3, sr
        )
        return out

    return _bursts(rng, n, sr, 1.0 / rng.uniform(2.0, 5.0), 0.2, note)


def violin(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Bowed notes: a bright sawtooth-like stack (G3-A6) with 5-6 Hz vibrato and slow attacks."""

    def note() -> FloatArray:
        m = _seconds(rng, 0.4, 1.4, sr)
        hz = 196.0 * 2 ** (rng.uniform(0.0, 3.2))
        vibrato = 1.0 + 0.006 * np.sin(2 * np.pi * rng.uniform(5.0, 6.5) * np.arange(m) / sr)
        out: np.ndarray = _harmonics(hz * vibrato, 1.0 / np.arange(1, 16), sr) * _hann(m)
        return out

    return _bursts(rng, n, sr, rng.uniform(0.4, 1.2), 0.15, note)


def flute(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Breathy near-sine notes (500-2000 Hz) with weak harmonics and breath noise."""

    def note() -> FloatArray:
        m = _seconds(rng, 0.3, 1.0, sr)
        hz = rng.uniform(500.0, 2000.0)
        tone = _harmonics(np.full(m, hz), np.array([1.0, 0.2, 0.08]), sr)
        breath = 0.15 * band_noise(rng, m, hz * 0.8, hz * 3.0, sr)
        out: np.ndarray = (tone + breath) * _hann(m)
        return out

    return _bursts(rng, n, sr, rng.uniform(0.3, 1.0), 0.2, note)


def bell(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Bell strikes: inharmonic partials (church-bell ratios) on a long decay."""
    ratios = np.array([0.5, 1.0, 1.19, 1.5, 2.0, 2.5, 2.67, 3.0, 4.0])
    hz = rng.uniform(300.0, 2000.0)

    def strike() -> FloatArray:
        m = _seconds(rng, 1.5, 3.0, sr)
        t = np.arange(m) / sr
        partials = sum(
            np.sin(2 * np.pi * hz * r * t) * np.exp(-t * r / 1.2) for r in ratios if hz * r < 10000
        )
        out: np.ndarray = np.asarray(partials, dtype=np.float32) * _decay(m, 0.002, 5.0, sr)
        return out

    return _bursts(rng, n, sr, rng.uniform(1.0, 2.5), 0.1, strike)


def drum(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """A beat (80-160 bpm): a pitched thump falling in pitch, with a noisy snare on the off-beats."""
    beat_s = 60.0 / rng.uniform(80.0, 160.0)
    m = round(0.25 * sr)
    t = np.arange(m) / sr
    kick = np.sin(2 * np.pi * np.cumsum(60.0 + 120.0 * np.exp(-t / 0.03)) / sr) * _decay(m, 0.002, 0.08, sr)
    snare = band_noise(rng, m, 1000.0, 8000.0, sr) * _decay(m, 0.001, 0.05, sr)
    track = np.zeros(n, dtype=np.float32)
    for i, onset_s in enumerate(np.arange(rng.uniform(0.0, beat_s), n / sr, beat_s)):
        _add(track, (kick if i % 2 == 0 else 0.6 * snare).astype(np.float32), round(onset_s * sr))
    return track


# ------------------------------------------------------------------------------ sounds of things
def siren(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """An emergency siren: a tone wailing (1-4 s) or yelping (0.15-0.4 s) between 600 and 1800 Hz."""
    low, high = rng.uniform(600.0, 900.0), rng.uniform(1200.0, 1800.0)
    period_s = rng.uniform(1.0, 4.0) if rng.random() < 0.5 else rng.uniform(0.15, 0.4)
    sweep = 0.5 * (1.0 - np.cos(2 * np.pi * np.arange(n) / sr / period_s))
    return _harmonics(low + (high - low) * sweep, np.array([1.0, 0.4, 0.2, 0.1]), sr)


def telephone(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """A ringing telephone: two tones alternating at ~20 Hz, rings of 1-2 s every 3-4 s."""
    t = np.arange(n) / sr
    first, second = rng.uniform(700.0, 1100.0), rng.uniform(1100.0, 1600.0)
    alternate = np.mod(t * rng.uniform(15.0, 25.0), 1.0) < 0.5
    tone = np.where(alternate, np.sin(2 * np.pi * first * t), np.sin(2 * np.pi * second * t))
    ring_s, period_s = rng.uniform(1.0, 2.0), rng.uniform(3.0, 4.0)
    ringing = np.mod(t + rng.uniform(0.0, period_s), period_s) < ring_s
    return (tone * ringing).astype(np.float32)


def beep(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """An alarm: square-ish 1.5-4.5 kHz beeps of 0.05-0.3 s, regular."""
    hz, on_s = rng.uniform(1500.0, 4500.0), rng.uniform(0.05, 0.3)

    def one() -> FloatArray:
        m = round(on_s * sr)
        return _harmonics(np.full(m, hz), np.array([1.0, 0.0, 1 / 3, 0.0, 1 / 5]), sr) * _hann(m) ** 0.2

    return _bursts(rng, n, sr, on_s + rng.uniform(0.05, 0.6), 0.01, one)


def vehicle_horn(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Car horn blasts: a bright 300-500 Hz (often two-note) stack, 0.2-1.2 s."""
    hz = rng.uniform(300.0, 500.0)

    def blast() -> FloatArray:
        m = _seconds(rng, 0.2, 1.2, sr)
        stack = 0.85 ** np.arange(20)
        notes = _harmonics(np.full(m, hz), stack, sr) + _harmonics(np.full(m, hz * 1.26), stack, sr)
        out: FloatArray = notes * _hann(m)
        return out

    return _bursts(rng, n, sr, rng.uniform(1.0, 3.0), 0.4, blast)


def engine(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """An idling or revving engine: a 25-90 Hz firing harmonic stack with rumble, varying speed."""
    f0 = rng.uniform(25.0, 90.0) * np.exp(0.15 * _contour(rng, n, 0.4, sr))
    return _harmonics(f0, 0.9 ** np.arange(40), sr) + 0.3 * band_noise(rng, n, 30.0, 1500.0, sr)


def power_tool(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """A chainsaw or drill: a buzzy 80-250 Hz sawtooth stack with noise, revving up and down."""
    f0 = rng.uniform(80.0, 250.0) * np.exp(0.25 * np.tanh(_contour(rng, n, 0.8, sr)))
    buzz = _harmonics(f0, 1.0 / np.arange(1, 40), sr)
    return buzz + 0.4 * band_noise(rng, n, 500.0, 8000.0, sr)


def knock(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Knocks on wood or hammering: short resonant clicks (a damped 200-2000 Hz mode), in groups."""
    hz = rng.uniform(200.0, 2000.0)

    def hit() -> FloatArray:
        m = round(0.08 * sr)
        t = np.arange(m) / sr
        mode = np.sin(2 * np.pi * hz * t) * np.exp(-t / 0.012)
        click = band_noise(rng, m, 1000.0, 9000.0, sr) * np.exp(-t / 0.002)
        return (mode + 0.5 * click).astype(np.float32)

    return _bursts(rng, n, sr, rng.uniform(0.12, 0.6), 0.2, hit)


# ------------------------------------------------------------------------------- natural sounds
def rain(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Rain: a broadband hiss with dense droplet clicks."""
    hiss = band_noise(rng, n, rng.uniform(300.0, 1500.0), 10000.0, sr)
    drops = np.zeros(n, dtype=np.float32)
    count = int(n / sr * rng.uniform(30.0, 150.0))
    drops[rng.integers(0, n, size=count)] = rng.uniform(2.0, 8.0, size=count)
    drops = np.convolve(drops, np.exp(-np.arange(round(0.002 * sr)) / (0.0004 * sr)), mode="same")
    out: np.ndarray = (hiss + drops * band_noise(rng, n, 2000.0, 10000.0, sr)).astype(np.float32)
    return out


def wind(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Wind: low-passed rumble in slow gusts (the bird corpus's wind model)."""
    return wind_noise(n, sr, rng)


def stream(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Running water: a band of noise with many short rising bubble tones (300-2500 Hz)."""
    wash = band_noise(rng, n, 200.0, rng.uniform(2000.0, 6000.0), sr)

    def bubble() -> FloatArray:
        m = _seconds(rng, 0.01, 0.04, sr)
        hz = rng.uniform(300.0, 2500.0) * np.linspace(1.0, 1.6, m)
        out: np.ndarray = 2.0 * _harmonics(hz, np.array([1.0]), sr) * _decay(m, 0.001, 0.01, sr)
        return out

    out: np.ndarray = wash + _bursts(rng, n, sr, rng.uniform(0.02, 0.08), 0.8, bubble)
    return out


def thunder(rng: np.random.Generator, n: int, sr: int) -> FloatArray:
    """Thunder: a low (< 300 Hz) noise rumble with a sharp crack onset and a long, rolling decay."""
    m = min(n, _seconds(rng, 3.0, 8.0, sr))
    rumble = band_noise(rng, m, 20.0, rng.uniform(150.0, 300.0), sr)
    crack = band_noise(rng, m, 300.0, 6000.0, sr) * _decay(m, 0.005, 0.15, sr)
    rolling = _decay(m, 0.1, rng.uniform(1.0, 3.0), sr) * np.clip(
        1.0 + 0.5 * _contour(rng, m, 2.0, sr), 0, None
    )
    track = np.zeros(n, dtype=np.float32)
    _add(track, (rumble * rolling + 0.5 * crack).astype(np.float32), int(rng.integers(0, max(1, n - m // 2))))
    return track


SOUND_CLASSES: dict[str, Generator] = {
    "Speech": speech,
    "Whistling": whistling,
    "Walk, footsteps": footsteps,
    "Clapping": clapping,
    "Bark": dog_bark,
    "Meow": cat_meow,
    "Frog": frog,
    "Cricket": cricket,
    "Cicada": cicada,
    "Piano": piano,
    "Violin, fiddle": violin,
    "Flute": flute,
    "Bell": bell,
    "Drum": drum,
    "Siren": siren,
    "Telephone bell ringing": telephone,
    "Beep, bleep": beep,
    "Vehicle horn, car horn, honking": vehicle_horn,
    "Engine": engine,
    "Power tool": power_tool,
    "Knock": knock,
    "Rain": rain,
    "Wind": wind,
    "Stream": stream,
    "Thunder": thunder,
}


def render_stem(class_index: int, seed: int, index: int, seconds: float, sample_rate_hz: int) -> np.ndarray:
    """Recording ``index`` of class ``SOUND_CLASSES[class_index]``: ``(samples,) float32``, unit RMS where
    it sounds (samples above -60 dB of its peak); a pure function of its arguments."""
    rng = np.random.default_rng([seed, class_index, index])
    generate = list(SOUND_CLASSES.values())[class_index]
    wave = generate(rng, round(seconds * sample_rate_hz), sample_rate_hz).astype(np.float32)
    sounding = np.abs(wave) > 1e-3 * (float(np.max(np.abs(wave))) or 1.0)
    rms = float(np.sqrt(np.mean(np.square(wave[sounding])))) if sounding.any() else 1.0
    return wave / np.float32(max(rms, 1e-9))
