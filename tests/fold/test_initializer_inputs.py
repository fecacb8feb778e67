"""Initializers also listed as graph inputs: constants below IR version 4 (as ONNX Runtime reads them), refused
with a hint from IR 4 on unless `inputs_as_constants` (issue 13, items 8 and 9)."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper
from support.builders import listed_model, x_feed
from support.fold_helpers import assert_close, assert_refused, checked_fold, run_ort

from foldnorm import FoldOptions


def test_below_ir_4_listed_initializers_are_constants(rng: np.random.Generator) -> None:
    model = listed_model(rng, 3)
    feeds = x_feed(rng)
    result = checked_fold(model)
    (record,) = result.report.records
    assert record.outcome == "folded", record
    assert result.report.notes == ["5 initializers also listed as graph inputs were read as constants, below IR "
                                   "version 4 (this model: IR 3), as ONNX Runtime reads them"]
    graph = result.model.graph
    assert [n.op_type for n in graph.node] == ["Constant", "Conv"], "the new bias is a Constant node, not an input"
    assert [i.name for i in graph.input] == ["W", "x"], "the weight, folded in place, keeps its place in the list"
    folded_w = numpy_helper.to_array(next(t for t in graph.initializer if t.name == "W"))
    assert not np.array_equal(folded_w, numpy_helper.to_array(model.graph.initializer[0]))
    assert_close(run_ort(model, feeds), run_ort(result.model, feeds))


def test_constant_of_shape_statistics_of_listed_shapes_fold_below_ir_4(rng: np.random.Generator) -> None:
    # light_resnet50: BN parameters filled by ConstantOfShape from listed shapes were "kept, computed from the input".
    model = listed_model(rng, 3, computed=True)
    (record,) = checked_fold(model).report.records
    assert record.outcome == "folded", record


def test_from_ir_4_listed_initializers_are_inputs_and_the_reason_names_the_option(rng: np.random.Generator) -> None:
    model = listed_model(rng, 4, computed=True)
    result = assert_refused(model, "its scale 'bn_scale' is an initializer also listed as a graph input (which a "
                                   "caller may override; --inputs-as-constants reads such inputs as constants)")
    assert result.report.notes == []
    inits = {t.name for t in model.graph.initializer} - {"n"}
    kept = [vi for vi in model.graph.input if vi.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(kept)  # only the shape of the statistics stays listed
    assert_refused(model, "its mean 'bn_mean' is computed at run time from 'n' (initializers also listed as graph "
                          "inputs, which a caller may override; --inputs-as-constants reads such inputs as constants)")


def test_inputs_as_constants_folds_them_and_lists_them_no_more(rng: np.random.Generator) -> None:
    model = listed_model(rng, 8, computed=True)
    feeds = x_feed(rng)
    result = checked_fold(model, FoldOptions(inputs_as_constants=True))
    (record,) = result.report.records
    assert record.outcome == "folded", record
    assert [i.name for i in result.model.graph.input] == ["x"]
    assert result.report.notes == ["4 initializers also listed as graph inputs were read as constants, as asked "
                                   "(inputs_as_constants); the folded model no longer lists them as inputs"]
    assert_close(run_ort(model, feeds), run_ort(result.model, feeds))
