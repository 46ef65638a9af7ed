"""Windows cut from waveforms (``birdops.windows``): chosen clips, even windows whole, in batches and
streamed, on real arrays whose windows are known."""

from __future__ import annotations

import numpy as np
import pytest

from birdops.audio import MIN_WINDOW_SHARE
from birdops.windows import (
    EvenWindows,
    StreamedWindows,
    clips_at,
    cut,
    even_batches,
    even_hop_seconds,
    even_windows,
    seconds_to_samples,
)

RATE_HZ = 8000
WINDOW_SECONDS = 1.0  # 8000 samples
LENGTHS = [0, 1, 3999, 8000, 8001, 12000, 16000, 16001, 47123]
HOPS_AND_BATCHES = [(1.0, 1), (0.5, 2), (0.3, 3), (1.0, 64), (2.5, 2)]


def noise(samples: int) -> np.ndarray:
    return np.random.default_rng(samples).normal(size=samples).astype(np.float32)


# ------------------------------------------------------------------------------------------- cut
def test_cut_copies_each_window_and_pads_past_the_end() -> None:
    wave = np.arange(10, dtype=np.float32) + 1
    windows = cut(wave, [0, 7, 10, 12], 4)
    assert windows.dtype == np.float32 and windows.shape == (4, 4)
    np.testing.assert_array_equal(windows, [[1, 2, 3, 4], [8, 9, 10, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    windows[0, 0] = -1
    assert wave[0] == 1  # copies: the waveform is never changed
    assert cut(wave, [], 4).shape == (0, 4)
    with pytest.raises(ValueError, match="before the waveform"):
        cut(wave, [-1], 4)


def test_seconds_round_to_the_nearest_sample() -> None:
    assert seconds_to_samples(4.0, 22050) == 88200
    assert seconds_to_samples(0.1, 22050) == 2205
    assert seconds_to_samples(1 / 3, 3) == 1
    assert seconds_to_samples(0.5123, 44100) == 22592  # 22592.43


# ---------------------------------------------------------------------------------- chosen clips
def test_clips_start_on_the_rounded_sample_and_are_zero_padded() -> None:
    rate_hz = 10
    wave = np.arange(1, 26, dtype=np.float32)  # 2.5 s
    clips = clips_at(wave, rate_hz, [0.0, 0.44, 0.46, 2.0, 3.0], 1.0)
    assert clips.dtype == np.float32 and clips.shape == (5, 10)
    np.testing.assert_array_equal(clips[0], np.arange(1, 11))
    np.testing.assert_array_equal(clips[1], np.arange(5, 15))  # 4.4 samples -> 4
    np.testing.assert_array_equal(clips[2], np.arange(6, 16))  # 4.6 samples -> 5
    np.testing.assert_array_equal(clips[3], [21, 22, 23, 24, 25, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(clips[4], np.zeros(10))
    assert clips_at(wave, rate_hz, [], 1.0).shape == (0, 10)


@pytest.mark.parametrize("rate_hz", [16000, 22050, 32000])
def test_clips_on_the_hop_grid_are_the_even_windows(rate_hz: int) -> None:
    """The two policies share one arithmetic: clips cut at the even windows' starts are those windows."""
    wave = noise(round(5.3 * rate_hz))
    windows, starts_s = even_windows(wave, rate_hz, 2.0, 0.5)
    np.testing.assert_array_equal(clips_at(wave, rate_hz, starts_s.tolist(), 2.0), windows)


# ---------------------------------------------------------------------------------- even windows
def test_even_windows_cover_every_sample() -> None:
    wave = np.arange(10, dtype=np.float32) + 1
    windows, starts = even_windows(wave, sample_rate_hz=2, window_seconds=2.0, hop_seconds=1.5)
    assert windows.shape == (3, 4)
    np.testing.assert_allclose(starts, [0.0, 1.5, 3.0])
    np.testing.assert_array_equal(windows[2], [7, 8, 9, 10])
    short, starts = even_windows(wave[:3], 2, 2.0, 1.0)
    np.testing.assert_array_equal(short, [[1, 2, 3, 0]])
    np.testing.assert_allclose(starts, [0.0])


@pytest.mark.parametrize(
    ("samples", "count"),
    [
        (0, 1),
        (round(0.5 * MIN_WINDOW_SHARE * RATE_HZ), 1),  # shorter than decoding accepts: still one window
        (3999, 1),  # a tail shorter than a window
        (8000, 1),  # exactly one window
        (8001, 2),  # one sample more: a second, padded window
        (12000, 2),
        (16000, 2),
    ],
)
def test_even_window_count_reaches_the_last_sample(samples: int, count: int) -> None:
    plan = EvenWindows.of(RATE_HZ, WINDOW_SECONDS, WINDOW_SECONDS)
    assert plan.count(samples) == count
    wave = noise(samples)
    windows, starts_s = even_windows(wave, RATE_HZ, WINDOW_SECONDS, WINDOW_SECONDS)
    assert windows.shape == (count, 8000)
    np.testing.assert_array_equal(starts_s, np.arange(count) * 1.0)
    np.testing.assert_array_equal(windows.reshape(-1)[:samples], wave)  # every sample, in order
    np.testing.assert_array_equal(windows.reshape(-1)[samples:], 0.0)  # then zeros


def test_a_hop_longer_than_the_window_skips_samples_and_pads_the_last() -> None:
    wave = noise(20000)
    windows, starts_s = even_windows(wave, RATE_HZ, 1.0, 2.5)  # starts 0, 20000 samples
    np.testing.assert_array_equal(starts_s, [0.0, 2.5])
    np.testing.assert_array_equal(windows[0], wave[:8000])
    np.testing.assert_array_equal(windows[1], np.zeros(8000))  # starts on the end: nothing left


def test_even_windows_refuse_non_positive_lengths() -> None:
    wave = noise(100)
    with pytest.raises(ValueError, match="must be positive"):
        even_windows(wave, RATE_HZ, 0.0, 1.0)
    with pytest.raises(ValueError, match="must be positive"):
        list(even_batches(wave, RATE_HZ, 1.0, 0.00001, 4))  # rounds to 0 samples
    with pytest.raises(ValueError, match="batch_size"):
        list(even_batches(wave, RATE_HZ, 1.0, 1.0, 0))
    with pytest.raises(ValueError, match="batch_size"):
        StreamedWindows([wave], RATE_HZ, 1.0, 1.0, 0)


def test_the_hop_defaults_to_the_window() -> None:
    assert even_hop_seconds(None, 4.0) == 4.0
    assert even_hop_seconds(1.5, 4.0) == 1.5


@pytest.mark.parametrize("samples", LENGTHS)
@pytest.mark.parametrize(("hop_seconds", "batch_size"), HOPS_AND_BATCHES)
def test_even_batches_are_even_windows_in_pieces(samples: int, hop_seconds: float, batch_size: int) -> None:
    wave = noise(samples)
    expected, expected_starts = even_windows(wave, RATE_HZ, WINDOW_SECONDS, hop_seconds)
    batches = list(even_batches(wave, RATE_HZ, WINDOW_SECONDS, hop_seconds, batch_size))
    assert all(len(windows) <= batch_size for windows, _ in batches)
    np.testing.assert_array_equal(np.concatenate([w for w, _ in batches]), expected)
    np.testing.assert_allclose(np.concatenate([s for _, s in batches]), expected_starts, atol=1e-12)


@pytest.mark.parametrize("samples", LENGTHS)
@pytest.mark.parametrize(("hop_seconds", "batch_size"), HOPS_AND_BATCHES)
@pytest.mark.parametrize("block_samples", [1, 777, 8000, 30000])
def test_streamed_windows_are_the_whole_recording_s_batches(
    samples: int, hop_seconds: float, batch_size: int, block_samples: int
) -> None:
    """Fed in blocks of any size, the stream gives even_batches' batches one for one: the same
    windows, starts and padding of the last window (a block boundary inside a window included)."""
    wave = noise(samples)
    expected = list(even_batches(wave, RATE_HZ, WINDOW_SECONDS, hop_seconds, batch_size))
    blocks = (wave[i : i + block_samples] for i in range(0, samples, block_samples))
    streamed = StreamedWindows(blocks, RATE_HZ, WINDOW_SECONDS, hop_seconds, batch_size)
    batches = list(streamed)
    assert streamed.samples == samples and len(batches) == len(expected)
    for (windows, starts_s), (want_windows, want_starts_s) in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(windows, want_windows)
        np.testing.assert_array_equal(starts_s, want_starts_s)
