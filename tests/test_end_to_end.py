"""Export a built-in PyTorch model, fold it, and check ONNX Runtime still equals `module.eval()(x)`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from foldnorm.models import get_spec  # noqa: E402
from support.builders import assert_close, op_count, run_ort  # noqa: E402

from foldnorm import export_onnx, fold_model, load_model  # noqa: E402

pytestmark = pytest.mark.slow  # exports a built-in PyTorch model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    module = get_spec("resnet-bn").build(seed=3)
    path = tmp_path_factory.mktemp("e2e") / "resnet.onnx"
    result = export_onnx(module, [torch.randn(1, 3, 64, 64)], path)
    assert result.ok
    assert result.batchnorm == 9
    return module, path


def test_export_fold_matches_torch(exported: tuple[object, Path]) -> None:
    module, path = exported
    assert isinstance(module, torch.nn.Module)
    unfolded = load_model(path)
    result = fold_model(unfolded)
    assert op_count(unfolded, "BatchNormalization") == 9
    assert op_count(result.model, "BatchNormalization") == 0
    assert result.report.protected_kept == 1
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = module(x).numpy()
    got = run_ort(result.model, {"input": x.numpy()})
    assert_close([expected], got, rtol=1e-4)


def test_bn_statistics_are_not_defaults(exported: tuple[object, Path]) -> None:
    module, _ = exported
    assert isinstance(module, torch.nn.Module)
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert not np.allclose(bn.running_var.numpy(), 1.0)
        assert not np.allclose(bn.weight.detach().numpy(), 1.0)
