"""A feature spec's clip shape: the samples of a clip (the project's seconds-to-samples rule) and the
frames of both framings, the numbers the cache, training, the export and the benchmarks share."""

from __future__ import annotations

import dataclasses

import pytest
from specs import SEED

from birdops.featurespec import ClipShape, FeatureSpec
from birdops.windows import seconds_to_samples

CENTRED = SEED
SNIPPED = dataclasses.replace(
    CENTRED,
    sample_rate_hz=16000,
    n_fft=512,
    win_length_samples=400,
    hop_length_samples=160,
    framing="snip_edges",
)


def test_clip_shape_of_the_presets_clip_lengths() -> None:
    assert CENTRED.clip_shape(4.0) == ClipShape(128, 173, 88200)  # the report's (128, 173)
    assert SNIPPED.clip_shape(4.0) == ClipShape(128, 398, 64000)  # the AST recipe's 4 s
    assert CENTRED.clip_shape(4.0).features == (128, 173)


@pytest.mark.parametrize("seconds", [0.01, 0.3, 1.0, 2.9999, 3.00002, 4.0, 7.77])
def test_clip_samples_follow_the_windows_rule(seconds: float) -> None:
    for spec in (CENTRED, SNIPPED):
        shape = spec.clip_shape(seconds)
        assert shape.samples == seconds_to_samples(seconds, spec.sample_rate_hz)
        assert shape.n_frames == spec.num_frames(shape.samples)


def test_snipped_frames_need_a_whole_window() -> None:
    assert SNIPPED.num_frames(399) == 0 and SNIPPED.num_frames(400) == 1 and SNIPPED.num_frames(560) == 2
    assert CENTRED.num_frames(0) == 1 and CENTRED.num_frames(511) == 1 and CENTRED.num_frames(512) == 2


def test_the_spec_round_trips_through_its_dict_and_refuses_other_keys() -> None:
    assert FeatureSpec.from_dict(CENTRED.to_dict()) == CENTRED
    assert list(CENTRED.to_dict())[:3] == ["name", "sample_rate_hz", "n_bins"]  # the files' key order
    with pytest.raises(ValueError, match="unknown \\['extra'\\]"):
        FeatureSpec.from_dict({**CENTRED.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="missing \\['n_fft'\\]"):
        FeatureSpec.from_dict({k: v for k, v in CENTRED.to_dict().items() if k != "n_fft"})
