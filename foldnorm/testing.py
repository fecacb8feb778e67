"""Assertions for users' test suites: `assert_equivalent(reference, candidate)` in a pytest test."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from foldnorm.compare import VerifyResult, compare_models
from foldnorm.inputs import Shape
from foldnorm.modelio import ModelLike


def assert_equivalent(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    batch_sizes: Sequence[int] = (1, 2),
    seed: int = 0,
    samples: int = 1,
    shapes: Mapping[str, Shape] | None = None,
    inputs: str | os.PathLike | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    structure: bool = True,
) -> VerifyResult:
    """Raise `AssertionError` with a per-output summary unless `candidate` computes what `reference` does.

    Takes paths or `onnx.ModelProto`s and the options of `foldnorm.compare_models`; returns the result when
    the models are equivalent. Bad inputs (a missing file, different interfaces) raise `FoldnormError`.
    """
    result = compare_models(reference, candidate, batch_sizes=batch_sizes, seed=seed, samples=samples,
                            shapes=shapes, inputs=inputs, rtol=rtol, atol=atol, structure=structure)
    if not result.ok:
        raise AssertionError(f"{result.candidate} vs {result.reference}: {result.details()}")
    return result
