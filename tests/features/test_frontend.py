"""The torch front ends against their references (librosa, torchaudio's kaldi fbank, the HF AST
extractor), their shapes, and their ONNX export run in onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import librosa
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scipy.signal
import torch
import torchaudio.compliance.kaldi as kaldi
from specs import SEED

from birdops.features.frontend import (
    NORM_EPS,
    PRESETS,
    LogMelFrontEnd,
    TwoStageDFT,
    build_frontend,
    compute_features,
    dct_ii_ortho,
    kaldi_mel_filters,
    slaney_mel_filters,
    spec_for,
)
from birdops.featurespec import FeatureSpec


def chirps_and_noise(sample_rate_hz: int, seconds: float = 4.0, count: int = 3) -> np.ndarray:
    """``(count, samples)`` float32: rising/falling chirps switching on at different times, plus noise."""
    rng = np.random.default_rng(sample_rate_hz)
    t = np.arange(round(seconds * sample_rate_hz)) / sample_rate_hz
    clips = []
    for i in range(count):
        chirp = scipy.signal.chirp(t, 800 + 700 * i, seconds, 6500 - 1500 * i, method="logarithmic")
        onset = (t > 0.6 * i).astype(float)
        clips.append(0.4 * chirp * onset + 0.02 * (i + 1) * rng.standard_normal(t.size))
    return np.stack(clips).astype(np.float32)


def run(preset: str, waves: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return build_frontend(preset)(torch.from_numpy(waves)).numpy()


def librosa_db_mel(wave: np.ndarray) -> np.ndarray:
    """The report's log-mel in float64 librosa: ``(128, T)`` dB."""
    mel = librosa.feature.melspectrogram(
        y=wave.astype(np.float64),
        sr=22050,
        n_fft=2048,
        hop_length=512,
        window="hann",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=128,
        fmin=500.0,
        fmax=11025.0,
        htk=False,
        norm="slaney",
    )
    return librosa.power_to_db(mel, ref=np.max, amin=1e-10, top_db=80.0)


def per_clip(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + NORM_EPS)


def test_the_tests_written_out_seed_spec_is_the_presets() -> None:
    assert spec_for("seed") == SEED


@pytest.mark.parametrize(
    ("preset", "shape"), [("seed", (128, 173)), ("ast", (128, 398)), ("mfcc", (40, 173))]
)
def test_four_second_clips_have_the_documented_shape(preset: str, shape: tuple[int, int]) -> None:
    frontend = build_frontend(preset)
    features = run(preset, chirps_and_noise(frontend.spec.sample_rate_hz, count=2))
    assert features.shape == (2, *shape) and features.dtype == np.float32
    assert frontend.spec.n_bins == shape[0]
    for seconds in (1.0, 2.5, 4.0, 5.3):
        n = round(seconds * frontend.spec.sample_rate_hz)
        assert run(preset, np.ones((1, n), dtype=np.float32)).shape[2] == frontend.num_frames(n)


def test_seed_matches_librosa() -> None:
    waves = chirps_and_noise(22050)
    ours = run("seed", waves)  # (B, 128, 173)
    diffs = [np.abs(ours[i] - per_clip(librosa_db_mel(w))).max() for i, w in enumerate(waves)]
    # measured ~1.6e-5: float32 STFT against float64 librosa, in units of the clip's dB std (~15 dB)
    assert max(diffs) < 1e-4, diffs


def test_mfcc_matches_librosa() -> None:
    waves = chirps_and_noise(22050)
    ours = run("mfcc", waves)  # (B, 40, 173)
    diffs = []
    for i, wave in enumerate(waves):
        mfcc = librosa.feature.mfcc(S=librosa_db_mel(wave), n_mfcc=40, dct_type=2, norm="ortho")
        diffs.append(np.abs(ours[i] - per_clip(mfcc)).max())
    assert max(diffs) < 1e-4, diffs  # measured ~4e-6


def test_ast_matches_torchaudio_kaldi_fbank() -> None:
    waves = chirps_and_noise(16000)
    ours = run("ast", waves)  # (B, 128, 398)
    diffs = []
    for i, wave in enumerate(waves):
        fbank = kaldi.fbank(
            torch.from_numpy(wave[None]),
            htk_compat=True,
            sample_frequency=16000,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=128,
            dither=0.0,
            frame_shift=10,
        ).numpy()  # (T, 128)
        reference = ((fbank + 4.2677393) / (2 * 4.5689974)).T  # (128, T)
        diffs.append(np.abs(ours[i] - reference).max())
    # measured ~2e-4: both sides are float32, and the log of the quietest bins (lowest mel bands,
    # emptied by DC removal and pre-emphasis) amplifies rounding; float32 kaldi itself differs from
    # float64 kaldi by ~3.6e-4 here. One unit of the output is 9.1 nats, so this is ~2e-3 nats.
    assert max(diffs) < 1e-3, diffs


def test_ast_matches_the_huggingface_feature_extractor() -> None:
    transformers = pytest.importorskip("transformers")
    waves = chirps_and_noise(16000, count=2)
    extractor = transformers.ASTFeatureExtractor()  # defaults: 128 bins, AudioSet mean/std, 1024 frames
    reference = extractor(list(waves), sampling_rate=16000, return_tensors="np")["input_values"]
    # (B, 1024, 128): frames past the clip are padding
    ours = run("ast", waves)  # (B, 128, 398)
    assert np.abs(ours - reference[:, :398].transpose(0, 2, 1)).max() < 1e-3


def test_a_zero_padded_tail_is_silence_to_ast_where_the_checkpoint_saw_its_padding_value() -> None:
    """1.5 s of sound in a 4 s window. birdops pads the waveform with zero samples (``windows.cut``);
    the AudioSet AST's own feature extractor computes the fbank of the real samples and pads *frames*
    with 0 before normalising. Every frame within the real samples agrees; the frames past them are
    digital silence to birdops (log of float32 eps, normalised: -1.2776, the floor, which under 1 % of
    the sound's values reach) and +0.4670 to the checkpoint (louder than 90 % of them); two frames
    straddle the end (docs/architecture.md, "Windows", says why birdops keeps its padding)."""
    transformers = pytest.importorskip("transformers")
    rate_hz = 16_000
    sound = chirps_and_noise(rate_hz, count=1)[0][: int(1.5 * rate_hz)]
    window = np.zeros(4 * rate_hz, dtype=np.float32)
    window[: len(sound)] = sound
    ours = run("ast", window[None])[0]  # (128, 398)
    extractor = transformers.ASTFeatureExtractor()
    theirs = extractor(sound, sampling_rate=rate_hz, return_tensors="np")["input_values"][0].T  # (128, 1024)
    within = 1 + (len(sound) - 400) // 160  # frames wholly inside the sound: 148
    past = -(-len(sound) // 160)  # frames starting at or after its end: 150 on
    assert np.abs(ours[:, :within] - theirs[:, :within]).max() < 1e-3
    silence = (np.log(np.finfo(np.float32).eps) + 4.2677393) / (2 * 4.5689974)
    np.testing.assert_allclose(ours[:, past:], silence, rtol=1e-6)
    np.testing.assert_allclose(theirs[:, within:], 4.2677393 / (2 * 4.5689974), rtol=1e-6)
    assert round(silence, 4) == -1.2776 and past - within == 2
    sound_values = ours[:, :within]
    assert np.mean(sound_values <= silence + 1e-6) < 0.01 and np.mean(sound_values < 0.4670) > 0.9


def test_filterbanks_and_dct_match_their_references() -> None:
    slaney = librosa.filters.mel(sr=22050, n_fft=2048, n_mels=128, fmin=500.0, fmax=11025.0, dtype=np.float64)
    np.testing.assert_allclose(slaney_mel_filters(22050, 2048, 128, 500.0, 11025.0), slaney, atol=1e-12)
    ours = kaldi_mel_filters(16000, 512, 128, 20.0, 8000.0)  # (128, 257)
    reference, _ = kaldi.get_mel_banks(128, 512, 16000.0, 20.0, 8000.0, 100.0, -500.0, 1.0)  # (128, 256)
    # torchaudio computes in float32: mel values ~2,800 with 2.4e-4 resolution move the edges ~1.4e-5
    np.testing.assert_allclose(ours[:, :256], reference, atol=5e-5)
    assert not ours[:, 256].any()
    x = np.random.default_rng(0).standard_normal((128, 5))
    dct = scipy.fft.dct(x, axis=0, norm="ortho")[:40]
    np.testing.assert_allclose(dct_ii_ortho(40, 128) @ x, dct, atol=1e-12)


def test_features_are_normalised_per_clip_and_independent_of_the_batch() -> None:
    waves = chirps_and_noise(22050)
    waves[1] *= 30.0  # loudness changes nothing after ref=max dB and per-clip normalisation
    batch = run("seed", waves)
    np.testing.assert_allclose(batch.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(batch.std(axis=(1, 2)), 1.0, atol=1e-4)
    np.testing.assert_allclose(batch[1], run("seed", waves[1:2] / 30.0)[0], atol=1e-4)
    np.testing.assert_allclose(batch[2], run("seed", waves[2:3])[0], atol=1e-4)
    assert np.all(np.isfinite(run("seed", np.zeros((1, 22050), dtype=np.float32))))  # eps-guarded


def test_seed_cuts_energy_below_the_500_hz_high_pass() -> None:
    t = np.arange(4 * 22050) / 22050
    low = (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    high = (0.5 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    with torch.no_grad():
        frontend = build_frontend("seed")
        mel = torch.matmul(
            frontend.mel_filters,
            torch.stft(
                torch.from_numpy(np.stack([low, high])),
                2048,
                512,
                window=frontend.window,
                return_complex=True,
            )
            .abs()
            .square(),
        )  # (2, 128, T)
    # away from the zero-padded edges (whose onset clicks are broadband) 200 Hz leaves < -60 dB
    assert mel[0, :, 4:-4].max() < 1e-6 * mel[1, :, 4:-4].max()


def test_spec_round_trips_through_json() -> None:
    for preset in PRESETS:
        spec = build_frontend(preset).spec
        assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="unknown"):
        FeatureSpec.from_dict({**spec.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="unknown feature preset"):
        build_frontend("mel")


@pytest.mark.parametrize("preset", PRESETS)
def test_onnx_export_with_dynamic_batch_matches_torch(preset: str, tmp_path: Path) -> None:
    frontend = build_frontend(preset)
    waves = chirps_and_noise(frontend.spec.sample_rate_hz, seconds=2.0, count=3)
    path = tmp_path / f"{preset}.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        frontend,
        (torch.from_numpy(waves[:2]),),
        str(path),
        dynamo=True,
        input_names=["waveform"],
        output_names=["features"],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"STFT", "DFT"} and "MatMul" in ops  # the two-stage DFT, plain ONNX ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = run(preset, waves)
    for n in (1, 3):  # batch sizes other than the traced one
        (got,) = session.run(None, {"waveform": waves[:n]})
        # Both sides are float32 and differ only in where the FFT rounds. seed/mfcc: max ~3e-5 (4 s
        # clips), mean ~1e-6. ast: max ~1e-3 in its lowest mel bins (20-60 Hz, emptied by DC removal
        # and pre-emphasis), whose energy (~1e-6 of the frame's) sits at FFT rounding level and whose
        # log magnifies it; float32 kaldi.fbank itself is that far from float64. The mean stays ~1e-6.
        np.testing.assert_allclose(got, expected[:n], rtol=0, atol=2e-3 if preset == "ast" else 1e-4)
        assert np.abs(got - expected[:n]).mean() < 1e-5


def exported_formulation(frontend: torch.nn.Module, waves: np.ndarray) -> np.ndarray:
    """``frontend``'s output computed eagerly by the formulation it exports (the two-stage DFT)."""
    with torch.no_grad(), mock.patch("torch.compiler.is_exporting", return_value=True):
        return frontend(torch.from_numpy(waves)).numpy()


@pytest.mark.parametrize(("n_fft", "rows"), [(2048, 64), (2048, 32), (512, 16), (48, 6)])
def test_two_stage_dft_gives_the_mel_energies_of_the_fft(n_fft: int, rows: int) -> None:
    rng = np.random.default_rng(n_fft + rows)
    frames = rng.standard_normal((2, 5, n_fft))  # (B, T, N)
    filters = rng.uniform(size=(7, n_fft // 2 + 1))  # (M, K): every bin weighs in, the last one too
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # (B, T, K) float64
    expected = power @ filters.T  # (B, T, M)
    dft = TwoStageDFT(n_fft, rows, filters)
    with torch.no_grad():
        columns = dft.columns_of(torch.from_numpy(frames).float())  # (N, B T)
        got = dft(columns).transpose(0, 1).reshape(2, 5, 7).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6 * np.abs(expected).max())
    with pytest.raises(ValueError, match="not a multiple"):
        TwoStageDFT(n_fft, rows + 1 if n_fft % (rows + 1) else rows - 1, filters)


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_the_mel_groups_give_the_dense_product(groups: int) -> None:
    n_fft, rows = 256, 16
    rng = np.random.default_rng(groups)
    frames = rng.standard_normal((2, 5, n_fft))  # (B, T, N)
    filters = slaney_mel_filters(8000, n_fft, 12, 300.0, 4000.0)  # (M, K): zero below 300 Hz
    filters[4:6] = 0.0  # a group may reach no bin at all (the third of 6)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # (B, T, K) float64
    expected = power @ filters.T  # (B, T, M)
    dft = TwoStageDFT(n_fft, rows, filters, mel_groups=groups)
    assert len(dft.mel_spans) == groups
    with torch.no_grad():
        got = dft(dft.columns_of(torch.from_numpy(frames).float())).transpose(0, 1).reshape(2, 5, 12)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=2e-5, atol=1e-6 * np.abs(expected).max())


def test_the_mel_groups_read_only_the_bins_their_filters_reach() -> None:
    frontend = build_frontend("seed")
    filters = frontend.mel_filters.numpy()  # (128, 1025)
    dft = frontend.dft
    work = sum(getattr(dft, f"mel_group_{i}").numel() for i in range(len(dft.mel_spans)))
    assert work < 0.15 * filters.size  # the dense product's work, less the zeros of narrow filters
    assert dft.mel_rows.numel() == dft.mel_spans[-1][1]
    # every non-zero weight of the filterbank is in its group
    assert sum(
        float(getattr(dft, f"mel_group_{i}").sum()) for i in range(len(dft.mel_spans))
    ) == pytest.approx(float(filters.sum()), rel=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_the_exported_formulation_matches_the_eager_one(preset: str) -> None:
    frontend = build_frontend(preset)
    waves = chirps_and_noise(frontend.spec.sample_rate_hz)
    eager = run(preset, waves)
    dft = exported_formulation(frontend, waves)
    assert dft.shape == eager.shape
    # float32 rounding only: seed/mfcc max ~3e-5 (what onnxruntime's STFT op gave, too); ast's log
    # magnifies the rounding of its nearly empty lowest bins, as in the ONNX test below
    np.testing.assert_allclose(dft, eager, rtol=0, atol=2e-3 if preset == "ast" else 5e-5)
    assert np.abs(dft - eager).mean() < 3e-6  # a few float32 steps of features of unit variance


def test_shared_spectrogram_gives_bit_identical_features() -> None:
    frontends = [build_frontend(p) for p in ("seed", "mfcc", "ast", "seed")]
    waves = chirps_and_noise(22050, count=4)
    with torch.no_grad():
        shared = compute_features(frontends, torch.from_numpy(waves))
        alone = [f(torch.from_numpy(waves)) for f in frontends]
    assert [f.spec.name for f in frontends] == ["seed", "mfcc", "ast", "seed"]
    for got, expected in zip(shared, alone, strict=True):
        assert torch.equal(got, expected)
    seed, mfcc = frontends[:2]
    assert isinstance(seed, LogMelFrontEnd) and isinstance(mfcc, LogMelFrontEnd)
    assert seed.spectrogram_key() == mfcc.spectrogram_key()
