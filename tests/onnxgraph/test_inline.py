"""Inline weights left in their file, new weights in a store, and the wire format both are read and written in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from support.builders import conv_bn, op_count

import foldnorm
from foldnorm.errors import InvalidModelError
from foldnorm.fold.engine import fold_model, inspect_model
from foldnorm.onnxgraph import graph as graph_module
from foldnorm.onnxgraph import wire
from foldnorm.onnxgraph.external import data_files, is_on_disk, tensor_array, write_inline
from foldnorm.onnxgraph.inline import read_skeleton
from foldnorm.onnxgraph.modelio import load_model, model_files, save_model
from foldnorm.onnxgraph.store import TensorStore
from foldnorm.onnxgraph.tensors import INLINE, STORED, external_ref


def _model(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv [32, 16, 3, 3] (18 KB) -> BN with 32 channels, a bias of 128 bytes: weights big and small."""
    return conv_bn(rng, cin=16, cout=32, spatial=(6, 6), bias=True)


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: tensor_array(t) for t in model.graph.initializer}


def test_wire_reads_what_protobuf_writes_and_refuses_what_it_cannot(rng: np.random.Generator) -> None:
    model = _model(rng)
    data = model.SerializeToString()
    fields = list(wire.fields(data, 0, len(data)))
    assert [f.number for f in fields] == [1, 7, 8]  # ir_version, graph, opset_import
    graph = fields[1]
    entries = [f for f in wire.fields(data, graph.value_start, graph.end) if f.number == 5]
    assert len(entries) == len(model.graph.initializer) == 6
    big = list(wire.long_entries(data, graph.value_start, graph.end, 5, 1024))
    assert [(k, f.end - f.value_start) for k, f in big] == [(0, entries[0].end - entries[0].value_start)]
    assert onnx.TensorProto.FromString(data[big[0][1].value_start:big[0][1].end]).name == "W"
    assert wire.varint(300) == b"\xac\x02" and wire.read_varint(b"\xac\x02", 0, 2) == (300, 2)
    for bad in (b"\x0a\x05ab", b"\x08\x80", b"\x0b", b"\x00\x01"):  # past the end, cut varint, group, field 0
        with pytest.raises(wire.WireError):
            list(wire.fields(bad, 0, len(bad)))
        with pytest.raises(wire.WireError):
            list(wire.long_entries(bad, 0, len(bad), 1, 0))


def test_inline_weights_stay_in_the_file(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _model(rng)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    lazy = load_model(path, keep_weights_on_disk=True)
    on_disk = [t.name for t in lazy.graph.initializer if is_on_disk(t)]
    assert on_disk == ["W"], "only the tensor of at least 1024 bytes stays in the file"
    ref = external_ref(lazy.graph.initializer[0], "m")
    assert ref.origin == INLINE and ref.location == str(path.resolve())
    assert lazy.ByteSize() < 2000  # the weight alone is 18432 bytes
    assert data_files(lazy) == set() and model_files(path) == [path]
    expected = _arrays(model)
    got = _arrays(lazy)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def test_fold_file_of_an_inline_model_is_the_fold_of_the_whole_model(tmp_path: Path,
                                                                      rng: np.random.Generator) -> None:
    model = _model(rng)
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, path)
    before = path.read_bytes()
    result = foldnorm.fold_file(path, out)
    assert result.verify is not None and result.verify.ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"], "one file, as the input"
    assert path.read_bytes() == before
    onnx.checker.check_model(str(out), full_check=True)
    written = onnx.load(out)
    reference = fold_model(model).model  # the whole model in memory, folded by the same engine
    assert op_count(written, "BatchNormalization") == 0
    assert [t.name for t in written.graph.initializer] == [t.name for t in reference.graph.initializer]
    for mine, theirs in zip(written.graph.initializer, reference.graph.initializer):
        assert mine.data_type == theirs.data_type and list(mine.dims) == list(theirs.dims)
        assert tensor_array(mine).tobytes() == tensor_array(theirs).tobytes(), mine.name


def test_a_store_keeps_new_weights_out_of_the_message(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_model(rng), path)
    with TensorStore() as store:
        folded = fold_model(load_model(path, keep_weights_on_disk=True), in_place=True, store=store).model
        weight = next(t for t in folded.graph.initializer if list(t.dims) == [32, 16, 3, 3])
        assert external_ref(weight, "m").origin == STORED and folded.ByteSize() < 2000
        value = tensor_array(weight)
        assert not value.flags.writeable
        saved = save_model(folded, tmp_path / "f.onnx")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx", "m.onnx"]
        assert np.array_equal(tensor_array(next(t for t in onnx.load(saved).graph.initializer
                                                if t.name == weight.name)), value)
        assert foldnorm.compare_models(path, saved).ok
    with pytest.raises(LookupError, match="closed"):
        tensor_array(weight)


def test_external_output_takes_stored_and_inline_weights(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_model(rng), path)
    with TensorStore() as store:
        folded = fold_model(load_model(path, keep_weights_on_disk=True), in_place=True, store=store).model
        saved = save_model(folded, tmp_path / "f.onnx", external_data=True)
    assert (tmp_path / "f.onnx.data").is_file()
    assert foldnorm.compare_models(path, saved).ok


def test_layouts_the_skeleton_reader_leaves_to_protobuf(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _model(rng)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert read_skeleton(path, 1024) is not None
    link = tmp_path / "link.onnx"
    link.symlink_to(path)
    assert read_skeleton(link, 1024) is None and foldnorm.fold_file(link, tmp_path / "f.onnx").verify.ok
    # A graph in two pieces (protobuf merges them): the bias goes to a second graph field.
    first = onnx.ModelProto()
    first.CopyFrom(model)
    bias = first.graph.initializer.pop()
    extra = onnx.GraphProto()
    extra.initializer.append(bias)
    split = tmp_path / "split.onnx"
    split.write_bytes(first.SerializeToString() + wire.len_header(7, extra.ByteSize()) + extra.SerializeToString())
    assert read_skeleton(split, 1024) is None
    assert foldnorm.fold_file(split, tmp_path / "g.onnx").verify.ok
    # Raw data longer than the dims say: the whole-file parse and its checks report it.
    model.graph.initializer[0].raw_data += bytes(4)
    bad = tmp_path / "bad.onnx"
    onnx.save(model, bad)
    assert read_skeleton(bad, 1024) is None
    with pytest.raises(InvalidModelError, match="holds 18436 bytes"):
        load_model(bad, keep_weights_on_disk=True)


def test_write_inline_round_trips_every_tensor(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _model(rng)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    lazy = load_model(path, keep_weights_on_disk=True)
    write_inline(lazy, tmp_path / "copy.onnx")
    copy = onnx.load(tmp_path / "copy.onnx")
    assert not any(is_on_disk(t) for t in copy.graph.initializer)
    expected = _arrays(model)
    assert all(np.array_equal(tensor_array(t), expected[t.name]) for t in copy.graph.initializer)
    assert copy.graph.node == model.graph.node


def test_inspect_reads_no_weight_of_a_producer(tmp_path: Path, rng: np.random.Generator,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(rng)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    read: list[str] = []
    real = graph_module.tensor_array
    monkeypatch.setattr(graph_module, "tensor_array", lambda t: read.append(t.name) or real(t))
    report = inspect_model(path)
    assert [r.outcome for r in report.records] == ["folded"]
    assert "W" not in read and {"B", "bn_scale", "bn_bias", "bn_mean", "bn_var"} <= set(read)
    read.clear()
    assert [r.outcome for r in fold_model(path).report.records] == ["folded"]
    assert "W" in read


def test_inspect_cannot_see_a_refusal_that_depends_on_weight_values(tmp_path: Path,
                                                                    rng: np.random.Generator) -> None:
    """fp16 weights that overflow once scaled: fold refuses, inspect (which reads no weight) says folded."""
    model = conv_bn(rng, cin=16, cout=32, dtype="float16")
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[0, 0, 0, 0] = 60000.0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "W"))
    bn_scale = next(t for t in model.graph.initializer if t.name == "bn_scale")
    bn_scale.CopyFrom(numpy_helper.from_array(np.full(32, 8.0, np.float16), "bn_scale"))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert [r.outcome for r in fold_model(path).report.records] == ["skipped"]
    assert [r.outcome for r in inspect_model(path).records] == ["folded"]
