"""The settings of a feature front end, :class:`FeatureSpec`, and the shape of a clip's features,
:meth:`FeatureSpec.clip_shape`: plain Python (importing it imports no torch and no numpy), so every
stage's hand-off, :mod:`birdops.contracts` included, can carry them typed. ``FeatureSpec.to_dict()``
is what ``features.json``, a model's ``config.json`` and the exported model's ``birdops.features``
metadata hold.

The spec of each preset and the torch modules that compute it live in :mod:`birdops.features.frontend`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ClipShape:
    """What a clip of some seconds is at a front end's input and output: ``samples`` of waveform
    ``(S,)`` in, features ``(n_bins, n_frames)`` = ``(F, T)`` out."""

    n_bins: int
    n_frames: int
    samples: int

    @property
    def features(self) -> tuple[int, int]:
        """``(F, T)``, the shape of one clip's features."""
        return self.n_bins, self.n_frames


@dataclass(frozen=True)
class FeatureSpec:
    """Every setting of a front end; ``to_dict()`` goes into ``features.json``, ``config.json`` and
    the ONNX metadata.

    ``n_bins`` is ``F`` of the output (mel bins, or MFCCs for ``mfcc``). Frequencies in Hz, lengths
    in samples. ``framing`` is ``"center"`` (librosa: ``n_fft // 2`` zeros each side, frame ``t``
    centred at ``t * hop``) or ``"snip_edges"`` (kaldi: only whole frames, frame ``t`` starts at
    ``t * hop``).
    """

    name: str
    sample_rate_hz: int
    n_bins: int
    n_fft: int
    win_length_samples: int
    hop_length_samples: int
    window: str  # "hann_periodic" | "hann_symmetric"
    framing: str  # "center" | "snip_edges"
    n_mels: int
    f_min_hz: float
    f_max_hz: float
    mel_scale: str  # "slaney" (librosa, Slaney area normalisation) | "kaldi" (HTK formula, unnormalised)
    preemphasis: float  # 0: none
    remove_dc_offset: bool
    log_scale: str  # "db_ref_max" (power_to_db, ref=max, amin, top_db) | "ln" (natural log, floor)
    top_db: float | None
    n_mfcc: int | None
    normalization: str  # "per_clip" | "fixed"
    norm_mean: float  # "fixed" only
    norm_std: float  # "fixed" only: divides by 2 * norm_std, as the AST recipe does
    norm_eps: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every field, in declaration order."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ``ValueError``."""
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(
                f"feature spec keys differ: unknown {sorted(set(data) - names)}, "
                f"missing {sorted(names - set(data))}"
            )
        return cls(**data)

    def clip_shape(self, seconds: float) -> ClipShape:
        """The shape of a clip of ``seconds``: its samples at the spec's rate
        (:func:`birdops.windows.seconds_to_samples`) and the ``(F, T)`` of its features. The one
        place a clip length becomes an input shape (the cache, training, loading a model, the
        export, evaluation and the benchmarks)."""
        # imported here: birdops.contracts types with this module and imports no numpy (windows does)
        from birdops.windows import seconds_to_samples

        samples = seconds_to_samples(seconds, self.sample_rate_hz)
        return ClipShape(self.n_bins, self.num_frames(samples), samples)

    def num_frames(self, num_samples: int) -> int:
        """Frames ``T`` of a waveform of ``num_samples`` samples."""
        if self.framing == "center":
            return 1 + num_samples // self.hop_length_samples
        if num_samples < self.win_length_samples:
            return 0
        return 1 + (num_samples - self.win_length_samples) // self.hop_length_samples
