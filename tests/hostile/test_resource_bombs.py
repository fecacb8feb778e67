"""Item 3: a small model cannot make the constant evaluator allocate without bound."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from support.cli import run
from support.hostile import bias_bomb

import foldnorm
from foldnorm.onnxgraph.constants import ELEMENT_FLOOR, ConstantResolver, ElementBudget
from foldnorm.onnxgraph.graph import GraphIndex


@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand"])
def test_hidden_bomb_is_not_a_constant(op: str, tmp_path: Path, rng: np.random.Generator) -> None:
    """10^12 elements (4 TB): the BN is skipped with the evaluator's reason; nothing is allocated."""
    path = tmp_path / "bomb.onnx"
    onnx.save(bias_bomb(rng, 10**12, op), path)
    assert path.stat().st_size < 2000
    result = run(["inspect", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "too large to evaluate" in result.stdout and "1e+12 elements" in result.stdout
    report = foldnorm.fold_model(path).report
    assert [r.outcome for r in report.records] == ["skipped"]


def test_bomb_of_3e8_elements_stays_small() -> None:
    """A 3e8-element Expand bias (1.2 GB as float32) is refused before numpy allocates: peak RSS stays low."""
    # VmHWM starts afresh at exec; ru_maxrss would carry over the peak of the (large) pytest parent at the fork.
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
import numpy as np
from support.hostile import bias_bomb
import foldnorm
report = foldnorm.fold_model(bias_bomb(np.random.default_rng(0), 3 * 10**8, "Expand")).report
assert report.records[0].outcome == "skipped", report.records
print(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")).split()[1])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_mb = int(out.stdout.strip()) / 1024
    assert peak_mb < 600, f"peak RSS {peak_mb:.0f} MB"


def test_budget_scales_with_the_largest_tensor(rng: np.random.Generator) -> None:
    small = bias_bomb(rng, 10**6)
    assert ElementBudget.for_graph(small.graph).per_value == ELEMENT_FLOOR
    big = onnx.helper.make_graph([], "g", [], [], [onnx.numpy_helper.from_array(np.zeros(0, np.float32), "e")])
    del big.initializer[0].dims[:]
    big.initializer[0].dims.extend([40_000_000, 2])
    budget = ElementBudget.for_graph(big)
    assert budget.per_value == 160_000_000 and budget.total == 4 * 160_000_000


def test_values_under_the_budget_are_computed_and_the_total_is_bounded(rng: np.random.Generator) -> None:
    model = bias_bomb(rng, 6000)
    resolver = ConstantResolver(GraphIndex(model.graph))
    value = resolver.value("b")
    assert value is not None and value.shape == (6000,) and resolver.reason("b") is None
    resolver.budget.spent = resolver.budget.total - 10
    resolver.forget("b")
    assert resolver.value("b") is None
    assert "budget" in (resolver.reason("b") or "")


def test_invalid_dims_are_never_written(tmp_path: Path, rng: np.random.Generator) -> None:
    """An initializer declaring [2^31, 2^31] over 16 bytes is an invalid model, not an output."""
    model = bias_bomb(rng, 6000)
    model.graph.initializer.append(onnx.TensorProto(name="huge", data_type=onnx.TensorProto.FLOAT,
                                                    dims=[2**31, 2**31], raw_data=bytes(16)))
    path, out = tmp_path / "huge.onnx", tmp_path / "out.onnx"
    onnx.save(model, path)
    result = run(["fold", str(path), "-o", str(out), "--no-verify"])
    assert result.exit_code == 1 and "'huge' holds 16 bytes" in result.stderr, result.output
    assert not out.exists()
