"""A small ONNX model with birdops metadata, built with the ONNX helper API (no torch), for the
serving tests: a "tone detector" whose logit for class k is the log energy of the input at
``TONES_HZ[k]`` (cos/sin convolution filters). Its answers are known in advance, so windows, start
times, batching, softmax and aggregation can be checked against the truth of the generated audio.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from birdops.contracts import ModelMetadata

LABELS = ("Low tone", "Mid tone", "High tone")
TONES_HZ = (400.0, 1200.0, 3000.0)
RATE_HZ = 8000
WINDOW_SECONDS = 1.0


def tone_model(labels: tuple[str, ...] = LABELS, window_seconds: float = WINDOW_SECONDS) -> onnx.ModelProto:
    """``waveform [batch, S]`` -> ``logits [batch, C]``: log mean energy at each class's tone; the
    metadata names ``labels`` (normally one per tone)."""
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
        helper.make_node("ReduceMean", ["power", "axis2"], ["mean"], keepdims=0),  # (B, 2C)
        helper.make_node("MatMul", ["mean", "pairs"], ["energy"]),  # (B, C)
        helper.make_node("Add", ["energy", "floor"], ["floored"]),
        helper.make_node("Log", ["floored"], ["logits"]),
    ]
    samples = round(window_seconds * RATE_HZ)
    graph = helper.make_graph(
        nodes,
        "tones",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", samples])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(TONES_HZ)])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    metadata = ModelMetadata(labels, RATE_HZ, WINDOW_SECONDS, {"f_min_hz": 100.0}, "tones", "abc123")
    helper.set_model_props(model, metadata.to_props())
    onnx.checker.check_model(model, full_check=True)
    return model


def tones(plan: list[tuple[float, float]], rate_hz: int = RATE_HZ) -> np.ndarray:
    """Concatenated pure tones ``[(frequency_hz, seconds), ...]``, amplitude 0.3, float32."""
    parts = [0.3 * np.sin(2 * np.pi * f * np.arange(round(s * rate_hz)) / rate_hz) for f, s in plan]
    return np.concatenate(parts).astype(np.float32)
