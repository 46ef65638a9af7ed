"""Classification losses on logits with hard or soft (MixUp) targets.

Targets are either class indices ``(B,)`` int64 or class distributions ``(B, C)`` whose rows sum
to 1; a hard target is the one-hot distribution, so both forms give the same loss. Losses are
computed in float32 whatever the autocast dtype of the logits, and averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from birdops.config import LossParams

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def as_distribution(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B,)`` class indices -> ``(B, C)`` one-hot float32; ``(B, C)`` distributions unchanged."""
    if targets.dim() == 1:
        return F.one_hot(targets, num_classes).float()
    return targets.float()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_c t_c log p_c`` with ``p = softmax(logits)``; logits ``(B, C)``."""
    log_p = F.log_softmax(logits.float(), dim=-1)  # (B, C)
    return -(as_distribution(targets, logits.shape[-1]) * log_p).sum(dim=-1).mean()


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha: float | None
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017), extended to soft targets.

    Per sample: ``-alpha * sum_c t_c (1 - p_c)**gamma log p_c`` with ``p = softmax(logits)`` and
    ``t`` the target distribution; the batch mean is returned. For a one-hot ``t`` this is the usual
    ``-alpha (1 - p_y)**gamma log p_y``; for a MixUp target ``lam * e_a + (1 - lam) * e_b`` it is
    ``lam * FL(a) + (1 - lam) * FL(b)``, the mix of the two samples' losses. ``gamma = 0`` and no
    ``alpha`` give the cross-entropy. ``alpha`` is a single weight on the whole loss (as the
    common multi-class implementations use it); ``None`` means 1.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)  # (B, C)
    modulating = (1.0 - log_p.exp()).clamp(min=0.0).pow(gamma)  # (B, C); 0**0 == 1, so gamma=0 is CE
    per_sample = -(as_distribution(targets, logits.shape[-1]) * modulating * log_p).sum(dim=-1)  # (B,)
    weight = 1.0 if alpha is None else alpha
    return weight * per_sample.mean()


def make_loss(params: LossParams) -> LossFn:
    """The configured loss as a function ``(logits (B, C), targets (B,) or (B, C)) -> scalar``."""
    if params.kind == "cross_entropy":
        return soft_cross_entropy
    if params.kind == "focal":
        return lambda logits, targets: focal_loss(logits, targets, params.gamma, params.alpha)
    raise ValueError(f"unknown loss.kind {params.kind!r}")
