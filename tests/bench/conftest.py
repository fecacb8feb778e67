from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from support.bench_models import conv_bn_onnx


@pytest.fixture
def model_path(tmp_path: Path, rng: np.random.Generator) -> str:
    """A Conv + BN model file with random BN statistics."""
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_onnx(rng), path)
    return str(path)
