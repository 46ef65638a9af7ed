"""Background noise shared by the generated corpora: coloured noise and gusty wind, float32, unit RMS."""

from __future__ import annotations

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft, rfftfreq


def colored_noise(num_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectrum ~ 1 / f**exponent (1 pink, 2 brown), unit RMS, ``(num_samples,)``."""
    length = next_fast_len(num_samples, real=True)
    spectrum = rfft(rng.standard_normal(length, dtype=np.float32))  # single precision: 2x faster
    frequency = rfftfreq(length).astype(np.float32)  # cycles per sample
    spectrum *= np.maximum(frequency, 1e-3) ** (-exponent / 2)  # flat below ~20-50 Hz: no DC drift
    spectrum[0] = 0.0
    noise = irfft(spectrum, length)[:num_samples]
    out: np.ndarray = (noise / (np.std(noise) + 1e-12)).astype(np.float32)
    return out


def wind_noise(num_samples: int, sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """Gusty wind: brown noise low-passed at 150-400 Hz, amplitude-modulated by 0.1-0.5 Hz gusts.

    Unit RMS, ``(num_samples,)``.
    """
    length = next_fast_len(num_samples, real=True)
    spectrum = rfft(rng.standard_normal(length, dtype=np.float32))
    frequency_hz = rfftfreq(length, 1 / sample_rate_hz).astype(np.float32)
    cutoff_hz = rng.uniform(150.0, 400.0)
    spectrum *= 1.0 / (np.maximum(frequency_hz, 5.0) * (1.0 + (frequency_hz / cutoff_hz) ** 4))
    spectrum[0] = 0.0
    rumble = irfft(spectrum, length)[:num_samples]
    gust_hz = rng.uniform(0.1, 0.5)
    knots = rng.normal(0.0, 0.8, size=int(num_samples / sample_rate_hz * gust_hz) + 2)
    gusts = np.exp(np.interp(np.linspace(0, len(knots) - 1, num_samples), np.arange(len(knots)), knots))
    wind = rumble * gusts
    out: np.ndarray = (wind / (np.std(wind) + 1e-12)).astype(np.float32)
    return out


def band_noise(
    rng: np.random.Generator, num_samples: int, low_hz: float, high_hz: float, sample_rate_hz: int
) -> np.ndarray:
    """Gaussian noise band-limited to ``[low_hz, high_hz]`` (brick-wall in the FFT), unit RMS, ``(n,)``."""
    length = next_fast_len(max(num_samples, 2), real=True)
    spectrum = rfft(rng.standard_normal(length, dtype=np.float32))
    frequency_hz = rfftfreq(length, 1 / sample_rate_hz)
    spectrum[(frequency_hz < low_hz) | (frequency_hz > high_hz)] = 0.0
    noise = irfft(spectrum, length)[:num_samples]
    out: np.ndarray = (noise / (np.std(noise) + 1e-12)).astype(np.float32)
    return out
