"""The Triton model repository: config.pbtxt parsed against Triton's own schema and compared with the
ONNX graph it describes.

The schema is the part of Triton's ``model_config.proto`` (``inference.ModelConfig``) that the writer
uses, with Triton's field names, numbers and enum values, built here with protobuf's descriptor API:
``text_format.Parse`` then rejects any field or enum value Triton would not know.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from onnx import TensorProto, helper, numpy_helper

from birdops.export import triton

F = descriptor_pb2.FieldDescriptorProto
DATA_TYPES = [
    "TYPE_INVALID",
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_UINT16",
    "TYPE_UINT32",
    "TYPE_UINT64",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_FP32",
    "TYPE_FP64",
    "TYPE_STRING",
    "TYPE_BF16",
]


def field(name: str, number: int, kind: int, repeated: bool = False, type_name: str = "") -> F:
    label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
    spec = F(name=name, number=number, type=kind, label=label)
    if type_name:
        spec.type_name = type_name
    return spec


@functools.cache
def model_config_class() -> Any:
    """``inference.ModelConfig`` with the fields the writer uses (numbers as in model_config.proto)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="triton_subset.proto", package="inference", syntax="proto3"
    )
    data_type = proto.enum_type.add(name="DataType")
    for number, name in enumerate(DATA_TYPES):
        data_type.value.add(name=name, number=number)
    dt = ".inference.DataType"
    proto.message_type.add(name="ModelInput").field.extend(
        [
            field("name", 1, F.TYPE_STRING),
            field("data_type", 2, F.TYPE_ENUM, type_name=dt),
            field("dims", 4, F.TYPE_INT64, repeated=True),
        ]
    )
    proto.message_type.add(name="ModelOutput").field.extend(
        [
            field("name", 1, F.TYPE_STRING),
            field("data_type", 2, F.TYPE_ENUM, type_name=dt),
            field("dims", 3, F.TYPE_INT64, repeated=True),
            field("label_filename", 4, F.TYPE_STRING),
        ]
    )
    proto.message_type.add(name="ModelDynamicBatching").field.extend(
        [
            field("preferred_batch_size", 1, F.TYPE_INT32, repeated=True),
            field("max_queue_delay_microseconds", 2, F.TYPE_UINT64),
        ]
    )
    group = proto.message_type.add(name="ModelInstanceGroup")
    kind = group.enum_type.add(name="Kind")
    for number, name in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=name, number=number)
    group.field.extend(
        [
            field("name", 1, F.TYPE_STRING),
            field("count", 2, F.TYPE_INT32),
            field("gpus", 3, F.TYPE_INT32, repeated=True),
            field("kind", 4, F.TYPE_ENUM, type_name=".inference.ModelInstanceGroup.Kind"),
        ]
    )
    proto.message_type.add(name="ModelConfig").field.extend(
        [
            field("name", 1, F.TYPE_STRING),
            field("platform", 2, F.TYPE_STRING),
            field("backend", 17, F.TYPE_STRING),
            field("max_batch_size", 4, F.TYPE_INT32),
            field("input", 5, F.TYPE_MESSAGE, repeated=True, type_name=".inference.ModelInput"),
            field("output", 6, F.TYPE_MESSAGE, repeated=True, type_name=".inference.ModelOutput"),
            field(
                "instance_group", 7, F.TYPE_MESSAGE, repeated=True, type_name=".inference.ModelInstanceGroup"
            ),
            field("dynamic_batching", 11, F.TYPE_MESSAGE, type_name=".inference.ModelDynamicBatching"),
        ]
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_config(path: Path) -> Any:
    return text_format.Parse(path.read_text(), model_config_class()())


def write_model(
    path: Path,
    inputs: list[tuple[str, int, list[str | int]]],
    outputs: list[tuple[str, int, list[str | int]]],
    labels: list[str] | None = None,
) -> None:
    """A valid ONNX model with the given graph inputs/outputs: each output is its input cast to the
    output's type and reduced/reshaped as needed (the values do not matter here, the signature does)."""
    nodes, inits = [], []
    for k, ((in_name, _, _), (out_name, out_type, out_dims)) in enumerate(zip(inputs, outputs, strict=True)):
        width = out_dims[-1] if isinstance(out_dims[-1], int) else 1
        inits.append(numpy_helper.from_array(np.array([1, -1], dtype=np.int64), f"flat{k}"))
        inits.append(numpy_helper.from_array(np.ones((1, width), dtype=np.float32), f"ones{k}"))
        nodes += [
            helper.make_node("Cast", [in_name], [f"f{k}"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", [f"f{k}", f"flat{k}"], [f"r{k}"]),
            helper.make_node("ReduceSum", [f"r{k}"], [f"s{k}"], keepdims=1),  # (B, 1)
            helper.make_node("MatMul", [f"s{k}", f"ones{k}"], [f"m{k}"]),  # (B, width)
            helper.make_node("Cast", [f"m{k}"], [out_name], to=out_type),
        ]
    graph = helper.make_graph(
        nodes,
        "signature",
        [helper.make_tensor_value_info(n, t, d) for n, t, d in inputs],
        [helper.make_tensor_value_info(n, t, d) for n, t, d in outputs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    if labels is not None:
        helper.set_model_props(model, {"birdops.labels": json.dumps(labels)})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def graph_signature(path: Path) -> list[tuple[str, int, list[int | str]]]:
    model = onnx.load(str(path))
    return [
        (
            v.name,
            v.type.tensor_type.elem_type,
            [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim],
        )
        for v in [*model.graph.input, *model.graph.output]
    ]


def test_config_matches_the_birdops_signature(tmp_path: Path) -> None:
    labels = ["Parus major", "Turdus merula", "Erithacus rubecula"]
    model = tmp_path / "model.onnx"
    write_model(
        model,
        [("waveform", TensorProto.FLOAT, ["batch", 88200])],
        [("logits", TensorProto.FLOAT, ["batch", 3])],
        labels,
    )
    config_path = triton.write_repository(model, tmp_path / "repo", "birdops", max_batch_size=64)
    assert config_path == tmp_path / "repo" / "birdops" / "config.pbtxt"
    config = parse_config(config_path)
    assert (config.name, config.backend, config.max_batch_size) == ("birdops", "onnxruntime", 64)
    # every graph input/output, with its name, type and non-batch dims, read from the graph
    declared = [(t.name, t.data_type, list(t.dims)) for t in [*config.input, *config.output]]
    fp32 = DATA_TYPES.index("TYPE_FP32")
    assert declared == [("waveform", fp32, [88200]), ("logits", fp32, [3])]
    assert [(n, t, d[1:]) for n, t, d in graph_signature(model)] == [
        ("waveform", TensorProto.FLOAT, [88200]),
        ("logits", TensorProto.FLOAT, [3]),
    ]
    assert config.output[0].label_filename == "labels.txt"
    assert (config_path.parent / "labels.txt").read_text().splitlines() == labels
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32, 64]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    (group,) = config.instance_group
    assert group.kind == 1 and group.count == 1  # KIND_GPU
    assert "KIND_CPU" in config_path.read_text()  # the comment on CPU-only servers
    assert (config_path.parent / "1" / "model.onnx").read_bytes() == model.read_bytes()


def test_names_types_and_dims_come_from_the_graph_not_from_assumptions(tmp_path: Path) -> None:
    """Other names, float16 and int64 tensors, a second dynamic dimension and no labels."""
    model = tmp_path / "other.onnx"
    write_model(
        model,
        inputs=[("audio", TensorProto.FLOAT16, ["n", "time"]), ("ids", TensorProto.INT64, ["n", 4])],
        outputs=[("scores", TensorProto.FLOAT16, ["n", 7]), ("count", TensorProto.INT64, ["n", 2])],
    )
    config = parse_config(triton.write_repository(model, tmp_path / "repo", "other", max_batch_size=6))
    declared = [(t.name, DATA_TYPES[t.data_type], list(t.dims)) for t in [*config.input, *config.output]]
    assert declared == [
        ("audio", "TYPE_FP16", [-1]),
        ("ids", "TYPE_INT64", [4]),
        ("scores", "TYPE_FP16", [7]),
        ("count", "TYPE_INT64", [2]),
    ]
    assert not any(o.label_filename for o in config.output)  # no birdops.labels metadata
    assert not (tmp_path / "repo" / "other" / "labels.txt").exists()
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 6]


def test_rewriting_replaces_the_old_repository(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    write_model(
        model, [("waveform", TensorProto.FLOAT, ["b", 100])], [("logits", TensorProto.FLOAT, ["b", 2])]
    )
    stale = tmp_path / "repo" / "m" / "2" / "model.onnx"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old version")
    triton.write_repository(model, tmp_path / "repo", "m", max_batch_size=1)
    assert sorted(p.name for p in (tmp_path / "repo" / "m").iterdir()) == ["1", "config.pbtxt"]
    assert list(
        parse_config(tmp_path / "repo" / "m" / "config.pbtxt").dynamic_batching.preferred_batch_size
    ) == [1]


def test_a_fixed_batch_dimension_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "fixed.onnx"
    write_model(model, [("waveform", TensorProto.FLOAT, [1, 100])], [("logits", TensorProto.FLOAT, [1, 2])])
    with pytest.raises(ValueError, match="dynamic batch"):
        triton.write_repository(model, tmp_path / "repo", "fixed", max_batch_size=8)


def test_a_misspelled_field_would_not_parse() -> None:
    """The schema is strict, so the tests above really check Triton's field and enum names."""
    with pytest.raises(text_format.ParseError):
        text_format.Parse(
            'name: "x"\ninput [ { name: "a" data_type: FP32 dims: [ 1 ] } ]', model_config_class()()
        )
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nmax_batch: 4', model_config_class()())
