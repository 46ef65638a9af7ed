"""A front end's settings written out, for tests that must not import torch (the contracts, the
feature spec): ``SEED`` is ``birdops.features.frontend.spec_for("seed")``, which
``tests/features/test_frontend.py`` checks."""

from __future__ import annotations

from birdops.featurespec import FeatureSpec

SEED = FeatureSpec(
    name="seed",
    sample_rate_hz=22050,
    n_bins=128,
    n_fft=2048,
    win_length_samples=2048,
    hop_length_samples=512,
    window="hann_periodic",
    framing="center",
    n_mels=128,
    f_min_hz=500.0,
    f_max_hz=11025.0,
    mel_scale="slaney",
    preemphasis=0.0,
    remove_dc_offset=False,
    log_scale="db_ref_max",
    top_db=80.0,
    n_mfcc=None,
    normalization="per_clip",
    norm_mean=0.0,
    norm_std=1.0,
    norm_eps=1e-06,
)
