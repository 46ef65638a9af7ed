"""Activity detection: which ``clip_seconds`` windows of a recording to cache (numpy/scipy only).

A recording is cut into frames of ``frame_seconds``; each frame's energy is taken above the
high-pass band (``highpass_hz``), where birds sing and wind, traffic and handling noise mostly do
not. The noise floor is a low percentile of the frame energies. Windows of ``clip_seconds`` that
start on a frame boundary are scored by their mean energy in dB over that floor, and up to
``max_clips`` non-overlapping windows with the highest score are chosen greedily, keeping those at
least ``min_snr_db`` over the floor (the single best window when none is). Everything is a pure
function of the waveform and the parameters: the same recording always gives the same clips.
The clips themselves are cut at these starts by :func:`birdops.windows.clips_at`.
"""

from __future__ import annotations

import numpy as np
from scipy.fft import rfft, rfftfreq

from birdops.config import ActivityParams
from birdops.windows import seconds_to_samples

# the noise floor: this percentile of the frame energies (quiet frames between calls)
NOISE_FLOOR_PERCENTILE = 10.0
# energies are floored here (power per sample, about -200 dBFS) so digital silence stays finite
_ENERGY_FLOOR = 1e-20


def frame_energy_db(
    wave: np.ndarray, sample_rate_hz: int, frame_seconds: float, highpass_hz: float
) -> np.ndarray:
    """Mean power per sample above ``highpass_hz`` of each whole frame, in dB: ``(n_frames,)``.

    ``wave`` is ``(samples,)``; trailing samples that do not fill a frame are ignored.
    """
    frame_samples = max(1, seconds_to_samples(frame_seconds, sample_rate_hz))
    n_frames = len(wave) // frame_samples
    frames = np.asarray(wave[: n_frames * frame_samples], dtype=np.float64)
    frames = frames.reshape(n_frames, frame_samples)  # (N, L)
    spectrum = np.abs(rfft(frames, axis=1)) ** 2  # (N, L // 2 + 1)
    keep = rfftfreq(frame_samples, 1.0 / sample_rate_hz) >= highpass_hz  # (L // 2 + 1,)
    # Parseval: the mean power of the band-passed frame, up to the one-sided factor 2
    power = 2.0 * spectrum[:, keep].sum(axis=1) / frame_samples**2  # (N,)
    out: np.ndarray = 10.0 * np.log10(np.maximum(power, _ENERGY_FLOOR))
    return out


def choose_segments(
    wave: np.ndarray,
    sample_rate_hz: int,
    clip_seconds: float,
    max_clips: int,
    params: ActivityParams,
) -> list[float]:
    """Start times in seconds (sorted) of up to ``max_clips`` non-overlapping, most active clips.

    A recording no longer than one clip gives ``[0.0]`` (the clip is then zero-padded). Windows lie
    inside the recording and start on multiples of ``frame_seconds`` (a clip that would need a later
    start is taken from the end, so the recording's last sample can be covered).
    """
    clip_samples = seconds_to_samples(clip_seconds, sample_rate_hz)
    frame_samples = max(1, seconds_to_samples(params.frame_seconds, sample_rate_hz))
    if len(wave) <= clip_samples:
        return [0.0]
    energy_db = frame_energy_db(wave, sample_rate_hz, params.frame_seconds, params.highpass_hz)
    frames_per_clip = max(1, min(clip_samples // frame_samples, len(energy_db)))
    scores_db = _window_scores_db(energy_db, frames_per_clip)  # (W,) one per start frame
    starts = np.arange(len(scores_db)) * frame_samples  # (W,) samples
    last_start = len(wave) - clip_samples
    starts = np.minimum(starts, last_start)
    if starts[-1] < last_start:  # the tail frames: a window that ends on the last sample
        starts = np.append(starts, last_start)
        scores_db = np.append(scores_db, scores_db[-1])
    floor_db = float(np.percentile(energy_db, NOISE_FLOOR_PERCENTILE))
    picked = _pick_greedy(scores_db - floor_db, starts, clip_samples, max_clips, params.min_snr_db)
    return sorted(float(starts[i]) / sample_rate_hz for i in picked)


def _window_scores_db(energy_db: np.ndarray, frames_per_window: int) -> np.ndarray:
    """Mean linear power of every run of ``frames_per_window`` frames, in dB: ``(N - w + 1,)``."""
    power = 10.0 ** (energy_db / 10.0)  # (N,)
    cumulative = np.concatenate([[0.0], np.cumsum(power)])  # (N + 1,)
    mean_power = (cumulative[frames_per_window:] - cumulative[:-frames_per_window]) / frames_per_window
    out: np.ndarray = 10.0 * np.log10(np.maximum(mean_power, _ENERGY_FLOOR))
    return out


def _pick_greedy(
    snr_db: np.ndarray, starts: np.ndarray, clip_samples: int, max_clips: int, min_snr_db: float
) -> list[int]:
    """Indices of the best non-overlapping windows, best first; ties go to the earliest start."""
    order = np.argsort(-snr_db, kind="stable")  # (W,)
    picked: list[int] = []
    for index in order:
        if len(picked) == max_clips or (picked and snr_db[index] < min_snr_db):
            break
        if all(abs(int(starts[index]) - int(starts[j])) >= clip_samples for j in picked):
            picked.append(int(index))
        if snr_db[picked[0]] < min_snr_db:  # nothing qualifies: the single best window only
            break
    return picked
