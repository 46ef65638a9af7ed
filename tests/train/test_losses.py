"""Focal loss and soft-target cross-entropy against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from birdops.config import LossParams
from birdops.train.losses import focal_loss, make_loss, soft_cross_entropy

# logits (0, ln 3) -> p = (1/4, 3/4)
LOGITS = torch.tensor([[0.0, math.log(3.0)]])


def test_focal_loss_by_hand() -> None:
    # true class 1: p = 3/4, (1 - p)^2 = 1/16, -log p = ln(4/3)
    assert float(focal_loss(LOGITS, torch.tensor([1]), gamma=2.0, alpha=None)) == pytest.approx(
        math.log(4 / 3) / 16
    )
    # true class 0: p = 1/4, (1 - p)^2 = 9/16, -log p = ln 4
    assert float(focal_loss(LOGITS, torch.tensor([0]), gamma=2.0, alpha=None)) == pytest.approx(
        9 / 16 * math.log(4)
    )
    # gamma 1: (1 - 1/4) ln 4
    assert float(focal_loss(LOGITS, torch.tensor([0]), gamma=1.0, alpha=None)) == pytest.approx(
        0.75 * math.log(4)
    )


def test_focal_loss_averages_the_batch_and_alpha_scales_it() -> None:
    logits = LOGITS.repeat(2, 1)
    targets = torch.tensor([1, 0])
    mean = (math.log(4 / 3) / 16 + 9 / 16 * math.log(4)) / 2
    assert float(focal_loss(logits, targets, gamma=2.0, alpha=None)) == pytest.approx(mean)
    assert float(focal_loss(logits, targets, gamma=2.0, alpha=0.25)) == pytest.approx(0.25 * mean)


def test_focal_loss_with_soft_targets_mixes_the_two_losses() -> None:
    # t = (0.3, 0.7): 0.3 * (9/16) ln 4 + 0.7 * (1/16) ln(4/3)
    soft = torch.tensor([[0.3, 0.7]])
    expected = 0.3 * 9 / 16 * math.log(4) + 0.7 * math.log(4 / 3) / 16
    assert float(focal_loss(LOGITS, soft, gamma=2.0, alpha=None)) == pytest.approx(expected)
    # so a MixUp target lam * e_a + (1 - lam) * e_b gives lam * FL(a) + (1 - lam) * FL(b)
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    a, b, lam = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 4, 3, 2]), 0.35
    mixed = lam * F.one_hot(a, 6).float() + (1 - lam) * F.one_hot(b, 6).float()
    # per-sample mixing: compare sample by sample
    for i in range(4):
        expected_i = lam * focal_loss(logits[i : i + 1], a[i : i + 1], gamma=2.0, alpha=None) + (
            1 - lam
        ) * focal_loss(logits[i : i + 1], b[i : i + 1], gamma=2.0, alpha=None)
        torch.testing.assert_close(
            focal_loss(logits[i : i + 1], mixed[i : i + 1], gamma=2.0, alpha=None), expected_i
        )


def test_focal_loss_with_gamma_zero_is_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 5) * 3
    targets = torch.randint(0, 5, (8,))
    torch.testing.assert_close(
        focal_loss(logits, targets, gamma=0.0, alpha=None), F.cross_entropy(logits, targets)
    )
    # also when a class is predicted with certainty (0 ** 0 == 1)
    certain = torch.tensor([[100.0, -100.0]])
    torch.testing.assert_close(
        focal_loss(certain, torch.tensor([0]), gamma=0.0, alpha=None), torch.tensor(0.0)
    )


def test_soft_cross_entropy_matches_torch() -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, 4)
    hard = torch.randint(0, 4, (6,))
    soft = torch.softmax(torch.randn(6, 4), dim=-1)
    torch.testing.assert_close(soft_cross_entropy(logits, hard), F.cross_entropy(logits, hard))
    torch.testing.assert_close(soft_cross_entropy(logits, soft), F.cross_entropy(logits, soft))
    # by hand: -(0.5 ln(1/4) + 0.5 ln(3/4))
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert float(soft_cross_entropy(LOGITS, torch.tensor([[0.5, 0.5]]))) == pytest.approx(expected)


def test_losses_are_float32_under_low_precision_logits() -> None:
    logits = LOGITS.to(torch.bfloat16)
    loss = focal_loss(logits, torch.tensor([0]), gamma=2.0, alpha=None)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(9 / 16 * math.log(4), rel=1e-2)


def test_make_loss_follows_the_params() -> None:
    targets = torch.tensor([0])
    focal = make_loss(LossParams(kind="focal", gamma=2.0, alpha=0.5))
    assert float(focal(LOGITS, targets)) == pytest.approx(0.5 * 9 / 16 * math.log(4))
    ce = make_loss(
        LossParams(kind="cross_entropy", gamma=2.0, alpha=None)
    )  # gamma is ignored by cross-entropy
    assert float(ce(LOGITS, targets)) == pytest.approx(math.log(4))
