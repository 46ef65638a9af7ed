"""Batch augmentation of cached features: SpecAugment and MixUp.

Pure functions: inputs are never modified, and every random draw comes from the ``torch.Generator``
passed in (a CPU generator; draws are moved to the batch's device), so a run is reproducible
from its seed whatever the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.special import betaincinv

from birdops.config import MixupParams, SpecAugmentParams


def spec_augment(
    features: torch.Tensor, params: SpecAugmentParams, generator: torch.Generator
) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) frequency and time masking of ``(B, F, T)`` features.

    Each sample is augmented with probability ``params.prob``; an augmented sample gets
    ``params.num_masks`` frequency masks, each a band of ``w ~ U{0..freq_mask_bins}`` adjacent bins
    starting at ``U{0..F-w}``, and as many time masks of ``U{0..time_mask_frames}`` frames. Masked
    values are set to 0, which is the per-clip mean of the normalised features (and about the
    AudioSet mean for the ``ast`` preset). Returns a new tensor.
    """
    batch, n_bins, n_frames = features.shape
    if not params.enabled or params.num_masks == 0:
        return features
    apply = torch.rand(batch, generator=generator) < params.prob  # (B,)
    freq = _band_masks(batch, n_bins, params.freq_mask_bins, params.num_masks, generator)  # (B, F)
    time = _band_masks(batch, n_frames, params.time_mask_frames, params.num_masks, generator)  # (B, T)
    masked = (freq[:, :, None] | time[:, None, :]) & apply[:, None, None]  # (B, F, T)
    return features.masked_fill(masked.to(features.device), 0.0)


def _band_masks(
    batch: int, size: int, max_width: int, count: int, generator: torch.Generator
) -> torch.Tensor:
    """``(batch, size)`` bool: the union of ``count`` random bands of ``0..max_width`` positions each."""
    positions = torch.arange(size)  # (size,)
    mask = torch.zeros(batch, size, dtype=torch.bool)
    max_width = min(max_width, size)
    for _ in range(count):
        width = torch.randint(0, max_width + 1, (batch,), generator=generator)  # (B,)
        start = (torch.rand(batch, generator=generator) * (size - width + 1)).long()  # (B,) in 0..size-w
        mask |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
    return mask


@dataclass(frozen=True)
class Mixed:
    """A MixUp batch: ``inputs = lam * x + (1 - lam) * x[perm]``, targets mixed the same way."""

    inputs: torch.Tensor  # (B, ...)
    targets: torch.Tensor  # (B, C), rows sum to 1
    lam: float  # 1.0 when the batch was not mixed
    perm: torch.Tensor  # (B,) int64, the partner of each sample


def mixup(
    inputs: torch.Tensor, targets: torch.Tensor, params: MixupParams, generator: torch.Generator
) -> Mixed:
    """MixUp (Zhang et al. 2018): with probability ``params.prob`` mix the batch with a permutation
    of itself, ``lam ~ Beta(alpha, alpha)``. ``targets`` are ``(B, C)`` distributions (one-hot for
    hard labels) and come back mixed with the same ``lam``, so each row still sums to 1."""
    batch = inputs.shape[0]
    identity = torch.arange(batch)
    if not params.enabled or float(torch.rand(1, generator=generator)) >= params.prob:
        return Mixed(inputs, targets, 1.0, identity)
    # Beta sample by inverse CDF so that the torch generator is the only source of randomness
    lam = float(betaincinv(params.alpha, params.alpha, float(torch.rand(1, generator=generator))))
    perm = torch.randperm(batch, generator=generator)
    device_perm = perm.to(inputs.device)
    mixed_inputs = lam * inputs + (1.0 - lam) * inputs[device_perm]
    mixed_targets = lam * targets + (1.0 - lam) * targets[device_perm]
    return Mixed(mixed_inputs, mixed_targets, lam, perm)
