"""SpecAugment and MixUp: exact mask widths, exact mixing, reproducible draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from birdops.config import MixupParams, SpecAugmentParams
from birdops.train.augment import mixup, spec_augment


def features(batch: int, n_bins: int = 20, n_frames: int = 30) -> torch.Tensor:
    """Features with no zeros, so every zero in the output was put there by a mask."""
    torch.manual_seed(0)
    return torch.rand(batch, n_bins, n_frames) + 1.0


def bands(mask_1d: torch.Tensor) -> list[tuple[int, int]]:
    """(start, width) of each run of True in a 1-D bool tensor."""
    runs, start = [], None
    for i, value in enumerate([*mask_1d.tolist(), False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_frequency_masks_are_one_band_of_up_to_the_configured_width() -> None:
    x = features(400)
    params = SpecAugmentParams(enabled=True, freq_mask_bins=4, time_mask_frames=0, num_masks=1, prob=1.0)
    out = spec_augment(x, params, torch.Generator().manual_seed(1))
    zero = out == 0
    rows = zero.all(dim=2)  # (B, F): whole frequency rows zeroed
    assert torch.equal(zero, rows[:, :, None].expand_as(zero))  # nothing else was touched
    widths = []
    for sample in rows:
        runs = bands(sample)
        assert len(runs) <= 1
        widths.append(runs[0][1] if runs else 0)
    assert set(widths) == {0, 1, 2, 3, 4}  # U{0..4}: every width occurs in 400 draws, none wider
    torch.testing.assert_close(out[~zero], x[~zero], rtol=0, atol=0)
    assert (x != 0).all()  # the input is not modified


def test_time_masks_and_several_masks() -> None:
    x = features(300)
    params = SpecAugmentParams(enabled=True, freq_mask_bins=0, time_mask_frames=6, num_masks=2, prob=1.0)
    out = spec_augment(x, params, torch.Generator().manual_seed(2))
    zero = out == 0
    columns = zero.all(dim=1)  # (B, T)
    assert torch.equal(zero, columns[:, None, :].expand_as(zero))
    counts = columns.sum(dim=1)
    assert int(counts.max()) <= 12  # two masks of at most 6 frames
    assert int(counts.max()) > 6  # ... which do add up
    assert all(len(bands(c)) <= 2 for c in columns)


def test_fixed_width_masks_zero_exactly_that_many_bins_and_frames() -> None:
    # a sample's zeros are exactly its frequency band (all frames) and its time band (all bins)
    x = features(200, n_bins=8, n_frames=10)
    params = SpecAugmentParams(enabled=True, freq_mask_bins=3, time_mask_frames=5, num_masks=1, prob=1.0)
    out = spec_augment(x, params, torch.Generator().manual_seed(3))
    zero = out == 0
    rows, cols = zero.all(dim=2).sum(dim=1), zero.all(dim=1).sum(dim=1)  # (B,), (B,)
    expected = rows * 10 + cols * 8 - rows * cols
    assert torch.equal(zero.sum(dim=(1, 2)), expected)
    assert int(rows.max()) == 3 and int(cols.max()) == 5


def test_probability_decides_per_sample() -> None:
    x = features(1000)
    never = SpecAugmentParams(enabled=True, freq_mask_bins=10, time_mask_frames=10, num_masks=1, prob=0.0)
    assert torch.equal(spec_augment(x, never, torch.Generator().manual_seed(0)), x)
    off = SpecAugmentParams(enabled=False, freq_mask_bins=10, time_mask_frames=10, num_masks=1, prob=1.0)
    assert torch.equal(spec_augment(x, off, torch.Generator().manual_seed(0)), x)
    half = SpecAugmentParams(enabled=True, freq_mask_bins=10, time_mask_frames=0, num_masks=1, prob=0.5)
    touched = (spec_augment(x, half, torch.Generator().manual_seed(0)) == 0).flatten(1).any(dim=1)
    # P(touched) = 0.5 * P(width > 0) = 0.5 * 10/11
    assert 0.40 < float(touched.float().mean()) < 0.51


def test_spec_augment_is_reproducible_from_the_generator() -> None:
    x = features(16)
    params = SpecAugmentParams(enabled=True, freq_mask_bins=5, time_mask_frames=8, num_masks=2, prob=0.8)
    a = spec_augment(x, params, torch.Generator().manual_seed(7))
    b = spec_augment(x, params, torch.Generator().manual_seed(7))
    c = spec_augment(x, params, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def one_hot(labels: list[int], classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), classes).float()


def test_mixup_mixes_inputs_and_targets_with_the_sampled_lambda() -> None:
    x = features(6)
    y = one_hot([0, 1, 2, 3, 0, 1], 4)
    mixed = mixup(x, y, MixupParams(enabled=True, alpha=0.4, prob=1.0), torch.Generator().manual_seed(3))
    assert 0.0 < mixed.lam < 1.0
    assert sorted(mixed.perm.tolist()) == list(range(6))
    lam, perm = mixed.lam, mixed.perm
    torch.testing.assert_close(mixed.inputs, lam * x + (1 - lam) * x[perm], rtol=0, atol=0)
    torch.testing.assert_close(mixed.targets, lam * y + (1 - lam) * y[perm], rtol=0, atol=0)
    torch.testing.assert_close(mixed.targets.sum(dim=1), torch.ones(6))


def test_mixup_probability_and_switch() -> None:
    x, y = features(4), one_hot([0, 1, 2, 3], 4)
    for params in (
        MixupParams(enabled=True, alpha=0.4, prob=0.0),
        MixupParams(enabled=False, alpha=0.4, prob=1.0),
    ):
        mixed = mixup(x, y, params, torch.Generator().manual_seed(0))
        assert mixed.lam == 1.0
        assert mixed.inputs is x and mixed.targets is y
    params = MixupParams(enabled=True, alpha=0.4, prob=0.6)
    generator = torch.Generator().manual_seed(0)
    applied = [mixup(x, y, params, generator).lam < 1.0 for _ in range(500)]
    assert 0.54 < float(np.mean(applied)) < 0.66


def test_mixup_lambda_follows_the_beta_distribution() -> None:
    x, y = features(2), one_hot([0, 1], 2)
    params = MixupParams(enabled=True, alpha=0.4, prob=1.0)
    generator = torch.Generator().manual_seed(0)
    lams = [mixup(x, y, params, generator).lam for _ in range(2000)]
    assert stats.kstest(lams, "beta", args=(0.4, 0.4)).pvalue > 0.01
    assert np.var(lams) == pytest.approx(0.4 * 0.4 / (0.8**2 * 1.8), rel=0.1)
