from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from support.builders import conv_bn


@pytest.fixture
def good(tmp_path: Path, rng: np.random.Generator) -> Path:
    """A valid Conv -> BN model file, its weights inside."""
    path = tmp_path / "good.onnx"
    onnx.save(conv_bn(rng, cin=3), path)
    return path
