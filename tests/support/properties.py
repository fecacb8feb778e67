"""The property tests' shared profile and check: fold a random graph, then compare it with ONNX Runtime.

`make test` runs the quick deterministic profile; `FOLDNORM_FUZZ=1` (what `make fuzz` sets) selects the long one
(`FOLDNORM_FUZZ_EXAMPLES` per test).
"""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
from hypothesis import HealthCheck, event, settings

from foldnorm import FoldResult, fold_model
from support.builders import assert_close, run_ort

FUZZ = os.environ.get("FOLDNORM_FUZZ") == "1"
PROFILE = settings(
    max_examples=int(os.environ.get("FOLDNORM_FUZZ_EXAMPLES", "500")) if FUZZ else 7,
    deadline=None,
    derandomize=not FUZZ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
TYPES = {"float": (np.float32, 2e-5), "float16": (np.float16, 2e-2)}


def check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float) -> FoldResult:
    """Fold, then: checker passes, outputs match, every refusal has a reason and changes nothing."""
    expected = run_ort(model, feeds)
    result = fold_model(model)
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    assert_close(expected, run_ort(out, feeds), rtol=rtol)
    for record in result.report.records:
        assert record.reason, record
        reason = "" if record.outcome == "folded" else ": " + re.sub(r"\[[^]]*\]|\d+", "#", record.reason)[:70]
        event(f"{record.kind} {record.outcome}{reason}")
    if not any(r.outcome == "folded" for r in result.report.records):
        assert out.graph.SerializeToString() == model.graph.SerializeToString()
    return result


def outcomes(result: FoldResult) -> list[str]:
    """The outcome of every record, in report order."""
    return [r.outcome for r in result.report.records]
