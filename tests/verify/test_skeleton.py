"""A model whose weights are kept on disk runs on ONNX Runtime as a skeleton file plus shared weights: the same
outputs as the whole model, with no weight written and, where aligned, none copied."""

from __future__ import annotations

import mmap
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from support.builders import conv_bn, parse, run_ort

import foldnorm
from foldnorm.bench.backends.ort_cpu import OrtSession
from foldnorm.errors import FoldnormError
from foldnorm.onnxgraph.external import is_on_disk, tensor_array
from foldnorm.onnxgraph.modelio import load_model, save_model
from foldnorm.onnxgraph.store import TensorStore
from foldnorm.verify.ortrun import outputs
from foldnorm.verify.skeleton import ALIGN, write_skeleton


def big_model(rng: np.random.Generator, ir_version: int = 8) -> onnx.ModelProto:
    """Conv (16 -> 16 channels: a 9 KB weight) -> BN -> Mul by k (16x8x8, 4 KB) -> Add a Constant node's j (4 KB)."""
    k, j = rng.uniform(0.5, 1.5, (2, 16, 8, 8)).astype(np.float32)
    model = conv_bn(rng, cin=16, cout=16, bn_out="b", tail=["m = Mul (b, k)", "y = Add (m, j)"],
                    inits={"k": k}, ir_version=ir_version, check=False)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["j"], value=numpy_helper.from_array(j)))
    if ir_version < 4:  # every initializer is a graph input too
        model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                 for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    return [{"x": rng.normal(0, 1, (b, 16, 8, 8)).astype(np.float32)} for b in (1, 3)]


def mapped(array: np.ndarray) -> bool:
    """Whether `array` is a view of a memory-mapped file."""
    base = array
    while isinstance(base.base, np.ndarray):
        base = base.base
    return isinstance(base.base, memoryview) and isinstance(base.base.obj, mmap.mmap)


def check_runs_as_the_whole_model(model: onnx.ModelProto, whole: onnx.ModelProto, tmp_path: Path,
                                  rng: np.random.Generator) -> None:
    before = model.SerializeToString()
    for feed in feeds(rng):
        (got,) = outputs(model, model, tmp_path, "reference", "m", [feed])
        assert all(np.array_equal(g, e) for g, e in zip(got, run_ort(whole, feed), strict=True))
    assert model.SerializeToString() == before  # the caller's model is as it was


def test_inline_weights_are_read_once_into_aligned_arrays(tmp_path: Path, rng: np.random.Generator) -> None:
    whole = big_model(rng)
    onnx.save(whole, tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx", keep_weights_on_disk=True)
    weight = next(t for t in model.graph.initializer if t.name == "W")
    assert is_on_disk(weight)
    skeleton = write_skeleton(model, tmp_path / "s.onnx")
    assert skeleton is not None and sorted(skeleton.initializers) == ["W", "k"]
    shared = skeleton.initializers["W"]
    assert shared.ctypes.data % ALIGN == 0 and np.array_equal(shared, tensor_array(weight))
    assert skeleton.path.stat().st_size < 4096 + 1024  # the Constant's tensor, no initializer's bytes
    check_runs_as_the_whole_model(model, whole, tmp_path, rng)


def test_aligned_external_data_is_shared_without_a_copy(tmp_path: Path, rng: np.random.Generator) -> None:
    whole = big_model(rng)
    # a small Constant: foldnorm's loader refuses a Constant kept in a data file (absolute location in the checker)
    whole.graph.node[0].attribute[0].t.CopyFrom(numpy_helper.from_array(np.ones(8, np.float32)))
    save_model(whole, tmp_path / "m.onnx", external_data=True)  # offsets aligned to 4096
    model = load_model(tmp_path / "m.onnx", keep_weights_on_disk=True)
    skeleton = write_skeleton(model, tmp_path / "s.onnx")
    assert skeleton is not None
    assert all(mapped(a) and not a.flags.writeable for a in skeleton.initializers.values())
    check_runs_as_the_whole_model(model, whole, tmp_path, rng)


def test_a_tensor_kept_on_disk_outside_the_initializers_is_read_into_the_skeleton(tmp_path: Path,
                                                                                  rng: np.random.Generator) -> None:
    whole = big_model(rng)
    onnx.save(whole, tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx", keep_weights_on_disk=True)
    with TensorStore() as store:
        constant = model.graph.node[0].attribute[0].t
        store.put(constant, numpy_helper.to_array(constant))
        assert is_on_disk(constant)
        skeleton = write_skeleton(model, tmp_path / "s.onnx")
        assert skeleton is not None and "j" not in skeleton.initializers
        written = onnx.load(skeleton.path, load_external_data=False).graph.node[0].attribute[0].t
        assert written.HasField("raw_data") and len(written.raw_data) == 16 * 8 * 8 * 4
        check_runs_as_the_whole_model(model, whole, tmp_path, rng)


def test_unaligned_external_data_and_legacy_input_listed_initializers(tmp_path: Path,
                                                                      rng: np.random.Generator) -> None:
    whole = big_model(rng, ir_version=3)
    onnx.save(onnx.ModelProto.FromString(whole.SerializeToString()), tmp_path / "m.onnx", save_as_external_data=True,
              location="m.data", size_threshold=0)
    model = load_model(tmp_path / "m.onnx", keep_weights_on_disk=True)
    check_runs_as_the_whole_model(model, whole, tmp_path, rng)


def test_a_folds_new_weights_are_shared_from_its_store(tmp_path: Path, rng: np.random.Generator) -> None:
    whole = big_model(rng)
    onnx.save(whole, tmp_path / "m.onnx")
    with TensorStore() as store:
        folded = foldnorm.fold_model(load_model(tmp_path / "m.onnx", keep_weights_on_disk=True), in_place=True,
                                     store=store).model
        weight = next(t for t in folded.graph.initializer if t.name == folded.graph.node[1].input[1])
        skeleton = write_skeleton(folded, tmp_path / "s.onnx")
        assert skeleton is not None
        assert np.shares_memory(skeleton.initializers[weight.name], tensor_array(weight))
        check_runs_as_the_whole_model(folded, foldnorm.fold_model(whole).model, tmp_path, rng)


def test_the_placeholder_is_never_read_silently(tmp_path: Path, rng: np.random.Generator) -> None:
    onnx.save(big_model(rng), tmp_path / "m.onnx")
    skeleton = write_skeleton(load_model(tmp_path / "m.onnx", keep_weights_on_disk=True), tmp_path / "s.onnx")
    assert skeleton is not None
    with pytest.raises(FoldnormError, match="ONNX Runtime cannot load it"):
        OrtSession(str(skeleton.path))  # without the shared weights: an error, never zeros


def test_a_type_onnx_runtime_takes_no_array_of_is_read_into_the_skeleton(tmp_path: Path,
                                                                         rng: np.random.Generator) -> None:
    kb = rng.normal(0, 1, (16, 8, 8)).astype(ml_dtypes.bfloat16)
    whole = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 16, 8, 8] x) => (float[N, 16, 8, 8] y) {
        k = Cast <to = 1> (kb)
        y = Add (x, k)
    }
    """, {"kb": kb})
    onnx.save(whole, tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx", keep_weights_on_disk=True)
    assert is_on_disk(model.graph.initializer[0])
    skeleton = write_skeleton(model, tmp_path / "s.onnx")
    assert skeleton is not None and not skeleton.initializers
    check_runs_as_the_whole_model(model, whole, tmp_path, rng)
