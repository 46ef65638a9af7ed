"""Activity detection picks the clips where the calls are."""

from __future__ import annotations

import itertools

import numpy as np

from birdops.config import ActivityParams
from birdops.features.activity import choose_segments, frame_energy_db

RATE_HZ = 16000
PARAMS = ActivityParams(highpass_hz=500.0, frame_seconds=0.05, min_snr_db=3.0)


def recording(
    seconds: float, calls: list[tuple[float, float]], noise: float = 0.01, seed: int = 0
) -> np.ndarray:
    """Background noise plus a 3 kHz call for each ``(start_s, duration_s)``: ``(samples,)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE_HZ)) / RATE_HZ
    wave = noise * rng.standard_normal(t.size)
    for start_s, duration_s in calls:
        inside = (t >= start_s) & (t < start_s + duration_s)
        wave += 0.3 * np.sin(2 * np.pi * 3000 * t) * inside
    return wave.astype(np.float32)


def covers(start_s: float, clip_seconds: float, call: tuple[float, float]) -> bool:
    return start_s <= call[0] + 1e-9 and call[0] + call[1] <= start_s + clip_seconds + 1e-9


def test_the_window_covers_a_call_at_a_known_time() -> None:
    call = (11.3, 1.2)
    starts = choose_segments(recording(20.0, [call]), RATE_HZ, 4.0, 1, PARAMS)
    assert len(starts) == 1 and covers(starts[0], 4.0, call)


def test_several_calls_give_sorted_non_overlapping_windows_over_each() -> None:
    calls = [(2.0, 1.0), (9.5, 0.8), (16.0, 1.5)]
    wave = recording(24.0, calls)
    starts = choose_segments(wave, RATE_HZ, 4.0, 3, PARAMS)
    assert starts == sorted(starts) and len(starts) == 3
    assert all(b - a >= 4.0 for a, b in itertools.pairwise(starts))
    for call in calls:
        assert any(covers(s, 4.0, call) for s in starts), (call, starts)
    assert all(0.0 <= s <= len(wave) / RATE_HZ - 4.0 for s in starts)
    assert starts == choose_segments(wave, RATE_HZ, 4.0, 3, PARAMS)  # deterministic


def test_only_windows_over_the_noise_floor_are_kept() -> None:
    # silence except one call: one window qualifies, the rest is below min_snr_db
    call = (7.0, 0.5)
    wave = recording(30.0, [call], noise=0.0)
    starts = choose_segments(wave, RATE_HZ, 4.0, 3, PARAMS)
    assert len(starts) == 1 and covers(starts[0], 4.0, call)


def test_energy_below_the_high_pass_is_ignored() -> None:
    t = np.arange(20 * RATE_HZ) / RATE_HZ
    rumble = 0.8 * np.sin(2 * np.pi * 100 * t) * (t < 5.0)  # loud, but below 500 Hz
    wave = (recording(20.0, [(14.0, 1.0)]) + rumble).astype(np.float32)
    starts = choose_segments(wave, RATE_HZ, 4.0, 1, PARAMS)
    assert covers(starts[0], 4.0, (14.0, 1.0))
    energy = frame_energy_db(wave, RATE_HZ, 0.05, 500.0)  # (400,)
    assert energy.shape == (400,) and energy[:90].max() < energy[285:295].max() - 20


def test_without_any_active_window_the_single_best_is_returned() -> None:
    starts = choose_segments(recording(20.0, []), RATE_HZ, 4.0, 3, PARAMS)  # stationary noise only
    assert len(starts) == 1
    assert choose_segments(np.zeros(20 * RATE_HZ, dtype=np.float32), RATE_HZ, 4.0, 3, PARAMS) == [0.0]


def test_a_recording_shorter_than_a_clip_gives_one_clip_at_zero() -> None:
    assert choose_segments(recording(2.5, [(1.0, 0.5)]), RATE_HZ, 4.0, 3, PARAMS) == [0.0]
    assert choose_segments(recording(4.0, [(1.0, 0.5)]), RATE_HZ, 4.0, 3, PARAMS) == [0.0]


def test_a_call_at_the_very_end_is_reachable() -> None:
    call = (9.3, 0.65)  # ends on the last sample of a recording that is not a whole number of frames
    wave = recording(9.95, [call])
    starts = choose_segments(wave, RATE_HZ, 4.0, 1, PARAMS)
    assert covers(starts[0], 4.0, call) and starts[0] + 4.0 <= 9.95 + 1e-9
