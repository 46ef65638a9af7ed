"""Focal loss and soft-target cross-entropy against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from birdops.config import LossParams
from birdops.train.losses import focal_bce, focal_loss, focal_with_background, make_loss, soft_cross_entropy

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
    focal = make_loss(LossParams(kind="focal", gamma=2.0, alpha=0.5, secondary_species="negative"))
    assert float(focal(LOGITS, targets, None)) == pytest.approx(0.5 * 9 / 16 * math.log(4))
    ce = make_loss(
        LossParams(kind="cross_entropy", gamma=2.0, alpha=None, secondary_species="negative")
    )  # gamma is ignored by cross-entropy
    assert float(ce(LOGITS, targets, None)) == pytest.approx(math.log(4))
    bce = make_loss(LossParams(kind="bce", gamma=2.0, alpha=None, secondary_species="mask"))
    # gamma is ignored by bce: -ln sigmoid(0) - ln(1 - sigmoid(ln 3)) = ln 2 + ln 4
    assert float(bce(LOGITS, targets, None)) == pytest.approx(math.log(2) + math.log(4))
    focal_sigmoid = make_loss(LossParams(kind="focal_bce", gamma=2.0, alpha=None, secondary_species="mask"))
    assert float(focal_sigmoid(LOGITS, targets, None)) == pytest.approx(
        0.25 * math.log(2) + (3 / 4) ** 2 * math.log(4)
    )
    assert LossParams(kind="focal_bce", gamma=0, alpha=None, secondary_species="mask").activation == "sigmoid"
    assert LossParams(kind="focal", gamma=0, alpha=None, secondary_species="mask").activation == "softmax"


def test_focal_bce_with_gamma_zero_is_binary_cross_entropy_summed_over_classes() -> None:
    torch.manual_seed(2)
    logits = torch.randn(5, 4) * 4
    targets = (torch.rand(5, 4) > 0.6).float()
    targets[2] = 0.0  # a background clip: every species absent
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1).mean()
    torch.testing.assert_close(focal_bce(logits, targets, None, gamma=0.0, alpha=None), expected)
    # class indices are one-hot presences
    hard = torch.tensor([0, 3, 1, 2, 2])
    one_hot = F.one_hot(hard, 4).float()
    torch.testing.assert_close(
        focal_bce(logits, hard, None, gamma=2.0, alpha=0.25),
        focal_bce(logits, one_hot, None, gamma=2.0, alpha=0.25),
    )


def test_focal_bce_by_hand_with_alpha_and_weights() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)]])  # sigmoid: 1/2, 3/4
    present = torch.tensor([[1.0, 0.0]])
    # class 0 present: (1 - 1/2)^2 ln 2 ; class 1 absent: (3/4)^2 ln 4
    by_hand = 0.25 * math.log(2) + 9 / 16 * math.log(4)
    assert float(focal_bce(logits, present, None, 2.0, None)) == pytest.approx(by_hand)
    # alpha weighs the positives, 1 - alpha the negatives
    weighted = 0.25 * 0.25 * math.log(2) + 0.75 * 9 / 16 * math.log(4)
    assert float(focal_bce(logits, present, None, 2.0, 0.25)) == pytest.approx(weighted)
    # a weight of 0 leaves class 1 out (a background species of the clip)
    mask = torch.tensor([[1.0, 0.0]])
    assert float(focal_bce(logits, present, mask, 2.0, None)) == pytest.approx(0.25 * math.log(2))
    # a MixUp target mixes the two losses
    soft = torch.tensor([[0.4, 0.6]])
    p = (0.5, 0.75)
    mixed = sum(
        t * (1 - q) ** 2 * -math.log(q) + (1 - t) * q**2 * -math.log(1 - q)
        for t, q in zip((0.4, 0.6), p, strict=True)
    )
    assert float(focal_bce(logits, soft, None, 2.0, None)) == pytest.approx(mixed)


def test_focal_bce_is_float32_and_finite_for_huge_logits() -> None:
    logits = torch.tensor([[200.0, -200.0]], dtype=torch.bfloat16)
    loss = focal_bce(logits, torch.tensor([[0.0, 1.0]]), None, 2.0, None)
    assert loss.dtype == torch.float32 and math.isfinite(float(loss)) and float(loss) > 100


def test_the_background_class_is_one_more_softmax_class_with_logit_zero() -> None:
    torch.manual_seed(3)
    logits = torch.randn(4, 3) * 2
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 1.0]])
    with_none = torch.cat([logits, torch.zeros(4, 1)], dim=1)
    full = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0], [0, 0.3, 0, 0.7], [0, 0, 1.0, 0]])
    torch.testing.assert_close(
        focal_with_background(logits, targets, 0.0, None), F.cross_entropy(with_none, full)
    )
    torch.testing.assert_close(
        focal_with_background(logits, targets, 2.0, None), focal_loss(with_none, full, gamma=2.0, alpha=None)
    )
    loss = make_loss(LossParams(kind="focal_background", gamma=0.0, alpha=None, secondary_species="negative"))
    torch.testing.assert_close(
        loss(logits, torch.tensor([0, 2, 1, 2]), None),
        focal_with_background(logits, torch.tensor([0, 2, 1, 2]), 0.0, None),
    )
    assert (
        LossParams(kind="focal_background", gamma=0, alpha=None, secondary_species="mask").activation
        == "softmax_background"
    )
