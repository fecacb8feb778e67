"""Exports that say why: torch's root cause in one line, a batch torch made static, checkpoints, float16's own
error, tolerances."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.zoo_user_model import pinned_batch_net
from torch import nn
from torch.fx.experimental.symbolic_shapes import ConstraintViolationError

from foldnorm import export_onnx
from foldnorm.export.diagnose import root_cause, specialises_batch
from foldnorm.export.exporter import quiet_torch


def _chained() -> Exception:
    """torch's exception chain for a batch it cannot keep dynamic (outermost first, as torch raises it)."""
    try:
        try:
            raise ConstraintViolationError("Constraints violated (batch)! For more information, run with TORCH_LOGS")
        except ConstraintViolationError as inner:
            raise RuntimeError("Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of "
                               "exporting the model to ONNX. Next steps:") from inner
    except RuntimeError as outer:
        return outer


def test_root_cause_names_the_batch_specialisation() -> None:
    exc = _chained()
    assert specialises_batch(exc)
    assert root_cause(exc) == "the module specialises the batch dimension (torch: ConstraintViolationError)"


def test_root_cause_is_the_innermost_exception() -> None:
    try:
        try:
            raise TypeError("unsupported operand for aten::foo")
        except TypeError as inner:
            raise RuntimeError("Failed to export the model with torch.export. Next steps:\n- do this") from inner
    except RuntimeError as outer:
        assert not specialises_batch(outer)
        assert root_cause(outer) == "unsupported operand for aten::foo (torch: TypeError)"


def test_a_batch_torch_made_static_is_said(tmp_path: Path) -> None:
    result = export_onnx(pinned_batch_net(), [torch.randn(2, 3, 8, 8)], tmp_path / "m.onnx")
    assert result.ok, result.summary()  # checked at the batch the file takes, not at batch sizes []
    assert not result.dynamic_batch and result.check_batch_sizes == [2]
    (note,) = result.notes
    assert note.startswith("torch made the batch static (2): the module specialises the batch dimension")


def test_a_demanded_dynamic_batch_fails_with_the_reason(tmp_path: Path) -> None:
    args = ["export", "support.zoo_user_model:pinned_batch_net", "-o", str(tmp_path / "m.onnx"), "--input-shape",
            "2x3x8x8"]
    quiet = CliRunner().invoke(cli, args)
    assert quiet.exit_code == 0 and "note: torch made the batch static (2)" in quiet.stderr
    demanded = CliRunner().invoke(cli, [*args, "--dynamic-batch"])
    assert demanded.exit_code == 1
    assert "torch made the batch of PinnedBatchNet static (2): the module specialises the batch" in demanded.stderr
    both = CliRunner().invoke(cli, [*args, "--dynamic-batch", "--static"])
    assert both.exit_code == 2


@pytest.mark.parametrize("name", ["model.pt", "weights.pth", "last.ckpt"])
def test_a_checkpoint_is_not_a_module(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"\x80\x02weights")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / name), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert "is a checkpoint (weights), not a module" in result.stderr and "package.module:attr" in result.stderr


def _conv_bn() -> nn.Module:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval()
    with torch.no_grad():
        module[1].running_mean.normal_(0, 0.5)
        module[1].running_var.uniform_(0.5, 2.0)
    return module


def test_export_tolerances(tmp_path: Path) -> None:
    x = [torch.randn(1, 3, 12, 12)]
    assert export_onnx(_conv_bn(), x, tmp_path / "a.onnx", exporter="legacy").ok
    strict = export_onnx(_conv_bn(), x, tmp_path / "b.onnx", exporter="legacy", rtol=0.0, atol=0.0)
    assert not strict.ok and strict.max_rel > 0
    result = CliRunner().invoke(cli, ["export", "mlp-bn1d", "-o", str(tmp_path / "c.onnx"), "--rtol", "0.5",
                                      "--format", "json", "--exporter", "legacy"])
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"]


def test_float16_error_that_is_float16s_own_says_so(tmp_path: Path) -> None:
    result = export_onnx(_conv_bn(), [torch.randn(1, 3, 12, 12)], tmp_path / "m.onnx", dtype="float16",
                         exporter="legacy", rtol=1e-6, atol=0.0)
    assert not result.ok
    assert result.check_note is not None and result.check_note.startswith("float16's own error, not the export")
    assert "float16's own error" in result.summary()


def test_torch_logging_is_silenced_unless_verbose() -> None:
    guards = logging.getLogger("torch._guards")
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.WARNING)
        with quiet_torch():
            assert not guards.isEnabledFor(logging.CRITICAL)
        root.setLevel(logging.INFO)
        with quiet_torch():
            assert guards.isEnabledFor(logging.ERROR)
    finally:
        root.setLevel(level)
