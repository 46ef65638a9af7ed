"""Procedural bird voices: each species sings its own syllables, recordings vary around them.

A :class:`Voice` fixes what a species sounds like: a frequency band inside ~1-10 kHz, the shape of the
frequency sweep of a song syllable (``up``, ``down``, ``chevron``, ``dip``, ``trill``, ``whistle``),
syllable and gap durations, syllables per phrase, the pitch drift across a phrase, harmonics, and a short
call note. :func:`render_voice` turns a voice into a waveform for one recording, with that recording's
pitch and tempo jitter, phrase timing and amplitude, and returns which samples carry the voice (used to
set the signal-to-noise ratio over the sound, not over the silences).

Everything is numpy, vectorised per syllable; waveforms are float32, shape ``(samples,)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

Shape = Literal["up", "down", "chevron", "dip", "trill", "whistle"]
SHAPES: tuple[Shape, ...] = ("up", "down", "chevron", "dip", "trill", "whistle")
SoundType = Literal["song", "call"]

MIN_VOICE_HZ = 1000.0
MAX_VOICE_HZ = 10000.0


@dataclass(frozen=True)
class Voice:
    """What one species sounds like (before a recording's own jitter)."""

    low_hz: float  # lowest fundamental of a song syllable
    bandwidth_hz: float  # extent of the fundamental's sweep above low_hz
    shape: Shape
    syllable_seconds: float
    gap_seconds: float  # silence between syllables of a phrase
    syllables_per_phrase: int
    phrase_gap_seconds: float  # silence between phrases
    trill_rate_hz: float  # frequency-modulation rate of a ``trill`` syllable
    harmonics: tuple[float, ...]  # amplitudes of harmonics 2, 3, ... relative to the fundamental
    pitch_drift: float  # fundamental ratio from one syllable to the next within a phrase
    call_hz: float  # centre of the call note
    call_seconds: float
    song_share: float  # probability that a recording of this species is a song (else calls)

    @property
    def high_hz(self) -> float:
        """Top of the fundamental's sweep."""
        return self.low_hz + self.bandwidth_hz


@dataclass(frozen=True)
class Performance:
    """How a voice is performed in one recording."""

    sound_type: SoundType
    pitch_ratio: float  # multiplies every frequency (individual / regional variation)
    tempo_ratio: float  # multiplies every duration
    brightness: float  # in (0, 1]: harmonic k is scaled by brightness**(k - 1) (distance, habitat)
    start_seconds: float  # first phrase onset


def draw_voice(rng: np.random.Generator) -> Voice:
    """A random species voice with its band inside [1, 10] kHz."""
    shape: Shape = SHAPES[int(rng.integers(len(SHAPES)))]
    low_hz = float(np.exp(rng.uniform(np.log(1200.0), np.log(6500.0))))
    bandwidth_hz = float(min(low_hz * rng.uniform(0.15, 0.9), MAX_VOICE_HZ - low_hz))
    if shape == "whistle":
        bandwidth_hz = float(low_hz * rng.uniform(0.03, 0.1))  # a nearly pure tone
    syllable_seconds = float(np.exp(rng.uniform(np.log(0.04), np.log(0.35))))
    if shape == "trill":
        syllable_seconds = float(rng.uniform(0.3, 1.2))
    call_hz = float(np.clip(low_hz * rng.uniform(0.8, 1.6), MIN_VOICE_HZ * 1.2, MAX_VOICE_HZ * 0.85))
    return Voice(
        low_hz=low_hz,
        bandwidth_hz=max(bandwidth_hz, 60.0),
        shape=shape,
        syllable_seconds=syllable_seconds,
        gap_seconds=float(np.exp(rng.uniform(np.log(0.02), np.log(0.25)))),
        syllables_per_phrase=int(rng.integers(1, 3) if shape == "trill" else rng.integers(1, 11)),
        phrase_gap_seconds=float(rng.uniform(0.6, 3.0)),
        trill_rate_hz=float(rng.uniform(12.0, 45.0)),
        harmonics=tuple(float(a) for a in rng.uniform(0.0, [0.6, 0.3, 0.15])),
        pitch_drift=float(rng.uniform(0.95, 1.05)),
        call_hz=call_hz,
        call_seconds=float(rng.uniform(0.02, 0.09)),
        song_share=float(rng.uniform(0.4, 0.95)),
    )


def confusable_voice(voice: Voice, rng: np.random.Generator) -> Voice:
    """A sister species' voice: same syllable shape and harmonics, pitch 5-10 % and tempo 8-15 % off.

    The offsets are about twice a recording's own pitch jitter and comparable to its tempo jitter, so the
    two species overlap at low SNR without being identical.
    """
    pitch = float(1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.10))
    tempo = float(1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.15))
    low_hz = float(np.clip(voice.low_hz * pitch, MIN_VOICE_HZ, MAX_VOICE_HZ - voice.bandwidth_hz * pitch))
    return replace(
        voice,
        low_hz=low_hz,
        bandwidth_hz=voice.bandwidth_hz * pitch,
        syllable_seconds=voice.syllable_seconds * tempo,
        gap_seconds=voice.gap_seconds * tempo,
        syllables_per_phrase=max(1, voice.syllables_per_phrase + int(rng.integers(-1, 2))),
        trill_rate_hz=voice.trill_rate_hz / tempo,
        call_hz=float(np.clip(voice.call_hz * pitch, MIN_VOICE_HZ, MAX_VOICE_HZ)),
    )


def draw_performance(voice: Voice, duration_seconds: float, rng: np.random.Generator) -> Performance:
    """A recording's jitter around ``voice``: pitch ~ +-3 %, tempo ~ +-8 % (one sigma)."""
    sound_type: SoundType = "song" if rng.random() < voice.song_share else "call"
    return Performance(
        sound_type=sound_type,
        pitch_ratio=float(np.exp(rng.normal(0.0, 0.03))),
        tempo_ratio=float(np.exp(rng.normal(0.0, 0.08))),
        brightness=float(rng.uniform(0.35, 1.0)),
        start_seconds=float(rng.uniform(0.0, min(2.0, 0.3 * duration_seconds))),
    )


def render_voice(
    voice: Voice, performance: Performance, num_samples: int, sample_rate_hz: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The voice's track for one recording and where it sounds.

    Returns ``(wave (num_samples,) float32, active (num_samples,) bool)``; phrase amplitudes vary by
    about +-3 dB and some phrases of a bout are skipped. At least one phrase is always present.
    """
    wave = np.zeros(num_samples, dtype=np.float32)
    active = np.zeros(num_samples, dtype=bool)
    for onset_s, frequencies, amplitude in _note_events(
        voice, performance, num_samples / sample_rate_hz, rng
    ):
        note = _note(frequencies, voice.harmonics, performance.brightness, sample_rate_hz)
        start = round(onset_s * sample_rate_hz)
        stop = min(start + len(note), num_samples)
        if stop <= start:
            continue
        wave[start:stop] += amplitude * note[: stop - start]
        active[start:stop] = True
    return wave, active


def _note_events(
    voice: Voice, performance: Performance, duration_s: float, rng: np.random.Generator
) -> list[tuple[float, np.ndarray, float]]:
    """``(onset_s, fundamental_hz (samples,) as a function of time, amplitude)`` for every note."""
    events: list[tuple[float, np.ndarray, float]] = []
    time_s = min(performance.start_seconds, max(duration_s - 0.5, 0.0))
    while time_s < duration_s:
        skipped = bool(events) and rng.random() < 0.15  # a pause in the bout
        amplitude = float(10 ** (rng.normal(0.0, 3.0) / 20))
        phrase = _phrase(voice, performance, rng)
        for offset_s, contour in phrase:
            if not skipped:
                events.append((time_s + offset_s, contour, amplitude))
        phrase_s = phrase[-1][0] + len(phrase[-1][1]) / _CONTOUR_RATE_HZ
        gap_s = voice.phrase_gap_seconds * performance.tempo_ratio * float(np.exp(rng.normal(0.0, 0.3)))
        if performance.sound_type == "call":
            gap_s *= 0.6
        time_s += phrase_s + gap_s
    return events


# contours are sampled at this rate and interpolated to the audio rate in _note
_CONTOUR_RATE_HZ = 4000.0


def _phrase(
    voice: Voice, performance: Performance, rng: np.random.Generator
) -> list[tuple[float, np.ndarray]]:
    """Notes of one phrase: ``(offset_s from the phrase start, fundamental contour in Hz)``."""
    tempo, pitch = performance.tempo_ratio, performance.pitch_ratio
    if performance.sound_type == "call":
        count = int(rng.integers(1, 4))
        gap_s = 0.08 * tempo
        contours = [
            _call_contour(voice, pitch * float(np.exp(rng.normal(0, 0.01))), tempo) for _ in range(count)
        ]
    else:
        count = max(1, voice.syllables_per_phrase + int(rng.integers(-1, 2)))
        gap_s = voice.gap_seconds * tempo
        contours = [
            _song_contour(voice, pitch * voice.pitch_drift**i * float(np.exp(rng.normal(0, 0.01))), tempo)
            for i in range(count)
        ]
    notes, offset_s = [], 0.0
    for contour in contours:
        notes.append((offset_s, contour))
        offset_s += len(contour) / _CONTOUR_RATE_HZ + gap_s
    return notes


def _song_contour(voice: Voice, pitch: float, tempo: float) -> np.ndarray:
    """Fundamental frequency (Hz) of one song syllable, sampled at ``_CONTOUR_RATE_HZ``."""
    seconds = voice.syllable_seconds * tempo
    u = np.linspace(0.0, 1.0, max(8, round(seconds * _CONTOUR_RATE_HZ)))  # normalised time
    t = u * seconds
    sweep = {
        "up": u**1.5,
        "down": (1.0 - u) ** 1.5,
        "chevron": np.sin(np.pi * u),
        "dip": 1.0 - np.sin(np.pi * u),
        "trill": 0.5 * (1.0 + np.sin(2 * np.pi * voice.trill_rate_hz / tempo * t)),
        "whistle": 0.5 * (1.0 + np.sin(2 * np.pi * 6.0 * t)),  # slow vibrato
    }[voice.shape]
    return pitch * (voice.low_hz + voice.bandwidth_hz * sweep)


def _call_contour(voice: Voice, pitch: float, tempo: float) -> np.ndarray:
    """A short call note: a steep downward sweep around ``call_hz``."""
    u = np.linspace(0.0, 1.0, max(8, round(voice.call_seconds * tempo * _CONTOUR_RATE_HZ)))
    return pitch * voice.call_hz * (1.2 - 0.4 * u)


def _note(
    contour_hz: np.ndarray, harmonics: tuple[float, ...], brightness: float, sample_rate_hz: int
) -> np.ndarray:
    """Synthesize one note from its fundamental contour: harmonics below Nyquist, smooth envelope."""
    num = max(2, round(len(contour_hz) / _CONTOUR_RATE_HZ * sample_rate_hz))
    frequency = np.interp(np.linspace(0, len(contour_hz) - 1, num), np.arange(len(contour_hz)), contour_hz)
    phase = 2 * np.pi * np.cumsum(frequency) / sample_rate_hz  # (num,) radians
    wave = np.sin(phase)
    nyquist_hz = sample_rate_hz / 2
    for k, amplitude in enumerate(harmonics, start=2):
        weight = amplitude * brightness ** (k - 1)
        if weight > 1e-3 and k * float(frequency.max()) < 0.95 * nyquist_hz:
            wave += weight * np.sin(k * phase)
    u = np.linspace(0.0, 1.0, num)
    envelope = np.sin(np.pi * u) ** 0.7 * (1.0 - 0.3 * u)  # quick attack, slightly longer decay
    return (wave * envelope).astype(np.float32)
