"""An NVIDIA Triton model repository for the exported model (onnxruntime backend).

    <repository>/<name>/config.pbtxt
    <repository>/<name>/labels.txt      the model's labels, one a line (the output's label file)
    <repository>/<name>/1/model.onnx

Input and output names, data types and shapes are read from the ONNX graph itself, never assumed:
the first dimension of every input and output must be the dynamic batch (Triton adds it back under
``max_batch_size``); other dynamic dimensions become ``-1``.

    tritonserver --model-repository models/export/model_repository
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from birdops.contracts import LABELS_KEY, MODEL_FILE, OUTPUT_NAME
from birdops.files import atomic_path, write_text_atomic

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
VERSION = "1"

# onnx TensorProto element types -> Triton DataType names (model_config.proto)
TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.STRING: "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as Triton sees it: ``dims`` without the batch dimension."""

    name: str
    data_type: str  # Triton DataType, e.g. TYPE_FP32
    dims: tuple[int, ...]  # -1 for a dynamic dimension


def tensor_specs(values: Sequence[onnx.ValueInfoProto]) -> list[TensorSpec]:
    """Triton specs of graph inputs/outputs; each must be a tensor with a leading dynamic batch."""
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor.elem_type not in TRITON_TYPES:
            raise ValueError(f"{value.name}: not a tensor of a type Triton knows")
        dims = list(tensor.shape.dim)
        if not dims or dims[0].HasField("dim_value"):
            raise ValueError(f"{value.name}: the first dimension must be a dynamic batch to batch requests")
        rest = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])
        specs.append(TensorSpec(value.name, TRITON_TYPES[tensor.elem_type], rest))
    return specs


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs (older exporters also list initializers as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Up to three powers of two up to ``max_batch_size`` (the largest ones, plus itself)."""
    sizes = {2**k for k in range(max_batch_size.bit_length()) if 2**k <= max_batch_size} | {max_batch_size}
    return sorted(sizes)[-3:]


def render_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
    label_output: str | None = None,
    max_queue_delay_microseconds: int = 2000,
) -> str:
    """``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``)."""

    def tensor(spec: TensorSpec, extra: str = "") -> str:
        dims = ", ".join(str(d) for d in spec.dims)
        fields = f'    name: "{spec.name}"\n    data_type: {spec.data_type}\n    dims: [ {dims} ]\n{extra}'
        return f"  {{\n{fields}  }}"

    labels = f'    label_filename: "{LABELS_FILE}"\n'
    rendered_outputs = [tensor(o, labels if o.name == label_output else "") for o in outputs]
    preferred = ", ".join(str(s) for s in preferred_batch_sizes(max_batch_size))
    return "\n".join(
        [
            "# Written by birdops.export.triton from the ONNX graph; regenerate rather than edit.",
            f'name: "{name}"',
            'backend: "onnxruntime"',
            f"max_batch_size: {max_batch_size}",
            "input [\n" + ",\n".join(tensor(i) for i in inputs) + "\n]",
            "output [\n" + ",\n".join(rendered_outputs) + "\n]",
            "dynamic_batching {",
            f"  preferred_batch_size: [ {preferred} ]",
            f"  max_queue_delay_microseconds: {max_queue_delay_microseconds}",
            "}",
            "instance_group [",
            "  {",
            "    # one instance per visible GPU; on a CPU-only server use `kind: KIND_CPU` (and `count: N`",
            "    # for N parallel instances) -- KIND_GPU fails to load without a GPU",
            "    count: 1",
            "    kind: KIND_GPU",
            "  }",
            "]",
            "",
        ]
    )


def write_repository(model_path: Path, repository: Path, name: str, max_batch_size: int) -> Path:
    """Write ``repository/name/`` (config, labels, ``1/model.onnx``) for ``model_path``, replacing
    what was there; returns the config's path."""
    model = onnx.load(str(model_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    labels = json.loads(props[LABELS_KEY]) if LABELS_KEY in props else None
    inputs = tensor_specs(graph_inputs(model))
    outputs = tensor_specs(list(model.graph.output))
    folder = repository / name
    if folder.exists():
        shutil.rmtree(folder)
    with atomic_path(folder / VERSION / MODEL_FILE) as temp:  # the file name Triton looks for
        shutil.copyfile(model_path, temp)
    label_output = OUTPUT_NAME if labels is not None and any(o.name == OUTPUT_NAME for o in outputs) else None
    if label_output:
        write_text_atomic(folder / LABELS_FILE, "".join(f"{label}\n" for label in labels or []))
    config = folder / CONFIG_FILE
    write_text_atomic(config, render_config(name, inputs, outputs, max_batch_size, label_output))
    return config
