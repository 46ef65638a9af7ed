"""Background clip positions and training clips mixed with background (``birdops.mixing``)."""

from __future__ import annotations

import numpy as np
import pytest

from birdops.mixing import mix_at_snr, noise_segment, spread_starts


def test_background_clips_spread_from_the_first_sample_to_the_last() -> None:
    rate = 1000
    assert spread_starts(16_000, rate, 4.0, 3) == [0.0, 6.0, 12.0]  # the first, the middle, the last
    assert spread_starts(10_000, rate, 4.0, 3) == [0.0, 6.0]  # at most as many as fit without overlap
    assert spread_starts(3_000, rate, 4.0, 3) == [0.0]  # shorter than a clip: one, padded later
    assert spread_starts(6_000, rate, 4.0, 1) == [1.0]  # one clip: the middle


def test_a_noise_segment_repeats_a_short_recording_from_a_random_start() -> None:
    noise = np.arange(5, dtype=np.float32)
    segment = noise_segment(noise, 12, np.random.default_rng(0))
    start = int(segment[0])
    np.testing.assert_array_equal(segment, np.tile(noise, 4)[start : start + 12])
    with pytest.raises(ValueError, match="empty"):
        noise_segment(np.zeros(0, dtype=np.float32), 3, np.random.default_rng(0))


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 12.0])
def test_the_mix_has_the_drawn_snr(snr_db: float) -> None:
    rng = np.random.default_rng(1)
    clip = rng.standard_normal(8000).astype(np.float32)
    noise = 3.0 * rng.standard_normal(8000).astype(np.float32)
    mixed = mix_at_snr(clip, noise, snr_db)
    added = mixed - clip
    measured = 10 * np.log10(np.mean(clip.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))
    assert measured == pytest.approx(snr_db, abs=1e-3)
    assert mixed.dtype == np.float32


def test_a_silent_clip_gets_the_noise_as_it_is() -> None:
    noise = np.full(10, 0.5, dtype=np.float32)
    np.testing.assert_array_equal(mix_at_snr(np.zeros(10, dtype=np.float32), noise, 5.0), noise)
