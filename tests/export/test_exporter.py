"""export_onnx and `foldnorm export`: several inputs, dtypes, external data, train mode, cleanup, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from foldnorm.cli.main import cli
from foldnorm.models import get_spec
from support.builders import assert_close, op_count, run_ort
from support.zoo_user_model import TwoInputNet, make_two_input_net
from torch import nn

from foldnorm import export_onnx
from foldnorm.errors import ExportError, InputSpecError
from foldnorm.export.cleanup import clean_export
from foldnorm.export.exporter import quiet_torch
from foldnorm.onnxgraph.modelio import load_model

TESTS = Path(__file__).resolve().parents[1]


def _two_inputs(batch: int = 1) -> list[torch.Tensor]:
    return [torch.randn(batch, 3, 8, 8), torch.randn(batch, 5)]


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_two_inputs_two_outputs(tmp_path: Path, exporter: str) -> None:
    result = export_onnx(make_two_input_net(), _two_inputs(), tmp_path / "m.onnx", input_names=["image", "meta"],
                         exporter=exporter)  # type: ignore[arg-type]
    assert result.ok, result.summary()
    assert result.inputs == {"image": [1, 3, 8, 8], "meta": [1, 5]}
    assert result.outputs == ["output_0", "output_1"]
    assert [c.batch_size for c in result.checks] == [1, 2]
    model = onnx.load(result.path)
    assert [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}] == \
        ["image", "meta"]
    assert op_count(model, "BatchNormalization") == 2
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["foldnorm.exporter"] == exporter
    assert meta["foldnorm.opset"] == "18"
    assert meta["foldnorm.inputs"] == "image:1x3x8x8;meta:1x5"
    assert meta["foldnorm.module"].endswith("TwoInputNet")
    assert meta["foldnorm.torch_version"] == torch.__version__


def test_static_batch_checks_only_the_example_batch(tmp_path: Path) -> None:
    result = export_onnx(make_two_input_net(), _two_inputs(3), tmp_path / "m.onnx", dynamic_batch=False,
                           exporter="legacy")
    assert result.ok and result.check_batch_sizes == [3]
    dims = onnx.load(result.path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 3


def test_inputs_without_a_shared_batch_need_static(tmp_path: Path) -> None:
    with pytest.raises(InputSpecError, match="static"):
        export_onnx(make_two_input_net(), [torch.randn(1, 3, 8, 8), torch.randn(2, 5)], tmp_path / "m.onnx")


def test_train_mode_refused_unless_train_ok(tmp_path: Path) -> None:
    module = TwoInputNet().train()
    with pytest.raises(ExportError, match="train mode"):
        export_onnx(module, _two_inputs(), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    result = export_onnx(module, _two_inputs(), tmp_path / "m.onnx", train_ok=True, exporter="legacy")
    assert result.train_mode and result.ok  # BN exported with running statistics, compared with eval()
    assert module.training  # the caller's module is left in the mode it had
    assert op_count(onnx.load(result.path), "BatchNormalization") == 2


def test_float16_export_matches_torch(tmp_path: Path) -> None:
    module = make_two_input_net()
    result = export_onnx(module, _two_inputs(), tmp_path / "m.onnx", dtype="float16",
                         exporter="legacy")
    assert result.ok and result.dtype == "float16" and len(result.checks) == 2
    assert onnx.load(result.path).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert next(module.parameters()).dtype == torch.float32  # the caller's module is not converted


def test_bfloat16_export_is_written_but_not_checked(tmp_path: Path) -> None:
    result = export_onnx(make_two_input_net(), _two_inputs(), tmp_path / "m.onnx", dtype="bfloat16",
                         exporter="legacy")
    assert result.ok and not result.checks
    assert result.check_note is not None and "bfloat16" in result.check_note
    assert onnx.load(result.path).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16


def test_external_data(tmp_path: Path) -> None:
    spec = get_spec("conv3d-bn")
    result = export_onnx(spec.build(), spec.example_inputs(), tmp_path / "m.onnx", external_data=True,
                         exporter="legacy")
    assert result.ok and result.external_data
    assert (tmp_path / "m.onnx.data").stat().st_size > 0
    raw = onnx.load(result.path, load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in raw.graph.initializer)
    assert op_count(load_model(result.path), "BatchNormalization") == 2


def test_external_data_with_only_small_tensors(tmp_path: Path) -> None:
    result = export_onnx(make_two_input_net(), _two_inputs(), tmp_path / "m.onnx", external_data=True,
                         exporter="legacy")
    assert result.ok and op_count(load_model(result.path), "BatchNormalization") == 2


def _raw_dynamo(module: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    with quiet_torch():
        program = torch.onnx.export(module, (x,), dynamo=True, optimize=False, opset_version=18, verbose=False)
    assert program is not None
    return program.model_proto


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 6, 3, 1, 1, bias=False), nn.Conv3d(3, 6, 3, 1, 1, bias=False)])
def test_cleanup_drops_computed_zero_bias_and_folds_nothing(conv: nn.Module) -> None:
    bn = nn.BatchNorm2d(6) if not isinstance(conv, nn.Conv3d) else nn.BatchNorm3d(6)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
    module = nn.Sequential(conv, bn).eval()
    x = torch.randn((2, 3, 6, 6, 6) if isinstance(conv, nn.Conv3d) else (2, 3, 8, 8))
    model = _raw_dynamo(module, x)
    assert op_count(model, "Expand") >= 1  # Expand(CastLike(0), Shape(W)...): the computed zero bias
    stats = clean_export(model)
    onnx.checker.check_model(model, full_check=True)
    assert stats.zero_biases_dropped == 1 and stats.nodes_removed >= 3
    assert op_count(model, "Expand") == op_count(model, "Shape") == op_count(model, "CastLike") == 0
    assert op_count(model, "BatchNormalization") == 1
    producer = next(n for n in model.graph.node if n.op_type.startswith("Conv"))
    assert len(producer.input) == 2
    assert any(k.key == "namespace" for k in producer.metadata_props)  # node metadata kept
    got = run_ort(model, {model.graph.input[0].name: x.numpy()})
    with torch.no_grad():
        assert_close([module(x).numpy()], got, rtol=1e-5)


def test_cleanup_keeps_a_real_bias_and_live_nodes() -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    model = _raw_dynamo(module, torch.randn(1, 3, 8, 8))
    before = [n.op_type for n in model.graph.node]
    stats = clean_export(model)
    assert stats.zero_biases_dropped == 0 and [n.op_type for n in model.graph.node] == before
    assert len(model.graph.node[0].input) == 3


def test_cleanup_removes_dead_nodes() -> None:
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[1, 2] x) => (float[1, 2] y) {
            dead = Relu(x)
            dead2 = Neg(dead)
            y = Abs(x)
        }""")
    stats = clean_export(model)
    assert stats.nodes_removed == 2
    assert [n.op_type for n in model.graph.node] == ["Abs"]


# ---- CLI -------------------------------------------------------------------------------------------------

def test_cli_named_shapes_import_spec(tmp_path: Path) -> None:
    out = tmp_path / "two.onnx"
    res = CliRunner().invoke(cli, ["export", "support.zoo_user_model:make_two_input_net", "-o", str(out),
                                   "--input-shape", "image:1x3x8x8", "--input-shape", "meta:1x5",
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ok"] and data["inputs"] == {"image": [1, 3, 8, 8], "meta": [1, 5]}
    assert [c["batch_size"] for c in data["checks"]] == [1, 2]
    assert data["batchnorm"] == 2


def test_cli_text_prints_both_batch_sizes(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["export", "mlp-bn1d", "-o", str(tmp_path / "m.onnx"), "--exporter", "legacy",
                                   "--dtype", "float16"])
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"] and all(r[-1] == "yes" for r in rows)
    assert "float16" in res.stdout and "2 BatchNorm" in res.stdout


def test_cli_mismatch_exits_3(tmp_path: Path) -> None:
    out = tmp_path / "c.onnx"
    res = CliRunner().invoke(cli, ["export", "support.zoo_user_model:counting_net", "-o", str(out),
                                   "--input-shape", "1x3x8x8", "--exporter", "legacy"])
    assert res.exit_code == 3, res.output
    assert "does not match" in res.stderr and out.exists()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["support.zoo_user_model:train_mode_net", "--input-shape", "1x3x8x8"], 1, "train mode"),
    (["support.zoo_user_model:not_a_module", "--input-shape", "1x3x8x8"], 1, "neither an nn.Module"),
    (["support.zoo_user_model:missing", "--input-shape", "1x3x8x8"], 1, "has no attribute"),
    (["no_such_pkg_xyz:net", "--input-shape", "1x3x8x8"], 1, "cannot import"),
    (["no-such-model"], 1, "no built-in model"),
    (["support.zoo_user_model:counting_net"], 2, "--input-shape"),
    (["mlp-bn1d", "--input-shape", "a:1x32", "--input-shape", "1x32"], 2, "name every input"),
    (["mlp-bn1d", "--input-shape", "1xfoo"], 2, "1x3x224x224"),
    (["mlp-bn1d", "--shape", "1x5"], 1, "fails on example inputs of shape 1x5"),
    (["mlp-bn1d", "--dtype", "int8"], 2, "int8"),
])
def test_cli_bad_input(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    res = CliRunner().invoke(cli, ["export", *args[:1], "-o", str(tmp_path / "m.onnx"), *args[1:]])
    assert res.exit_code == code, res.output
    assert message in res.stderr
    assert "Traceback" not in res.output
    assert not (tmp_path / "m.onnx").exists()


def test_cli_train_ok_exports(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["export", "support.zoo_user_model:train_mode_net", "-o", str(tmp_path / "m.onnx"),
                                   "--input-shape", "1x3x8x8", "--train-ok", "--exporter", "legacy"])
    assert res.exit_code == 0, res.output
    assert "running statistics" in res.stderr


@pytest.mark.slow  # a fresh process imports torch and exports
def test_stderr_shows_only_progress_lines(tmp_path: Path) -> None:
    """A fresh process (torch's first-import warnings included): stderr holds our lines, nothing from torch."""
    proc = subprocess.run(
        [sys.executable, "-c", "from foldnorm.cli.main import main; main()", "export", "mlp-bn1d",
         "-o", str(tmp_path / "m.onnx")],
        capture_output=True, text=True, timeout=300, cwd=TESTS,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["exporting mlp-bn1d (dynamo, opset 18, float32) with input 1x32"]
    assert "2 BatchNorm" in proc.stdout


def test_opset_torch_actually_wrote_is_reported(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).eval()
    result = export_onnx(module, [torch.randn(2, 4)], tmp_path / "m.onnx", opset=16)
    assert result.requested_opset == 16
    assert result.opset == next(o.version for o in onnx.load(result.path).opset_import if o.domain == "")
    assert result.protected["LayerNormalization"] == 1
