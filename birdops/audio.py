"""Audio decoding and windowing: numpy, soundfile and scipy only (serving imports this, never torch).

Waveforms are float32 mono arrays in [-1, 1], shape ``(samples,)``; they are values, never changed
in place.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

# peak below which a decoded file is treated as silent (about -100 dBFS)
SILENCE_PEAK = 1e-5


class AudioError(ValueError):
    """A recording cannot be used; the message names the file and the reason."""


def load_audio(path: str | Path, sample_rate_hz: int) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sample_rate_hz``: shape ``(samples,)``.

    Raises :class:`AudioError` naming the file when it is unreadable, empty or silent.
    """
    path = Path(path)
    return _decode(path, sample_rate_hz, str(path))


def decode_bytes(payload: bytes, sample_rate_hz: int, name: str = "<upload>") -> np.ndarray:
    """Like :func:`load_audio` for an in-memory file (an HTTP upload); ``name`` is only for messages."""
    if not payload:
        raise AudioError(f"{name}: empty file")
    return _decode(io.BytesIO(payload), sample_rate_hz, name)


def _decode(source: Path | io.BytesIO, sample_rate_hz: int, name: str) -> np.ndarray:
    """soundfile's decoding of ``source`` (a path or an in-memory file), then :func:`_clean`."""
    try:
        data, source_rate_hz = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
        raise AudioError(f"{name}: cannot decode audio: {err}") from err
    return _clean(data, source_rate_hz, sample_rate_hz, name)


def _clean(data: np.ndarray, source_rate_hz: int, sample_rate_hz: int, name: str) -> np.ndarray:
    if data.shape[0] == 0:
        raise AudioError(f"{name}: no audio samples (empty or truncated file)")
    mono = data.mean(axis=1)  # (samples,)
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if float(np.max(np.abs(mono))) < SILENCE_PEAK:
        raise AudioError(f"{name}: audio is silent")
    return resample(mono, source_rate_hz, sample_rate_hz)


def resample(wave: np.ndarray, source_rate_hz: int, target_rate_hz: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from ``source_rate_hz`` to ``target_rate_hz``."""
    if source_rate_hz == target_rate_hz:
        return wave.astype(np.float32, copy=False)
    ratio = Fraction(target_rate_hz, source_rate_hz).limit_denominator(1000)
    out = resample_poly(wave, ratio.numerator, ratio.denominator)
    return np.asarray(out, dtype=np.float32)


def frame_windows(
    wave: np.ndarray, sample_rate_hz: int, window_seconds: float, hop_seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``wave`` into windows: ``(windows (N, window_samples), starts_s (N,))``.

    Windows start every ``hop_seconds``; the last one is zero-padded, so every sample is covered and a
    recording shorter than one window gives a single padded window.
    """
    window_samples = round(window_seconds * sample_rate_hz)
    hop_samples = round(hop_seconds * sample_rate_hz)
    if window_samples <= 0 or hop_samples <= 0:
        raise ValueError("window_seconds and hop_seconds must be positive")
    n = max(1, int(np.ceil(max(len(wave) - window_samples, 0) / hop_samples)) + 1)
    padded = np.zeros((n - 1) * hop_samples + window_samples, dtype=np.float32)
    padded[: len(wave)] = wave
    starts = np.arange(n) * hop_samples
    windows = np.stack([padded[s : s + window_samples] for s in starts])
    return windows, starts / sample_rate_hz
