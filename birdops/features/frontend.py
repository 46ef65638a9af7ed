"""Feature front ends: ``waveform (B, S) float32 -> features (B, F, T) float32`` as ``torch.nn.Module``.

One module per preset serves the feature cache, training-time augmentation and the exported ONNX
graph, so the features a model was trained on are the features it is served with. Filterbanks,
windows and the DCT are buffers computed once in ``__init__``; ``forward`` has no data-dependent
Python control flow, so ``torch.onnx.export(..., dynamo=True)`` traces it with a dynamic batch.

The spectrum has two formulations of one transform, chosen by ``torch.compiler.is_exporting()``:
eagerly (the cache, training, PyTorch evaluation) ``torch.stft`` / ``torch.fft.rfft``; when exported,
a two-stage Cooley-Tukey DFT written as MatMuls with the twiddle factors in constant matrices, on
frames laid out as columns so that no stage transposes its input (:class:`TwoStageDFT`), because
onnxruntime's single-threaded ``STFT`` / ``DFT`` kernels cost more than the whole rest of the model.
Both give the same power spectrum to float32 rounding (``tests/features/test_frontend.py``); the
exported graph holds plain ONNX ops only (Triton runs it as is).

Presets (``PRESETS``):

- ``seed``: the report's log-mel. 22,050 Hz, n_fft 2048, hop 512, periodic Hann window, centred frames
  (zero padding, librosa >= 0.10), power spectrum, 128 Slaney mels from 500 Hz (the high-pass) to
  Nyquist, ``librosa.power_to_db(S, ref=np.max, amin=1e-10, top_db=80)`` per clip, then per-clip
  normalisation ``(x - mean) / (std + 1e-6)``. 4 s (88,200 samples) -> (128, 173).
- ``ast``: what the AudioSet AST checkpoints were trained on (``ASTFeatureExtractor``):
  ``torchaudio.compliance.kaldi.fbank(wave, sample_frequency=16000, window_type="hanning",
  num_mel_bins=128)`` with its defaults (25 ms frames, 10 ms shift, snip_edges, DC removal,
  pre-emphasis 0.97, FFT size 512, power, natural log floored at float32 eps, dither 0), on the
  waveform as it is (the extractor does not scale it by 2**15), then AudioSet normalisation
  ``(x + 4.2677393) / (2 * 4.5689974)``. 4 s (64,000 samples) -> (128, 398).
- ``mfcc``: 40 MFCCs, the orthonormal DCT-II of the ``seed`` dB mel spectrogram (before its
  normalisation, as ``librosa.feature.mfcc(S=db, n_mfcc=40)``), then per-clip normalisation.
  4 s -> (40, 173).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from birdops.featurespec import FeatureSpec

PRESETS = ("seed", "ast", "mfcc")
# FeatureSpec fields that apply after LogMelFrontEnd.db_mel (everything else decides the dB mel)
SPEC_AFTER_DB_MEL = frozenset(
    {"name", "n_bins", "n_mfcc", "normalization", "norm_mean", "norm_std", "norm_eps"}
)

# per-clip normalisation: (x - mean) / (std + NORM_EPS); only a constant clip comes near it
NORM_EPS = 1e-6
# AudioSet statistics of the kaldi fbank used by the AST checkpoints (ASTFeatureExtractor defaults)
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


def spec_for(preset: str) -> FeatureSpec:
    """The :class:`FeatureSpec` of a preset name (one of ``PRESETS``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown feature preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if preset == "ast":
        return FeatureSpec(
            name="ast",
            sample_rate_hz=16000,
            n_bins=128,
            n_fft=512,
            win_length_samples=400,
            hop_length_samples=160,
            window="hann_symmetric",
            framing="snip_edges",
            n_mels=128,
            f_min_hz=20.0,
            f_max_hz=8000.0,
            mel_scale="kaldi",
            preemphasis=0.97,
            remove_dc_offset=True,
            log_scale="ln",
            top_db=None,
            n_mfcc=None,
            normalization="fixed",
            norm_mean=AUDIOSET_MEAN,
            norm_std=AUDIOSET_STD,
            norm_eps=float(torch.finfo(torch.float32).eps),
        )
    n_mfcc = 40 if preset == "mfcc" else None
    return FeatureSpec(
        name=preset,
        sample_rate_hz=22050,
        n_bins=n_mfcc or 128,
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
        n_mfcc=n_mfcc,
        normalization="per_clip",
        norm_mean=0.0,
        norm_std=1.0,
        norm_eps=NORM_EPS,
    )


# n_fft -> rows N1 of the exported two-stage DFT (n_fft = N1 x N2): the fastest factorisation in
# onnxruntime on 2 CPU threads (seed front end: 64 x 32 1.15x faster than 32 x 64; with the twiddle
# factors as separate complex Muls instead of folded into stage 2, 1.44x slower)
DFT_ROWS = {2048: 64, 512: 16}
# groups of neighbouring mel filters in the exported DFT's last stage (:class:`TwoStageDFT`): 4, 8 and
# 16 gave the seed front end 1.14x, 1.16x and 1.16x over one dense product (onnxruntime, one thread)
MEL_GROUPS = 8


class TwoStageDFT(nn.Module):
    """Mel energies of real frames by a two-stage DFT: ``frames (N, R) -> mel (M, R)``.

    The ``R`` frames are *columns*: ``frames[n, r]`` is sample ``n`` of frame ``r`` (the front ends
    cut them so; :meth:`columns_of` turns ``(B, T, N)`` frames). ``N = N1 * N2``, sample
    ``n = N2 * n1 + n2``, bin ``k = k1 + N1 * k2``. With the frames as columns every stage is a
    matrix product from the left and nothing is transposed in between:

    1. a length-``N1`` DFT over ``n1``, for ``k1 = 0 .. N1 / 2`` only: the frames are real, so
       ``k1`` and ``N1 - k1`` are complex conjugates. One MatMul ``(2 (N1/2 + 1), N1) @ (N1, N2 R)``,
       rows ``(k1, re/im)``, columns ``(n2, r)``: for each ``k1`` a ``[re; im]`` block ``(2 N2, R)``;
    2. for each ``k1``, the twiddle factor ``exp(-2 pi i k1 n2 / N)`` and the length-``N2`` DFT over
       ``n2`` folded into one real matrix acting on the block, which gives the ``K2`` bins of ``k1``
       and, from the conjugate, those of ``N1 - k1``: one batched MatMul over ``k1``, ``(4 K2, 2 N2)``
       each, for the ``K2`` values of ``k2`` that reach the ``K = N // 2 + 1`` kept bins;
    3. the power; its rows that a mel filter reads, gathered once into the order of the bins (one
       Gather, dropping the bins past ``K``, the duplicates ``N1 - k1`` of ``k1 = 0`` and ``N1 / 2``
       and the bins no filter reads); then the mel filterbank by groups of ``M / mel_groups``
       neighbouring filters, each a MatMul over the bins its filters reach only. A mel filter is zero
       outside its few neighbouring bins, so the groups do a fraction of the dense product's work
       (``seed``: 12% with 8 groups; the front end 1.16x faster in onnxruntime on one thread).

    Matrices are computed in float64 and stored float32.
    """

    stage1: torch.Tensor
    stage2: torch.Tensor
    mel_rows: torch.Tensor

    def __init__(self, n_fft: int, rows: int, mel_filters: np.ndarray, mel_groups: int = MEL_GROUPS) -> None:
        super().__init__()
        if n_fft % rows or rows % 2:
            raise ValueError(f"n_fft {n_fft} is not a multiple of the DFT's {rows} rows, or they are odd")
        n1, n2 = rows, n_fft // rows
        half = n1 // 2 + 1  # k1 = 0 .. N1 / 2
        n_bins = mel_filters.shape[1]  # K
        k2_count = math.ceil(n_bins / n1)  # K2: columns k2 that hold a kept bin
        self.n1, self.n2, self.n_half, self.k2_count = n1, n2, half, k2_count
        angle1 = 2.0 * np.pi * np.outer(np.arange(half), np.arange(n1)) / n1  # (k1, n1)
        stage1 = np.stack([np.cos(angle1), -np.sin(angle1)], axis=1).reshape(2 * half, n1)  # (k1, re/im)
        k1 = np.arange(half)[:, None, None]  # (H, 1, 1)
        k2, n = np.arange(k2_count)[None, :, None], np.arange(n2)[None, None, :]  # (1, K2, 1), (1, 1, N2)
        direct = 2.0 * np.pi * (k1 * n / n_fft + k2 * n / n2)  # (H, K2, N2): bins k1 + N1 k2
        mirror = 2.0 * np.pi * ((n1 - k1) * n / n_fft + k2 * n / n2)  # bins N1 - k1 + N1 k2
        # (re + i im) exp(-i a) = (re cos a + im sin a) + i (im cos a - re sin a); the conjugate
        # (re - i im) of N1 - k1 gives (re cos b - im sin b) + i (-im cos b - re sin b)
        c, s_, cm, sm = np.cos(direct), np.sin(direct), np.cos(mirror), np.sin(mirror)
        stage2 = np.concatenate(
            [
                np.concatenate([c, s_], axis=2),  # re of k1
                np.concatenate([-s_, c], axis=2),  # im of k1
                np.concatenate([cm, -sm], axis=2),  # re of N1 - k1
                np.concatenate([-sm, -cm], axis=2),  # im of N1 - k1
            ],
            axis=1,
        )  # (H, 4 K2, 2 N2)
        bins = np.stack(  # (H, 2, K2): the bin each power row holds
            [
                np.arange(half)[:, None] + n1 * np.arange(k2_count),
                (n1 - np.arange(half))[:, None] + n1 * np.arange(k2_count),
            ],
            axis=1,
        )
        valid = bins < n_bins
        valid[[0, half - 1], 1] = False  # N1 - 0 and N1 - N1/2 repeat bins of k1 = 0 and N1/2
        row_of_bin = np.empty(n_bins, dtype=np.int64)  # the power row that holds each bin
        row_of_bin[bins[valid]] = np.flatnonzero(valid.reshape(-1))
        for name, value in (("stage1", stage1), ("stage2", stage2)):
            self.register_buffer(name, torch.from_numpy(value).float(), persistent=False)
        # stage 3: per group of neighbouring filters, the bins [lo, hi) they reach, gathered one
        # group after the other (neighbouring groups share a bin or two)
        self.mel_spans: list[tuple[int, int]] = []  # the group's rows in the gathered power
        gathered: list[np.ndarray] = []
        size = -(-mel_filters.shape[0] // mel_groups)  # filters a group
        start = 0
        for index, first in enumerate(range(0, mel_filters.shape[0], size)):
            filters = mel_filters[first : first + size]  # (G, K)
            reached = np.flatnonzero(filters.any(axis=0))
            lo, hi = (int(reached[0]), int(reached[-1]) + 1) if len(reached) else (0, 1)
            self.mel_spans.append((start, start + hi - lo))
            gathered.append(row_of_bin[lo:hi])
            start += hi - lo
            group = torch.from_numpy(filters[:, lo:hi]).float()  # (G, hi - lo)
            self.register_buffer(f"mel_group_{index}", group, persistent=False)
        self.register_buffer("mel_rows", torch.from_numpy(np.concatenate(gathered)), persistent=False)

    @staticmethod
    def columns_of(frames: torch.Tensor) -> torch.Tensor:
        """``frames (B, T, N)`` as the columns :meth:`forward` takes: ``(N, B * T)``."""
        return frames.reshape(-1, frames.shape[-1]).transpose(0, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        n1, n2, half, k2_count = self.n1, self.n2, self.n_half, self.k2_count
        y = torch.matmul(self.stage1, frames.reshape(n1, -1))  # (2 H, N2 R): DFT over n1
        y = torch.matmul(self.stage2, y.reshape(half, 2 * n2, -1))  # (H, 4 K2, R): [re; im] of k1, N1 - k1
        y = y.reshape(half, 2, 2, k2_count, -1)  # (H, k1 | N1 - k1, re | im, K2, R)
        power = y[:, :, 0].square() + y[:, :, 1].square()  # (H, 2, K2, R)
        power = power.reshape(half * 2 * k2_count, -1)[self.mel_rows]  # (bins the groups reach, R)
        groups = [
            torch.matmul(getattr(self, f"mel_group_{index}"), power[start:stop])  # (G, R)
            for index, (start, stop) in enumerate(self.mel_spans)
        ]
        return torch.cat(groups, dim=0)  # (M, R)


class FrontEnd(nn.Module):
    """Base of the front ends: ``forward(waveform (B, S) float32) -> (B, F, T) float32``."""

    window: torch.Tensor
    mel_filters: torch.Tensor

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.spec = spec
        periodic = spec.window == "hann_periodic"
        window = torch.hann_window(spec.win_length_samples, periodic=periodic, dtype=torch.float64)
        self.register_buffer("window", window.float(), persistent=False)  # (W,)
        make_filters = slaney_mel_filters if spec.mel_scale == "slaney" else kaldi_mel_filters
        mel = make_filters(spec.sample_rate_hz, spec.n_fft, spec.n_mels, spec.f_min_hz, spec.f_max_hz)
        self.register_buffer("mel_filters", torch.from_numpy(mel).float(), persistent=False)  # (M, K)
        self.dft = TwoStageDFT(spec.n_fft, DFT_ROWS[spec.n_fft], mel)

    def num_frames(self, num_samples: int) -> int:
        """Frames ``T`` that ``forward`` gives for ``num_samples`` samples."""
        return self.spec.num_frames(num_samples)


class LogMelFrontEnd(FrontEnd):
    """``seed`` (log-mel, dB, per-clip normalised) and ``mfcc`` (DCT-II of that dB mel, normalised)."""

    dct: torch.Tensor | None

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__(spec)
        if spec.win_length_samples != spec.n_fft or spec.n_fft % spec.hop_length_samples:
            raise ValueError(f"{spec.name}: centred frames need win_length = n_fft, a multiple of the hop")
        dct = dct_ii_ortho(spec.n_mfcc, spec.n_mels) if spec.n_mfcc is not None else None
        # (F, M) for mfcc; None (no buffer) for seed
        self.register_buffer("dct", None if dct is None else torch.from_numpy(dct).float(), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.from_db_mel(self.db_mel(waveform))

    def db_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """The dB mel spectrogram ``(B, M, T)`` before the DCT and normalisation: the part that
        presets with the same :meth:`spectrogram_key` share (:func:`compute_features`)."""
        return self.db_of_mel_power(self.mel_power(waveform))

    def mel_power(self, waveform: torch.Tensor) -> torch.Tensor:
        """The mel power spectrogram ``(B, M, T)``: STFT (the two-stage DFT when exported), power, mel."""
        spec = self.spec
        if torch.compiler.is_exporting():
            n_frames = self.num_frames(waveform.shape[-1])
            mel: torch.Tensor = self.dft(self.centred_columns(waveform))  # (M, B T)
            return mel.reshape(spec.n_mels, -1, n_frames).transpose(0, 1)  # (B, M, T)
        stft = torch.stft(
            waveform,
            spec.n_fft,
            spec.hop_length_samples,
            spec.win_length_samples,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # (B, K, T), K = n_fft // 2 + 1
        power = stft.real.square() + stft.imag.square()  # (B, K, T)
        return torch.matmul(self.mel_filters, power)  # (B, M, T)

    def db_of_mel_power(self, mel: torch.Tensor) -> torch.Tensor:
        """``power_to_db`` of a mel power spectrogram with this preset's floor: ``(B, M, T) -> (B, M, T)``."""
        return power_to_db(mel, amin=1e-10, top_db=self.spec.top_db or 80.0)

    def from_db_mel(self, db: torch.Tensor) -> torch.Tensor:
        """Features ``(B, F, T)`` of a dB mel spectrogram ``(B, M, T)`` from :meth:`db_mel`."""
        if self.dct is not None:
            db = torch.matmul(self.dct, db)  # (B, F, T)
        return normalize_per_clip(db, self.spec.norm_eps)

    def spectrogram_key(self) -> tuple[Any, ...]:
        """The settings :meth:`db_mel` depends on: front ends with equal keys compute the same one."""
        spec = self.spec.to_dict()
        return tuple(v for k, v in spec.items() if k not in SPEC_AFTER_DB_MEL)

    def centred_columns(self, waveform: torch.Tensor) -> torch.Tensor:
        """``torch.stft(center=True, pad_mode="constant")``'s windowed frames as the columns the
        exported DFT takes: ``(B, S) -> (N, B * T)``, ``[n, b * T + t]`` = sample ``n`` of frame ``t``.

        Built from hop-sized blocks (the hop divides the frame length): the padded waveform as
        blocks, transposed once to ``(hop, B, blocks)`` (the size of the waveform), then samples
        ``q * hop .. (q + 1) * hop - 1`` of every frame are blocks ``q .. q + T - 1``: a slice per
        ``q``, concatenated -- no gather of every sample of every frame.
        """
        spec = self.spec
        hop, width = spec.hop_length_samples, spec.win_length_samples
        n_frames = self.num_frames(waveform.shape[-1])
        pad = width // 2
        tail = -(waveform.shape[-1] + 2 * pad) % hop  # to whole blocks; never reaches a frame
        padded = nn.functional.pad(waveform, (pad, pad + tail))  # (B, S')
        blocks = padded.reshape(waveform.shape[0], -1, hop).permute(2, 0, 1)  # (hop, B, S' / hop)
        parts = [blocks[:, :, q : q + n_frames] for q in range(width // hop)]  # each (hop, B, T)
        columns = torch.cat(parts, dim=0) * self.window[:, None, None]  # (W, B, T)
        return columns.reshape(width, -1)  # (W, B T)


class KaldiFbankFrontEnd(FrontEnd):
    """``ast``: kaldi-compatible log-mel fbank (``torchaudio.compliance.kaldi.fbank``), batched."""

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        frames = waveform.unfold(-1, spec.win_length_samples, spec.hop_length_samples)  # (B, T, W)
        frames = frames - frames.mean(dim=-1, keepdim=True)  # DC removal per frame
        # pre-emphasis; kaldi's first sample sees itself as its predecessor
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # (B, T, W)
        frames = (frames - spec.preemphasis * previous) * self.window  # (B, T, W)
        frames = nn.functional.pad(frames, (0, spec.n_fft - spec.win_length_samples))  # (B, T, n_fft)
        if torch.compiler.is_exporting():
            mel = self.dft(self.dft.columns_of(frames)).transpose(0, 1)  # (B T, M)
            mel = mel.reshape(frames.shape[0], -1, spec.n_mels)  # (B, T, M)
        else:
            fft = torch.fft.rfft(frames, dim=-1)  # (B, T, K)
            power = fft.real.square() + fft.imag.square()  # (B, T, K)
            mel = torch.matmul(power, self.mel_filters.T)  # (B, T, M)
        log_mel = torch.log(torch.clamp(mel, min=spec.norm_eps))  # (B, T, M)
        features = (log_mel - spec.norm_mean) / (2.0 * spec.norm_std)  # (B, T, M)
        return features.transpose(1, 2)  # (B, M, T)


def build_frontend(preset: str) -> FrontEnd:
    """The front end of a preset (``seed``, ``ast`` or ``mfcc``), in eval mode on the CPU."""
    spec = spec_for(preset)
    module: FrontEnd = KaldiFbankFrontEnd(spec) if spec.framing == "snip_edges" else LogMelFrontEnd(spec)
    return module.eval()


def compute_features(frontends: Sequence[FrontEnd], waveform: torch.Tensor) -> list[torch.Tensor]:
    """Each front end's ``forward(waveform)``, ``waveform (B, S)``, with one :meth:`LogMelFrontEnd.db_mel`
    per :meth:`~LogMelFrontEnd.spectrogram_key` (``seed`` and ``mfcc`` share their STFT, mel and
    dB): bit-identical to calling the front ends one by one, in about half the time for both."""
    shared: dict[tuple[Any, ...], torch.Tensor] = {}
    features = []
    for frontend in frontends:
        if isinstance(frontend, LogMelFrontEnd):
            key = frontend.spectrogram_key()
            if key not in shared:
                shared[key] = frontend.db_mel(waveform)  # (B, M, T)
            features.append(frontend.from_db_mel(shared[key]))
        else:
            features.append(frontend(waveform))
    return features


def power_to_db(power: torch.Tensor, amin: float, top_db: float) -> torch.Tensor:
    """``librosa.power_to_db(S, ref=np.max, amin, top_db)`` per clip: ``(B, M, T) -> (B, M, T)`` dB."""
    log_spec = 10.0 * torch.log10(torch.clamp(power, min=amin))  # (B, M, T)
    ref = 10.0 * torch.log10(torch.clamp(power.amax(dim=(1, 2), keepdim=True), min=amin))  # (B, 1, 1)
    log_spec = log_spec - ref
    floor = log_spec.amax(dim=(1, 2), keepdim=True) - top_db  # (B, 1, 1)
    return torch.maximum(log_spec, floor)


def normalize_per_clip(features: torch.Tensor, eps: float) -> torch.Tensor:
    """Zero mean, unit (population) variance over each clip's ``(F, T)``: ``(x - mean) / (std + eps)``."""
    mean = features.mean(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    centred = features - mean
    std = centred.square().mean(dim=(1, 2), keepdim=True).sqrt()  # (B, 1, 1)
    return centred / (std + eps)


def slaney_mel_filters(
    sample_rate_hz: int, n_fft: int, n_mels: int, f_min_hz: float, f_max_hz: float
) -> np.ndarray:
    """``librosa.filters.mel(..., htk=False, norm="slaney")`` in float64: ``(n_mels, n_fft // 2 + 1)``."""
    fft_hz = np.linspace(0.0, sample_rate_hz / 2.0, n_fft // 2 + 1)  # (K,)
    edges_hz = _slaney_mel_to_hz(
        np.linspace(_slaney_hz_to_mel(f_min_hz), _slaney_hz_to_mel(f_max_hz), n_mels + 2)
    )  # (M + 2,)
    widths_hz = np.diff(edges_hz)  # (M + 1,)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (M + 2, K)
    lower = -ramps[:-2] / widths_hz[:-1, None]  # (M, K)
    upper = ramps[2:] / widths_hz[1:, None]  # (M, K)
    weights = np.maximum(0.0, np.minimum(lower, upper))
    out: np.ndarray = weights * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # Slaney: constant area
    return out


def _slaney_hz_to_mel(hz: float | np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    linear = hz / f_sp
    log = min_log_hz / f_sp + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log, linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def kaldi_mel_filters(
    sample_rate_hz: int, n_fft: int, n_mels: int, f_min_hz: float, f_max_hz: float
) -> np.ndarray:
    """Kaldi's mel bins (``kaldi.get_mel_banks``, no VTLN) in float64: ``(n_mels, n_fft // 2 + 1)``.

    Triangles are linear in mel (``1127 ln(1 + f / 700)``) and unnormalised; the Nyquist bin gets 0.
    """
    mel_low, mel_high = _kaldi_mel(np.array(f_min_hz)), _kaldi_mel(np.array(f_max_hz))
    delta = (mel_high - mel_low) / (n_mels + 1)
    left = mel_low + np.arange(n_mels) * delta  # (M,)
    centre, right = left + delta, left + 2 * delta
    fft_mel = _kaldi_mel(np.arange(n_fft // 2) * sample_rate_hz / n_fft)  # (K - 1,)
    up = (fft_mel[None, :] - left[:, None]) / (centre - left)[:, None]  # (M, K - 1)
    down = (right[:, None] - fft_mel[None, :]) / (right - centre)[:, None]  # (M, K - 1)
    weights = np.maximum(0.0, np.minimum(up, down))
    return np.pad(weights, ((0, 0), (0, 1)))  # (M, K)


def _kaldi_mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def dct_ii_ortho(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``(n_out, n_in)`` (``scipy.fft.dct(x, type=2, norm="ortho")[:n_out]``)."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)  # (n_out, n_in)
    basis[0] /= math.sqrt(2.0)
    return basis
