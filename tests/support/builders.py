"""Small ONNX models for tests, written as ONNX text, with randomized BatchNorm parameters."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper


def parse(text: str, initializers: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Parse ONNX text and attach initializers; the result passes the full checker."""
    model = onnx.parser.parse_model(text)
    for name, array in (initializers or {}).items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model, full_check=True)
    return model


def bn_params(prefix: str, channels: int, rng: np.random.Generator, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """Random scale/bias/mean/var (never the defaults that hide folding bugs)."""
    return {
        f"{prefix}_scale": (rng.uniform(0.3, 2.0, channels) * rng.choice([-1, 1], channels)).astype(dtype),
        f"{prefix}_bias": rng.normal(0, 0.7, channels).astype(dtype),
        f"{prefix}_mean": rng.normal(0, 0.8, channels).astype(dtype),
        f"{prefix}_var": rng.uniform(0.2, 3.0, channels).astype(dtype),
    }


def bn_inputs(prefix: str) -> str:
    """The parameter input list of a BN node in ONNX text."""
    return f"{prefix}_scale, {prefix}_bias, {prefix}_mean, {prefix}_var"


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run with ONNX Runtime on CPU, all graph optimizations disabled (the library's own `OrtSession`)."""
    from foldnorm.bench.backends.ort_cpu import OrtSession

    with OrtSession(model.SerializeToString()) as session:
        return session.run(feeds)


def assert_close(expected: list[np.ndarray], got: list[np.ndarray], rtol: float = 1e-5) -> None:
    """Outputs agree relative to each output's scale, and nothing is NaN/Inf."""
    assert len(expected) == len(got)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        assert np.all(np.isfinite(g)), "NaN/Inf in output"
        scale = max(float(np.max(np.abs(e))), 1e-12)
        err = float(np.max(np.abs(e.astype(np.float64) - g.astype(np.float64))))
        assert err <= rtol * scale, f"max abs error {err:.3g} exceeds {rtol:g} x scale {scale:.3g}"


def op_count(model: onnx.ModelProto, op: str) -> int:
    """How many nodes of type `op` the main graph has."""
    return sum(1 for n in model.graph.node if n.op_type == op)
