"""Where background clips are cut, and training clips mixed with background audio (numpy only).

Background recordings hold no target species anywhere, so their clips are spread evenly over the whole
recording (:func:`spread_starts`) instead of chosen by activity. A training clip's noisy copy is the clip
plus a segment of a training background recording scaled to a drawn SNR (:func:`mix_at_snr`): the
clip's mean power over the segment's, in dB. Every draw comes from the generator the caller seeds
with the recording, so a copy does not depend on which worker made it or when.
"""

from __future__ import annotations

import numpy as np

from birdops.windows import seconds_to_samples

_POWER_FLOOR = 1e-12  # mean power of a digitally silent segment, so its gain stays finite


def spread_starts(num_samples: int, sample_rate_hz: int, clip_seconds: float, count: int) -> list[float]:
    """Start times in seconds of up to ``count`` clips spread evenly from the first sample to the last
    (non-overlapping when the recording is long enough; one start, 0, when it is no longer than a clip)."""
    clip_samples = seconds_to_samples(clip_seconds, sample_rate_hz)
    last = num_samples - clip_samples
    if last <= 0:
        return [0.0]
    count = max(1, min(count, num_samples // clip_samples))
    starts = np.linspace(0, last, count).round().astype(np.int64) if count > 1 else np.array([last // 2])
    return [int(start) / sample_rate_hz for start in starts]


def noise_segment(noise: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``num_samples`` consecutive samples of ``noise (L,)`` from a random start, the recording repeated
    end to start when it is shorter: ``(num_samples,)`` float32."""
    if len(noise) == 0:
        raise ValueError("empty background recording")
    start = int(rng.integers(0, len(noise)))
    reps = -(-(start + num_samples) // len(noise))  # ceil
    out: np.ndarray = np.tile(noise, reps)[start : start + num_samples].astype(np.float32)
    return out


def mix_at_snr(clip: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``clip + g * noise`` with ``g`` such that the clip's mean power is ``snr_db`` over the scaled
    noise's; both ``(S,)``, float32 out. A silent clip gets the noise at its own level (gain 1)."""
    clip_power = float(np.mean(np.square(clip, dtype=np.float64)))
    noise_power = max(float(np.mean(np.square(noise, dtype=np.float64))), _POWER_FLOOR)
    gain = np.sqrt(clip_power / (noise_power * 10 ** (snr_db / 10))) if clip_power > 0 else 1.0
    out: np.ndarray = (clip + np.float32(gain) * noise).astype(np.float32)
    return out
