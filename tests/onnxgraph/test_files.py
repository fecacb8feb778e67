"""Atomic writes and weights in external data files: what the model I/O builds on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from foldnorm.onnxgraph.atomicfile import atomic_path
from foldnorm.onnxgraph.external import (
    ALIGN,
    SIZE_THRESHOLD,
    has_weights_on_disk,
    in_memory_bytes,
    is_on_disk,
    tensor_array,
    tensor_digest,
    write_with_external_data,
)


def test_atomic_path_replaces_the_target_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
    mask = os.umask(0)
    os.umask(mask)
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def _weights_model(rng: np.random.Generator) -> onnx.ModelProto:
    big = rng.normal(size=(300,)).astype(np.float32)  # 1200 bytes: over SIZE_THRESHOLD
    bigger = rng.normal(size=(40, 40)).astype(np.float32)
    small = rng.normal(size=(3,)).astype(np.float32)
    assert big.nbytes >= SIZE_THRESHOLD > small.nbytes
    graph = helper.make_graph([], "g", [], [], [numpy_helper.from_array(a, n) for n, a in
                                                (("big", big), ("small", small), ("bigger", bigger))])
    return helper.make_model(graph)


@pytest.mark.parametrize("keep_in_memory", [True, False])
def test_large_tensors_go_to_an_aligned_data_file(tmp_path: Path, rng: np.random.Generator,
                                                  keep_in_memory: bool) -> None:
    model = _weights_model(rng)
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    digests = {t.name: tensor_digest(t) for t in model.graph.initializer}
    moved = write_with_external_data(model, tmp_path / "m.onnx", "m.onnx.data", keep_in_memory=keep_in_memory)
    assert moved == 2
    written = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    offsets = {t.name: int(next(e.value for e in t.external_data if e.key == "offset"))
               for t in written.graph.initializer if t.external_data}
    assert set(offsets) == {"big", "bigger"} and all(o % ALIGN == 0 for o in offsets.values())
    assert all(not os.path.isabs(e.value) for t in written.graph.initializer for e in t.external_data
               if e.key == "location"), "no absolute path reaches the file"
    reloaded = onnx.load(str(tmp_path / "m.onnx"))
    for tensor in reloaded.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), arrays[tensor.name])
    assert has_weights_on_disk(model) is not keep_in_memory
    for tensor in model.graph.initializer:  # the caller's model: in memory again, or pointing at the file
        assert is_on_disk(tensor) == (not keep_in_memory and tensor.name != "small")
        np.testing.assert_array_equal(tensor_array(tensor), arrays[tensor.name])
        assert tensor_digest(tensor) == digests[tensor.name], "the same wherever the bytes are"
    assert in_memory_bytes(model) == (sum(a.nbytes for a in arrays.values()) if keep_in_memory else 12)


def test_no_data_file_when_every_tensor_is_small(tmp_path: Path) -> None:
    graph = helper.make_graph([], "g", [], [], [numpy_helper.from_array(np.ones(3, np.float32), "w")])
    assert write_with_external_data(helper.make_model(graph), tmp_path / "m.onnx", "m.onnx.data") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
