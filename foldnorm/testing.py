"""Assertions for users' test suites: `assert_equivalent(reference, candidate)` in a pytest test."""

from __future__ import annotations

from typing import Any

from foldnorm.onnxgraph.modelio import ModelLike
from foldnorm.verify.compare import VerifyResult, compare_models


def assert_equivalent(reference: ModelLike, candidate: ModelLike, **options: Any) -> VerifyResult:
    """Raise `AssertionError` with a per-output summary unless `candidate` computes what `reference` does.

    Takes paths or `onnx.ModelProto`s and the keyword options of `foldnorm.compare_models` (`batch_sizes`,
    `seed`, `samples`, `shapes`, `inputs`, `rtol`, `atol`, `structure`); returns the result when the models
    are equivalent. Bad inputs (a missing file, different interfaces) raise `FoldnormError`.
    """
    result = compare_models(reference, candidate, **options)
    if not result.ok:
        raise AssertionError(f"{result.candidate} vs {result.reference}: {result.details()}")
    return result
