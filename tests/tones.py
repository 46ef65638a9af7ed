"""A small ONNX model with birdops metadata, built with the ONNX helper API (no torch), for the
serving tests: a "tone detector" whose logit for class k is the log energy of the input at
``TONES_HZ[k]`` (cos/sin convolution filters). Its answers are known in advance, so windows, start
times, batching, softmax and aggregation can be checked against the truth of the generated audio.

Logits, measured: about 7.3 for a window full of a class's tone at :func:`tones`' amplitude 0.3,
6.6 for half a window of it, 2.7 at a tenth of the amplitude, -1.4 or less for the other classes'
tones and about -3.6 for noise of standard deviation 0.01. ``tone_model(scoring=DETECTOR)`` is the
detector an export after calibration is: sigmoid scores ``sigmoid(0.8 * logit - 3)`` (about 0.95 for a
tone, 0.30 for the quiet tone, under 0.02 for the others and noise) and thresholds of 0.5.
``tone_model(embedding=True)`` also gives the second output of an export with embeddings: the mean
power of each filter, ``embedding [batch, 6]``, which the logits read as a model's head reads its
pooled vector.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from birdops.contracts import Embedding, ModelMetadata, Scoring
from birdops.featurespec import FeatureSpec

LABELS = ("Low tone", "Mid tone", "High tone")
TONES_HZ = (400.0, 1200.0, 3000.0)
RATE_HZ = 8000
WINDOW_SECONDS = 1.0
DETECTOR = Scoring(activation="sigmoid", scale=0.8, bias=-3.0, thresholds=(0.5, 0.5, 0.5))
# what the metadata says of the features (the graph's filters are the tones): the band 100 Hz to Nyquist
FEATURES = FeatureSpec(
    name="tones",
    sample_rate_hz=RATE_HZ,
    n_bins=len(TONES_HZ),
    n_fft=256,
    win_length_samples=256,
    hop_length_samples=128,
    window="hann_periodic",
    framing="center",
    n_mels=len(TONES_HZ),
    f_min_hz=100.0,
    f_max_hz=RATE_HZ / 2,
    mel_scale="slaney",
    preemphasis=0.0,
    remove_dc_offset=False,
    log_scale="ln",
    top_db=None,
    n_mfcc=None,
    normalization="fixed",
    norm_mean=0.0,
    norm_std=1.0,
    norm_eps=1e-10,
)


def tone_model(
    labels: tuple[str, ...] = LABELS,
    window_seconds: float = WINDOW_SECONDS,
    scoring: Scoring | None = None,
    embedding: bool = False,
) -> onnx.ModelProto:
    """``waveform [batch, S]`` -> ``logits [batch, C]``: log mean energy at each class's tone; the
    metadata names ``labels`` (normally one per tone) and ``scoring`` (None: no scoring props, as an
    export from before calibration); with ``embedding``, also ``embedding [batch, 2C]`` (named in the
    metadata too)."""
    kernel = 256
    t = np.arange(kernel) / RATE_HZ
    filters = np.concatenate([[np.cos(2 * np.pi * f * t), np.sin(2 * np.pi * f * t)] for f in TONES_HZ])
    constants = {
        "filters": filters[:, None, :].astype(np.float32),  # (2C, 1, K)
        "pairs": np.repeat(np.eye(len(TONES_HZ)), 2, axis=0).astype(np.float32),  # (2C, C): cos^2 + sin^2
        "axis1": np.array([1]),
        "axis2": np.array([2]),
        "floor": np.array(1e-6, dtype=np.float32),
    }
    nodes = [
        helper.make_node("Unsqueeze", ["waveform", "axis1"], ["x"]),  # (B, 1, S)
        helper.make_node("Conv", ["x", "filters"], ["y"], strides=[kernel // 2]),  # (B, 2C, T)
        helper.make_node("Mul", ["y", "y"], ["power"]),
        helper.make_node("ReduceMean", ["power", "axis2"], ["embedding"], keepdims=0),  # (B, 2C)
        helper.make_node("MatMul", ["embedding", "pairs"], ["energy"]),  # (B, C)
        helper.make_node("Add", ["energy", "floor"], ["floored"]),
        helper.make_node("Log", ["floored"], ["logits"]),
    ]
    samples = round(window_seconds * RATE_HZ)
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(TONES_HZ)])]
    if embedding:
        outputs.append(
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 2 * len(TONES_HZ)])
        )
    graph = helper.make_graph(
        nodes,
        "tones",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", samples])],
        outputs,
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    metadata = ModelMetadata(
        labels,
        WINDOW_SECONDS,
        FEATURES,
        "tones",
        "abc123",
        embedding=Embedding(2 * len(TONES_HZ)) if embedding else None,
    )
    props = metadata.to_props()
    if scoring is None:
        props = {key: value for key, value in props.items() if key not in Scoring().to_props()}
    else:
        props |= scoring.to_props()
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def tones(plan: list[tuple[float, float]], rate_hz: int = RATE_HZ, amplitude: float = 0.3) -> np.ndarray:
    """Concatenated pure tones ``[(frequency_hz, seconds), ...]``, float32; a frequency of 0 is noise of
    standard deviation 0.01 (not silence, which the decoder refuses: a stretch without any tone)."""
    noise = np.random.default_rng(0)
    parts = [
        amplitude * np.sin(2 * np.pi * f * np.arange(round(s * rate_hz)) / rate_hz)
        if f > 0
        else noise.normal(0.0, 0.01, round(s * rate_hz))
        for f, s in plan
    ]
    return np.concatenate(parts).astype(np.float32)
