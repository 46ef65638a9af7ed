"""Serving-side inference (``birdops.serve.inference``) on the tone-detector ONNX model of
``tones.py``, whose answers are known in advance. The real exported model is served in
``test_export.py``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
from onnx import helper
from tones import DETECTOR, LABELS, RATE_HZ, TONES_HZ, WINDOW_SECONDS, tone_model, tones

from birdops import providers
from birdops.audio import BLOCK_FRAMES, AudioError, load_audio
from birdops.providers import CPU_PROVIDER
from birdops.serve import inference
from birdops.serve.inference import Classifier, ModelError
from birdops.windows import even_batches, even_windows


@pytest.fixture(scope="module")
def classifier(model_path: Path) -> Classifier:
    return Classifier.load(model_path, providers=[CPU_PROVIDER], intra_op_threads=1)


# ---------------------------------------------------------------------------------------- loading
def test_load_reads_everything_from_the_model_file(classifier: Classifier) -> None:
    assert classifier.labels == LABELS
    assert classifier.sample_rate_hz == RATE_HZ and classifier.window_seconds == WINDOW_SECONDS
    assert classifier.metadata.variant == "tones" and classifier.metadata.model_sha256 == "abc123"
    assert classifier.providers == [CPU_PROVIDER]
    described = classifier.describe()
    assert described["num_labels"] == 3 and described["providers"] == [CPU_PROVIDER]


def test_spinning_off_makes_the_intra_op_threads_sleep_between_runs(model_path: Path) -> None:
    def spinning(classifier: Classifier) -> str:
        options = classifier.session.get_session_options()
        return options.get_session_config_entry("session.intra_op.allow_spinning")

    quiet = inference.open_classifier(model_path, "cpu", intra_op_threads=2, spinning=False)
    assert spinning(quiet) == "0"
    with pytest.raises(Exception, match="allow_spinning"):  # onnxruntime's default: not set, it spins
        spinning(Classifier.load(model_path, providers=[CPU_PROVIDER]))
    wave = tones([(TONES_HZ[0], 3 * WINDOW_SECONDS)])
    np.testing.assert_array_equal(
        quiet.predict_windows(wave).scores, Classifier.load(model_path).predict_windows(wave).scores
    )


def test_a_file_is_decoded_a_batch_of_windows_ahead(classifier: Classifier) -> None:
    window = round(WINDOW_SECONDS * RATE_HZ)
    assert classifier.ahead(16) == 17 * window  # a batch's windows without overlap, and one more


def test_default_providers_are_device_autos(model_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Without providers a classifier asks for device ``auto``'s (CUDA only when it can run here); the
    providers actually in use are what it reports, and onnxruntime prints no library error."""
    loaded = Classifier.load(model_path)
    assert loaded.requested_providers == providers.choose_providers("auto").providers
    assert loaded.providers[-1] == CPU_PROVIDER
    assert "Failed to load library" not in capfd.readouterr().err


def test_a_required_cuda_that_cannot_run_is_refused(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(providers, "cuda_usable", lambda: (False, "no NVIDIA driver (libcuda.so.1)"))
    with pytest.raises(ModelError, match=r"device cuda: CUDA cannot run here: no NVIDIA driver"):
        inference.open_classifier(model_path, "cuda")
    with caplog.at_level(logging.INFO, logger="birdops.serve.inference"):
        classifier = inference.open_classifier(model_path, "auto", intra_op_threads=1)
    assert classifier.providers == [CPU_PROVIDER]
    assert (
        "device auto: CPU (no NVIDIA driver (libcuda.so.1)): running on CPUExecutionProvider" in caplog.text
    )


def test_models_that_are_not_birdops_exports_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        Classifier.load(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(ModelError, match="cannot load"):
        Classifier.load(garbage, providers=[CPU_PROVIDER])
    bare = tone_model()
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelError, match="not a birdops export"):
        Classifier.load(tmp_path / "bare.onnx", providers=[CPU_PROVIDER])
    wrong_window = tone_model()
    props = {p.key: p.value for p in wrong_window.metadata_props} | {"birdops.window_seconds": "2.0"}
    del wrong_window.metadata_props[:]
    helper.set_model_props(wrong_window, props)
    onnx.save(wrong_window, str(tmp_path / "wrong.onnx"))
    with pytest.raises(ModelError, match="takes 8000 samples"):
        Classifier.load(tmp_path / "wrong.onnx", providers=[CPU_PROVIDER])
    too_many_labels = tone_model(labels=(*LABELS, "Extra"))
    onnx.save(too_many_labels, str(tmp_path / "labels.onnx"))
    with pytest.raises(ModelError, match="3 logits but 4 labels"):
        Classifier.load(tmp_path / "labels.onnx", providers=[CPU_PROVIDER])


def test_each_window_gets_the_species_of_its_tone(classifier: Classifier) -> None:
    # 2 s low, 1 s high, 1.5 s mid: windows of 1 s, no overlap (the default hop)
    wave = tones([(TONES_HZ[0], 2.0), (TONES_HZ[2], 1.0), (TONES_HZ[1], 1.5)])
    result = classifier.predict_windows(wave, batch_size=2)
    np.testing.assert_allclose(result.starts_s, [0.0, 1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(result.ends_s, [1.0, 2.0, 3.0, 4.0, 4.5])  # the last is cut at the end
    assert result.duration_s == pytest.approx(4.5)
    assert result.scores.argmax(axis=1).tolist() == [0, 0, 2, 1, 1]
    np.testing.assert_allclose(result.scores.sum(axis=1), 1.0, rtol=1e-6)
    assert [[s.species for s in top] for top in result.window_top(1)] == [
        ["Low tone"],
        ["Low tone"],
        ["High tone"],
        ["Mid tone"],
        ["Mid tone"],
    ]
    file_top = result.file_top(3)  # mean probability over the windows: 2/5 low, 2/5 mid, 1/5 high
    assert [s.species for s in file_top] == ["Low tone", "Mid tone", "High tone"]
    np.testing.assert_allclose([s.score for s in file_top], [0.4, 0.4, 0.2], atol=1e-3)


def test_scores_are_the_softmax_of_the_logits_whatever_the_batch(classifier: Classifier) -> None:
    wave = tones([(TONES_HZ[1], 0.7), (TONES_HZ[0], 0.9), (TONES_HZ[2], 1.9)])
    windows, starts_s = even_windows(wave, RATE_HZ, WINDOW_SECONDS, 0.25)
    logits = classifier.logits(windows)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    for batch_size in (1, 3, 100):
        result = classifier.predict_windows(wave, hop_seconds=0.25, batch_size=batch_size)
        np.testing.assert_allclose(result.starts_s, starts_s)
        np.testing.assert_allclose(result.scores, expected, rtol=1e-5, atol=1e-7)
        assert result.scores.dtype == np.float32  # the float64 softmax, rounded once
    with pytest.raises(ValueError, match="expected"):
        classifier.logits(windows[:, :100])


def test_a_calibrated_sigmoid_model_scores_each_species_on_its_own(tmp_path: Path) -> None:
    """The model's scoring metadata is applied: sigmoid(scale * logits + bias), one probability per
    species (rows need not sum to 1: noise scores low everywhere, two tones high together), and the
    file's score of a species is its best window's."""
    path = tmp_path / "detector.onnx"
    onnx.save(tone_model(scoring=DETECTOR), str(path))
    detector = Classifier.load(path, providers=[CPU_PROVIDER], intra_op_threads=1)
    assert detector.metadata.scoring == DETECTOR
    assert detector.describe()["activation"] == "sigmoid" and detector.describe()["thresholds"] == [0.5] * 3
    # windows: the mid tone, noise, half low and half high
    wave = tones([(TONES_HZ[1], 1.0), (0, 1.0), (TONES_HZ[0], 0.5), (TONES_HZ[2], 0.5)])
    result = detector.predict_windows(wave, batch_size=2)
    windows, _ = even_windows(wave, RATE_HZ, WINDOW_SECONDS, WINDOW_SECONDS)
    logits = detector.logits(windows).astype(np.float64)
    expected = 1.0 / (1.0 + np.exp(-(0.8 * logits - 3.0)))
    np.testing.assert_allclose(result.scores, expected, rtol=1e-6)
    assert result.activation == "sigmoid" and result.scores.dtype == np.float32
    assert (result.scores >= 0.5).tolist() == [[False, True, False], [False] * 3, [True, False, True]]
    np.testing.assert_allclose(result.file_scores(), result.scores.max(axis=0))
    assert [s.species for s in result.file_top(2)] == ["Mid tone", "Low tone"]


def test_overlapping_windows_locate_a_short_call(classifier: Classifier) -> None:
    """A 1.25 s high call from 2.4 s in low tone: the windows that are mostly call say high."""
    wave = tones([(TONES_HZ[0], 2.4), (TONES_HZ[2], 1.25), (TONES_HZ[0], 2.35)])
    result = classifier.predict_windows(wave, hop_seconds=0.5)
    np.testing.assert_allclose(result.starts_s, np.arange(11) * 0.5)  # 0, 0.5, ..., 5.0 for 6 s
    high = result.starts_s[result.scores.argmax(axis=1) == 2]
    np.testing.assert_allclose(high, [2.0, 2.5, 3.0])  # 60 %, 100 % and 65 % of the window is call


def test_top_k_orders_limits_and_filters() -> None:
    probabilities = np.array([0.1, 0.5, 0.1, 0.3])
    labels = ["a", "b", "c", "d"]
    assert [s.species for s in inference.top_k(probabilities, labels, 3)] == ["b", "d", "a"]  # ties: index
    assert [s.species for s in inference.top_k(probabilities, labels, 10, min_score=0.3)] == ["b", "d"]
    assert inference.top_k(probabilities, labels, 0) == []


# ---------------------------------------------------------------------------------------- files
def test_files_and_bytes_are_decoded_at_the_model_rate(classifier: Classifier, tmp_path: Path) -> None:
    """A 44.1 kHz stereo FLAC is resampled to the model's 8 kHz; bytes decode like the file."""
    rate_hz = 44100
    mono = tones([(TONES_HZ[2], 1.0), (TONES_HZ[0], 1.0)], rate_hz)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([mono, mono], axis=1), rate_hz)
    from_file = classifier.predict_file(path)
    assert from_file.duration_s == pytest.approx(2.0, abs=1e-3)
    assert from_file.scores.argmax(axis=1).tolist() == [2, 0]
    from_bytes = classifier.predict_bytes(path.read_bytes(), "stereo.flac")
    np.testing.assert_allclose(from_bytes.scores, from_file.scores)
    with pytest.raises(AudioError, match=r"upload\.mp3"):
        classifier.predict_bytes(b"ID3 this is no mp3 at all" * 8, "upload.mp3")


def _stereo(seconds: float, rate_hz: int, seed: int) -> np.ndarray:
    """Two channels of tones (a new tone every 0.7 s) in noise, float32 ``(samples, 2)``."""
    plan = [(TONES_HZ[k % 3], 0.7) for k in range(int(np.ceil(seconds / 0.7)))]
    mono = tones(plan, rate_hz)[: round(seconds * rate_hz)]
    noise = np.random.default_rng(seed).normal(0, 0.02, (len(mono), 2))
    return (np.stack([mono, 0.5 * mono], axis=1) + noise).astype(np.float32)


@pytest.mark.parametrize(
    ("filename", "rate_hz", "channels", "seconds", "hop_seconds", "batch_size"),
    [
        ("long.flac", 44100, 2, 9.3, None, 4),  # blocks of 1.49 s: boundaries inside windows and batches
        ("odd.wav", 11025, 1, 13.7, 0.3, 3),  # overlapping windows, a rate that is no multiple of 8 kHz
        ("stereo.mp3", 22050, 2, 7.9, 0.7, 2),
        ("mono.mp3", 16000, 1, 9.1, None, 32),
        ("high.ogg", 48000, 2, 5.2, 2.5, 2),  # a hop longer than the window: samples no window needs
        ("short.flac", 32000, 2, 0.6, None, 32),  # shorter than one window: one zero-padded window
    ],
)
def test_streamed_files_score_exactly_like_the_whole_decoded_file(
    classifier: Classifier,
    tmp_path: Path,
    filename: str,
    rate_hz: int,
    channels: int,
    seconds: float,
    hop_seconds: float | None,
    batch_size: int,
) -> None:
    """predict_file and predict_bytes stream the file; their windows and scores are bit for bit those
    of the whole file decoded by load_audio (what training and evaluation see) and then windowed."""
    path = tmp_path / filename
    sf.write(path, _stereo(seconds, rate_hz, seed=len(filename))[:, :channels], rate_hz)
    assert seconds < WINDOW_SECONDS or sf.info(path).frames > BLOCK_FRAMES  # more than one block
    whole = classifier.predict_windows(load_audio(path, RATE_HZ, WINDOW_SECONDS), hop_seconds, batch_size)
    for streamed in (
        classifier.predict_file(path, hop_seconds, batch_size),
        classifier.predict_bytes(path.read_bytes(), filename, hop_seconds, batch_size),
    ):
        np.testing.assert_array_equal(streamed.starts_s, whole.starts_s)
        np.testing.assert_array_equal(streamed.scores, whole.scores)
        assert streamed.duration_s == whole.duration_s


def test_a_streamed_file_is_classified_in_memory_that_does_not_grow_with_its_length(
    classifier: Classifier, tmp_path: Path
) -> None:
    """Peak traced memory (numpy's buffers included) of predict_file on 20 s and on 200 s of 44.1 kHz
    stereo, 4 windows a batch: the same (one block and one batch), and far below the 200 s file
    decoded whole (its mono mix alone is 35 MiB)."""
    import tracemalloc

    peaks = []
    for seconds in (20, 200):
        path = tmp_path / f"{seconds}s.wav"
        with sf.SoundFile(path, "w", 44100, 2, subtype="PCM_16") as handle:
            for _ in range(seconds // 10):
                handle.write(_stereo(10.0, 44100, seed=seconds))
        tracemalloc.start()
        result = classifier.predict_file(path, batch_size=4)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(result.starts_s) == seconds
    whole_mono_bytes = 200 * 44100 * 4
    assert peaks[1] < 1.2 * peaks[0] + 2**20 and peaks[1] < whole_mono_bytes / 8, peaks


# -------------------------------------------------------------------------------------- embeddings
@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """The tone model with an embedding output (each filter's mean power, 6 wide)."""
    path = tmp_path_factory.mktemp("embedder") / "tones.onnx"
    onnx.save(tone_model(scoring=DETECTOR, embedding=True), str(path))
    return Classifier.load(path, providers=[CPU_PROVIDER], intra_op_threads=1)


def test_each_window_gets_its_embedding_from_the_run_that_scores_it(
    embedder: Classifier, tmp_path: Path
) -> None:
    """The embeddings are the graph's second output for exactly the windows scored, streamed or whole,
    and asking for them changes no score."""
    assert embedder.embedding is not None and embedder.embedding.dim == 6
    wave = tones([(TONES_HZ[0], 1.0), (TONES_HZ[2], 1.5), (TONES_HZ[1], 0.8)])
    path = tmp_path / "tones.flac"
    sf.write(path, wave, RATE_HZ, subtype="PCM_24")
    batches = list(even_batches(load_audio(path, RATE_HZ), RATE_HZ, WINDOW_SECONDS, 0.5, 3))
    # the same batches: onnxruntime's kernels may round the last bit differently for another batch size
    direct = np.concatenate([embedder.session.run(["embedding"], {"waveform": w})[0] for w, _ in batches])
    starts_s = np.concatenate([starts for _, starts in batches])
    result = embedder.predict_file(path, hop_seconds=0.5, batch_size=3, embeddings=True)
    np.testing.assert_array_equal(result.starts_s, starts_s)
    assert result.embeddings is not None and result.embeddings.dtype == np.float32
    np.testing.assert_array_equal(result.embeddings, direct)
    # each window's embedding is its filters' power: the strongest pair is its tone's
    assert result.embeddings.reshape(-1, 3, 2).sum(axis=2).argmax(axis=1)[[0, 3]].tolist() == [0, 2]
    plain = embedder.predict_file(path, hop_seconds=0.5, batch_size=3)
    assert plain.embeddings is None
    np.testing.assert_array_equal(plain.scores, result.scores)
    whole = embedder.predict_windows(load_audio(path, RATE_HZ, WINDOW_SECONDS), 0.5, 3, embeddings=True)
    assert whole.embeddings is not None
    np.testing.assert_array_equal(whole.embeddings, result.embeddings)
    assert embedder.describe()["embedding_dim"] == 6


def test_a_model_without_embeddings_refuses_to_give_them(classifier: Classifier) -> None:
    assert classifier.embedding is None and classifier.describe()["embedding_dim"] is None
    wave = tones([(TONES_HZ[0], 2.0)])
    with pytest.raises(ModelError, match=r"no embedding output .*lacks birdops\.embedding"):
        classifier.predict_windows(wave, embeddings=True)
    assert classifier.predict_windows(wave).embeddings is None  # scores as before


def test_an_embedding_prop_that_the_graph_does_not_match_is_refused(tmp_path: Path) -> None:
    for output, dim, message in (("pooled", 6, "names the output 'pooled'"), ("embedding", 8, "6 wide")):
        model = tone_model(embedding=True)
        props = {p.key: p.value for p in model.metadata_props}
        props["birdops.embedding"] = json.dumps({"output": output, "dim": dim})
        del model.metadata_props[:]
        helper.set_model_props(model, props)
        onnx.save(model, str(tmp_path / "odd.onnx"))
        with pytest.raises(ModelError, match=message):
            Classifier.load(tmp_path / "odd.onnx", providers=[CPU_PROVIDER])
