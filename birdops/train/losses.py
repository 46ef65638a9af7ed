"""Classification losses on logits with hard or soft (MixUp) targets.

Softmax losses (``cross_entropy``, ``focal``): targets are either class indices ``(B,)`` int64 or
class distributions ``(B, C)`` whose rows sum to 1; a hard target is the one-hot distribution, so both
forms give the same loss. Sigmoid losses (``bce``, ``focal_bce``): targets are ``(B, C)`` presences
in [0, 1] (a background clip's row is all zeros, a MixUp row the mix of two), or class indices as
one-hot rows, and an optional ``(B, C)`` weight leaves entries out (0: a background species of the
clip that may or may not be audible). Every loss takes ``(logits, targets, weights)``; the softmax
ones ignore the weights. Losses are computed in float32 whatever the autocast dtype of the logits,
summed over the classes and averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from birdops.config import LossParams

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


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


def focal_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    gamma: float,
    alpha: float | None,
) -> torch.Tensor:
    """Per-class sigmoid focal loss (Lin et al. 2017, the form AudioSet and BirdCLEF models train with).

    Per entry: ``-w * a_t * (1 - p_t)**gamma * log p_t`` with ``p = sigmoid(logits)``,
    ``p_t = t p + (1 - t)(1 - p)`` for a soft target ``t`` (written as ``t BCE(1) + (1 - t) BCE(0)``
    terms, so a MixUp target mixes the two losses), ``a_t = alpha t + (1 - alpha)(1 - t)`` (1 when
    ``alpha`` is None) and ``w`` the entry's weight. Summed over the classes, averaged over the batch;
    ``gamma = 0`` and no ``alpha`` give the binary cross-entropy.
    """
    z = logits.float()
    t = as_distribution(targets, logits.shape[-1])  # (B, C)
    log_p, log_not_p = F.logsigmoid(z), F.logsigmoid(-z)  # (B, C) each, stable for large |z|
    p = log_p.exp()
    positive = -(1.0 - p).clamp(min=0.0).pow(gamma) * log_p  # (B, C): the loss if present
    negative = -p.pow(gamma) * log_not_p  # the loss if absent
    if alpha is not None:
        positive, negative = alpha * positive, (1.0 - alpha) * negative
    per_entry = t * positive + (1.0 - t) * negative
    if weights is not None:
        per_entry = per_entry * weights.float()
    return per_entry.sum(dim=-1).mean()


def focal_with_background(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha: float | None
) -> torch.Tensor:
    """:func:`focal_loss` over the species and one more class, "none of them", whose logit is 0: a
    target row's missing mass (1 for a background clip's all-zero row) is that class's."""
    z = logits.float()
    t = as_distribution(targets, logits.shape[-1])  # (B, C)
    with_none = torch.cat([z, torch.zeros_like(z[:, :1])], dim=1)  # (B, C + 1)
    none = (1.0 - t.sum(dim=1, keepdim=True)).clamp(min=0.0)
    return focal_loss(with_none, torch.cat([t, none], dim=1), gamma, alpha)


def make_loss(params: LossParams) -> LossFn:
    """The configured loss as a function ``(logits (B, C), targets (B,) or (B, C), weights (B, C) or
    None) -> scalar``."""
    if params.kind == "cross_entropy":
        return lambda logits, targets, weights: soft_cross_entropy(logits, targets)
    if params.kind == "focal":
        return lambda logits, targets, weights: focal_loss(logits, targets, params.gamma, params.alpha)
    if params.kind == "focal_background":  # a softmax: the weights (masked classes) do not apply
        return lambda logits, targets, weights: focal_with_background(
            logits, targets, params.gamma, params.alpha
        )
    if params.kind in ("bce", "focal_bce"):
        gamma = params.gamma if params.kind == "focal_bce" else 0.0
        return lambda logits, targets, weights: focal_bce(logits, targets, weights, gamma, params.alpha)
    raise ValueError(f"unknown loss.kind {params.kind!r}")
