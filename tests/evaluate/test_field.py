"""``birdops.evaluate.field``: the thresholds follow ``evaluate.field.thresholds``, and what the export
writes into the model (``calibration.json``) says which rule chose them."""

from __future__ import annotations

import numpy as np
import pytest
from params_yaml import section

from birdops.detection import background_windows
from birdops.evaluate.field import Windows, fit_and_measure
from birdops.scores import scores

LABELS = ("Turdus merula", "Parus major", "Erithacus rubecula")


def windows(seed: int, n: int = 600) -> Windows:
    """Windows of three species: a third background only, each species window's own logit raised."""
    rng = np.random.default_rng(seed)
    targets = np.zeros((n, 3), dtype=np.float32)
    sings = rng.random(n) > 1 / 3
    targets[np.flatnonzero(sings), rng.integers(0, 3, int(sings.sum()))] = 1.0
    logits = (rng.normal(-2.0, 1.5, (n, 3)) + 3.5 * targets).astype(np.float32)
    return Windows(logits, targets, np.ones((n, 3), dtype=bool), background_seconds=4.0 * (n - sings.sum()))


@pytest.mark.parametrize("budget", [0.02, 0.1])
def test_false_alarm_rule_keeps_the_validation_budget(budget: float) -> None:
    params = section("evaluate.field", thresholds="false_alarms", max_background_flagged=budget)
    validation, test = windows(1), windows(2)
    found = fit_and_measure(validation, test, "sigmoid", LABELS, params)
    values = found.thresholds.values
    assert len(set(values)) == 1 and {c.rule for c in found.thresholds.classes} == {"false_alarms"}
    assert found.validation["background_windows_flagged"] <= budget
    quiet = background_windows(validation.targets, validation.mask)
    calibrated = scores(validation.logits, "sigmoid", found.scale, found.bias)
    assert (calibrated[quiet] >= values[0]).any(axis=1).mean() == found.validation[
        "background_windows_flagged"
    ]
    document = found.calibration_document(LABELS)
    assert document["choice"]["max_background_flagged"] == budget
    assert document["thresholds"] == [float(v) for v in values]


def test_a_larger_budget_lowers_the_threshold_and_finds_more() -> None:
    validation, test = windows(3), windows(4)
    strict, loose = (
        fit_and_measure(
            validation, test, "sigmoid", LABELS, section("evaluate.field", max_background_flagged=budget)
        )
        for budget in (0.01, 0.1)
    )
    assert loose.thresholds.values[0] < strict.thresholds.values[0]
    assert loose.metrics["recall"] > strict.metrics["recall"]
    assert loose.metrics["background_windows_flagged"] >= strict.metrics["background_windows_flagged"]


def test_precision_rule_gives_each_species_its_own_threshold() -> None:
    params = section("evaluate.field", thresholds="precision", target_precision=0.9, min_positives=5)
    found = fit_and_measure(windows(5), windows(6), "sigmoid", LABELS, params)
    assert {c.rule for c in found.thresholds.classes} <= {"precision", "max_f1", "pooled"}
    assert all(c.precision >= 0.9 for c in found.thresholds.classes if c.rule == "precision")
    choice = found.calibration_document(LABELS)["choice"]
    assert choice["target_precision"] == 0.9 and "max_background_flagged" not in choice


def test_false_alarm_rule_without_background_says_what_to_do() -> None:
    validation = windows(7)
    singing = ~background_windows(validation.targets, validation.mask)
    only_species = Windows(
        validation.logits[singing], validation.targets[singing], validation.mask[singing], 0.0
    )
    with pytest.raises(ValueError, match=r"no validation window is background only.*thresholds=precision"):
        fit_and_measure(only_species, windows(8), "sigmoid", LABELS, section("evaluate.field"))
