"""benchmarks/onnx_ab.py on two real ONNX files: it runs both in onnxruntime and prints their times,
their ratio and how far their outputs differ."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "onnx_ab.py"


def sum_model(path: Path, scale: float) -> Path:
    """``waveform [batch, 64] -> logits [batch, 1]``: ``scale`` times the sum over samples."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["waveform", "axes"], ["total"], keepdims=1),
            helper.make_node("Mul", ["total", "scale"], ["logits"]),
        ],
        "sum",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        [
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # what onnxruntime reads (the onnx package may write a newer one)
    onnx.save(model, path)
    return path


def test_it_times_both_models_and_reports_how_far_their_outputs_differ(tmp_path: Path) -> None:
    before, after = sum_model(tmp_path / "before.onnx", 1.0), sum_model(tmp_path / "after.onnx", 2.0)
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(before),
            str(after),
            "--threads",
            "1,2",
            "--rounds",
            "3",
            "--batch-size",
            "4",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    lines = out.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == ["1 thread(s)", "2 thread(s)"]
    for line in lines:
        assert re.search(
            r"batch 4: before [\d.]+ ms, after [\d.]+ ms \([\d.]+x\); largest output difference", line
        )
        # the second model doubles the first's sums: the difference is the sum itself, far from 0
        assert float(line.rsplit(" ", 1)[1]) > 0.1
