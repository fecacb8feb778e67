"""Assertions shared by the fold-rule tests: a checked fold, a positive fold, an honest refusal, a rule turned off.

Every folded model of these helpers passes `onnx.checker.check_model(full_check=True)`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from foldnorm import FoldOptions, FoldResult, fold_model
from support.builders import assert_close, run_ort


def count_ops(graph: onnx.GraphProto, op: str) -> int:
    """Nodes of type `op` in `graph` and all its subgraphs."""
    total = 0
    for node in graph.node:
        total += node.op_type == op
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                total += count_ops(sub, op)
    return total


def checked_fold(model: onnx.ModelProto, options: FoldOptions | None = None) -> FoldResult:
    """`fold_model`, then the full ONNX checker on the folded model (the tests' post-condition of every fold)."""
    result = fold_model(model, options=options)
    onnx.checker.check_model(result.model, full_check=True)
    return result


def assert_folds(model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, rtol: float = 1e-5,
                 kind: str = "batchnorm", gone: str = "BatchNormalization", folded: int = 1,
                 options: FoldOptions | None = None) -> FoldResult:
    """Fold `model`: `gone` nodes disappear, `folded` records say so, checker passes, outputs match.

    `gone`: BatchNormalization (all must go), another op (`folded` of them go), or "" (not counted).
    """
    expected = run_ort(model, feeds)
    before = model.SerializeToString()
    result = checked_fold(model, options)
    assert model.SerializeToString() == before, "the input model must not be modified"
    out = result.model
    if gone == "BatchNormalization":
        assert count_ops(out.graph, gone) == 0
    elif gone:
        assert count_ops(out.graph, gone) == count_ops(model.graph, gone) - folded
    records = [r for r in result.report.records if r.kind == kind and r.outcome == "folded"]
    assert len(records) == folded, result.report.to_json()
    assert all(r.target and r.reason for r in records)
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    assert [i.name for i in out.graph.input] == [i.name for i in model.graph.input]
    assert_close(expected, run_ort(out, feeds), rtol=rtol)
    return result


def assert_refused(model: onnx.ModelProto, reason: str, *, outcome: str = "skipped",
                   options: FoldOptions | None = None) -> FoldResult:
    """Fold `model`: nothing changes, and a record with `outcome` explains why (contains `reason`)."""
    result = checked_fold(model, options)
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()
    hits = [r for r in result.report.records if r.outcome == outcome and reason in r.reason]
    assert hits, result.report.to_json()
    assert not any(r.outcome == "folded" for r in result.report.records)
    return result


def assert_not_reported(model: onnx.ModelProto, options: FoldOptions | None = None) -> FoldResult:
    """Fold `model`: no record at all (nothing there is a normalization or a candidate) and nothing changes."""
    result = checked_fold(model, options)
    assert result.report.records == [], result.report.to_json()
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()
    return result


def assert_turned_off(model: onnx.ModelProto, rule: str, *, kind: str = "batchnorm",
                      options: FoldOptions | None = None) -> FoldResult:
    """`model` folds with the defaults (and `options`); with `rule` skipped, a `kind` record names the rule instead.

    Nothing else may fold in `model`: with the rule off the graph must stay as it is.
    """
    base = options or FoldOptions()
    assert any(r.kind == kind and r.outcome == "folded" for r in checked_fold(model, base).report.records)
    off = FoldOptions(standalone_bn=base.standalone_bn, skip=(rule,))
    return assert_refused(model, f"rule {rule} is turned off (--skip {rule})", options=off)


def saved_pair(model: onnx.ModelProto, directory: Path) -> tuple[Path, Path]:
    """`model` saved as `ref.onnx` and its fold as `cand.onnx` in `directory`: a pair for verify's tests."""
    from foldnorm import save_model

    onnx.save(model, directory / "ref.onnx")
    save_model(fold_model(model).model, directory / "cand.onnx")
    return directory / "ref.onnx", directory / "cand.onnx"
