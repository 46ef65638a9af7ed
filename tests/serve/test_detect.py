"""Which (window, species) pairs are reported (``birdops.serve.detect``): thresholds and their order of
precedence, the cap per window, ``--all``, thresholds files and what a file holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from birdops.contracts import Scoring
from birdops.serve import detect
from birdops.serve.detect import Selection, ThresholdsError
from birdops.serve.inference import WindowScores

LABELS = ("Turdus merula", "Erithacus rubecula", "Parus major")
SCORES = np.array(
    [
        [0.90, 0.10, 0.60],  # blackbird, and the tit over its own threshold
        [0.20, 0.30, 0.10],  # nothing reaches its threshold
        [0.40, 0.70, 0.70],  # robin and tit tie: the lower class index first
    ],
    dtype=np.float32,
)


def picked(selection: Selection) -> list[list[tuple[str, float]]]:
    return [[(s.species, round(s.score, 2)) for s in row] for row in selection.pick(SCORES, LABELS)]


def test_a_species_is_reported_where_its_score_reaches_its_own_threshold() -> None:
    assert picked(Selection((0.5, 0.5, 0.6))) == [
        [("Turdus merula", 0.9), ("Parus major", 0.6)],  # 0.6 reaches 0.6: "reaches" includes equal
        [],
        [("Erithacus rubecula", 0.7), ("Parus major", 0.7)],
    ]
    assert picked(Selection((0.95, 0.5, 0.65))) == [
        [],
        [],
        [("Erithacus rubecula", 0.7), ("Parus major", 0.7)],
    ]
    # the cap keeps the best of those over their thresholds, not the best scores of the window
    assert picked(Selection((0.95, 0.5, 0.5), top_k=1)) == [
        [("Parus major", 0.6)],
        [],
        [("Erithacus rubecula", 0.7)],
    ]


def test_without_thresholds_every_window_reports_its_top_k() -> None:
    assert picked(Selection(None, top_k=1)) == [
        [("Turdus merula", 0.9)],
        [("Erithacus rubecula", 0.3)],
        [("Erithacus rubecula", 0.7)],
    ]
    assert [len(row) for row in Selection(None, top_k=2).pick(SCORES, LABELS)] == [2, 2, 2]
    assert [len(row) for row in Selection(None).pick(SCORES, LABELS)] == [3, 3, 3]


def test_thresholds_take_the_override_then_min_score_then_the_model() -> None:
    model = (0.5, 0.6, 0.7)
    assert detect.choose_thresholds(LABELS, model) == (model, None)
    assert detect.choose_thresholds(LABELS, model, min_score=0.2) == ((0.2, 0.2, 0.2), None)
    overrides = {"Parus major": 0.9}
    assert detect.choose_thresholds(LABELS, model, None, overrides) == ((0.5, 0.6, 0.9), None)
    assert detect.choose_thresholds(LABELS, model, 0.2, overrides) == ((0.2, 0.2, 0.9), None)


def test_a_model_without_thresholds_falls_back_to_zero_and_says_so() -> None:
    thresholds, warning = detect.choose_thresholds(LABELS, None)
    assert thresholds == (0.0, 0.0, 0.0) and warning == detect.NO_THRESHOLDS_WARNING
    assert "no per-species thresholds" in warning
    partial = detect.choose_thresholds(LABELS, None, None, {"Parus major": 0.9})
    assert partial == ((0.0, 0.0, 0.9), detect.NO_THRESHOLDS_WARNING)  # two species still at 0.0
    assert detect.choose_thresholds(LABELS, None, min_score=0.4) == ((0.4, 0.4, 0.4), None)
    every = dict.fromkeys(LABELS, 0.3)
    assert detect.choose_thresholds(LABELS, None, None, every) == ((0.3, 0.3, 0.3), None)


def test_select_builds_the_selection_of_a_model_and_the_options() -> None:
    calibrated = Scoring("sigmoid", 1.0, 0.0, (0.5, 0.6, 0.7))
    assert detect.select(calibrated, LABELS, None) == (Selection((0.5, 0.6, 0.7), None), None)
    assert detect.select(calibrated, LABELS, 2, min_score=0.1) == (Selection((0.1, 0.1, 0.1), 2), None)
    assert detect.select(calibrated, LABELS, 3, report_all=True) == (Selection(None, 3), None)
    assert detect.select(Scoring(), LABELS, 1) == (
        Selection((0.0, 0.0, 0.0), 1),
        detect.NO_THRESHOLDS_WARNING,
    )
    for options in ({"min_score": 0.2}, {"overrides": {"Parus major": 0.2}}):
        with pytest.raises(ThresholdsError, match="'all' reports every window whatever the thresholds"):
            detect.select(calibrated, LABELS, 1, report_all=True, **options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- thresholds files
def test_thresholds_files_in_csv_with_or_without_a_header_and_in_json(tmp_path: Path) -> None:
    with_header = tmp_path / "t.csv"
    with_header.write_text("species,threshold\nTurdus merula,0.8\n\n Parus major , 0.25\n")
    assert detect.read_thresholds(with_header, LABELS) == {"Turdus merula": 0.8, "Parus major": 0.25}
    bare = tmp_path / "bare.csv"
    bare.write_text("\ufeffErithacus rubecula,1\n")  # saved by a spreadsheet: a byte order mark first
    assert detect.read_thresholds(bare, LABELS) == {"Erithacus rubecula": 1.0}
    as_json = tmp_path / "t.json"
    as_json.write_text('{"Erithacus rubecula": 0.35, "Parus major": 0}')
    assert detect.read_thresholds(as_json, LABELS) == {"Erithacus rubecula": 0.35, "Parus major": 0.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "species,threshold\nTurdus merula,0.8\nTurdus merla,0.5\n",
            r"t\.txt, row 3: unknown species 'Turdus merla'.*did you mean 'Turdus merula'",
        ),
        ("species,threshold\nParus major,1.5\n", r"t\.txt, row 2: the threshold 1\.5 is outside \[0, 1\]"),
        ("Parus major,-0.1\n", r"t\.txt, row 1: the threshold -0\.1 is outside"),
        ("Parus major,nan\n", r"t\.txt, row 1: the threshold nan is outside"),
        ("Parus major,high\n", r"t\.txt, row 1: the threshold must be a number in \[0, 1\], got 'high'"),
        ("Parus major,0.5\nParus major,0.6\n", r"t\.txt, row 2: species 'Parus major' is listed twice"),
        ("Parus major;0.5\n", r"t\.txt, row 1: expected two cells 'species,threshold'"),
        ('{"Parus major": 2}', r"t\.txt, species 'Parus major': the threshold 2 is outside"),
        ('{"Sparrow": 0.5}', r"t\.txt, species 'Sparrow': unknown species 'Sparrow'"),
        ('{"Parus major": true}', r"the threshold must be a number"),
        ('{"Parus major": 0.5', r"t\.txt: expected a JSON object"),
        ("[" * 5000 + "]" * 5000, r"t\.txt: expected a JSON object .*: nested too deeply"),
        ('{"Parus major": 0.1, "Parus major": 0.9}', r"t\.txt: .*species 'Parus major' is listed twice"),
        ('{"Parus major": "0.5"}', r"t\.txt, species 'Parus major': the threshold must be a number"),
    ],
)
def test_a_bad_thresholds_file_names_the_file_and_the_row(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.txt"
    path.write_text(text)
    with pytest.raises(ThresholdsError, match=message):
        detect.read_thresholds(path, LABELS)


def test_an_unreadable_thresholds_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ThresholdsError, match=r"missing\.csv: cannot read the thresholds"):
        detect.read_thresholds(tmp_path / "missing.csv", LABELS)
    assert detect.check_thresholds({"Parus major": "0.5"}, LABELS, "x") == {"Parus major": 0.5}
    with pytest.raises(ThresholdsError, match=r"field: expected a JSON object"):
        detect.parse_thresholds("[0.5]", LABELS, "field")


# ----------------------------------------------------------------------------------- what a file holds
def test_the_species_of_a_file_with_their_windows_best_score_and_span() -> None:
    result = WindowScores(
        starts_s=np.array([0.0, 3.0, 6.0]),
        scores=SCORES,
        labels=LABELS,
        window_seconds=3.0,
        duration_s=7.5,
        activation="sigmoid",
    )
    found = detect.species_found(result, Selection((0.5, 0.5, 0.6)).pick(SCORES, LABELS))
    assert [(f.species, f.windows, round(f.best_score, 2), f.first_start_s, f.last_end_s) for f in found] == [
        ("Turdus merula", 1, 0.9, 0.0, 3.0),
        ("Erithacus rubecula", 1, 0.7, 6.0, 7.5),  # ties with the tit at 0.7: label order
        ("Parus major", 2, 0.7, 0.0, 7.5),
    ]
    assert detect.describe_found(found) == (
        "Turdus merula (1 window, best 0.900), Erithacus rubecula (1 window, best 0.700), "
        "Parus major (2 windows, best 0.700)"
    )
    nothing = detect.species_found(result, Selection((1.0, 1.0, 1.0)).pick(SCORES, LABELS))
    assert nothing == [] and detect.describe_found(nothing) == "no detections"
    np.testing.assert_allclose(result.file_scores(), [0.9, 0.7, 0.7])  # sigmoid: the best window
    mean = WindowScores(result.starts_s, SCORES, LABELS, 3.0, 7.5, activation="softmax").file_scores()
    np.testing.assert_allclose(mean, SCORES.mean(axis=0))  # softmax: the mean, as evaluation's
