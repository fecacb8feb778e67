"""Item 7: models from ONNX's and peers' test suites: bfloat16 inputs verify (through float32 at the graph's
edge) or say which op has no kernel; invalid convolutions are InvalidModelError from the API."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse
from support.cli import assert_user_error, run

import foldnorm
from foldnorm.errors import InvalidModelError
from foldnorm.verify.ortrun import cast_at_edges


def bf16_edges(shift: float = 0.5) -> onnx.ModelProto:
    """bfloat16 in and out, float32 inside (ONNX Runtime's CPU runs Cast and Add in these types)."""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (bfloat16[N, 4] x, float[N, 4] z) => (bfloat16[N, 4] y, float[N, 4] w) {{
        f = Cast <to = 1> (x)
        s = Constant <value_float = {shift}> ()
        g = Add (f, s)
        y = Cast <to = 16> (g)
        w = Add (z, f)
    }}
    """)


def bf16_conv_bn(rng: np.random.Generator) -> onnx.ModelProto:
    inits = {"W": rng.normal(0, 0.5, (6, 3, 3, 3)).astype(ml_dtypes.bfloat16),
             **bn_params("bn", 6, rng, ml_dtypes.bfloat16)}
    return parse(f"""
    <ir_version: 10, opset_import: ["" : 22]>
    g (bfloat16[N, 3, 8, 8] x) => (bfloat16[N, 6, 8, 8] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits)


def test_bfloat16_inputs_and_outputs_verify(tmp_path: Path) -> None:
    ref, same, other = tmp_path / "ref.onnx", tmp_path / "same.onnx", tmp_path / "other.onnx"
    onnx.save(bf16_edges(), ref)
    onnx.save(bf16_edges(), same)
    onnx.save(bf16_edges(shift=0.75), other)
    result = foldnorm.compare_models(ref, same)
    assert result.ok and [o.dtype for o in result.outputs] == ["bfloat16", "float32"]
    assert result.outputs[0].rtol == 5e-2  # bfloat16's tolerances, not float32's
    assert run(["verify", str(ref), str(same)]).exit_code == 0
    differs = run(["verify", str(ref), str(other)])
    assert differs.exit_code == 3, differs.output
    assert "Traceback" not in differs.output


def test_the_edge_casts_leave_the_body_alone() -> None:
    model = bf16_edges()
    edged = cast_at_edges(model)
    assert edged is not None and cast_at_edges(edged) is None
    assert [n.op_type for n in edged.graph.node] == ["Cast", *(n.op_type for n in model.graph.node), "Cast"]
    assert [vi.name for vi in edged.graph.input] == ["x", "z"] and [vi.name for vi in edged.graph.output] == ["y", "w"]
    onnx.checker.check_model(edged, full_check=True)
    assert len(model.graph.node) == 5  # the original is unchanged
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16


def test_an_op_without_a_bfloat16_kernel_is_named(tmp_path: Path, rng: np.random.Generator) -> None:
    path, out = tmp_path / "bf16.onnx", tmp_path / "out.onnx"
    onnx.save(bf16_conv_bn(rng), path)
    result = run(["fold", str(path), "-o", str(out)])
    assert_user_error(result, path, "no kernel for Conv-22")
    assert "bfloat16" in result.stderr and not out.exists()
    folded = run(["fold", str(path), "-o", str(out), "--no-verify"])
    assert folded.exit_code == 0, folded.output
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(out).graph.node)


def conv_transpose(rng: np.random.Generator, weight: tuple[int, ...], group: int, channels: str = "C",
                   bias: int | None = None) -> onnx.ModelProto:
    """ConvTranspose -> BN; the input's channel count is symbolic unless given, so shape inference cannot help."""
    inits = {"W": rng.normal(0, 0.5, weight).astype(np.float32), **bn_params("bn", 12, rng)}
    if bias is not None:
        inits["B"] = rng.normal(0, 0.5, bias).astype(np.float32)
    model = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, {channels}, 8, 8] x) => (float[N, 12, 10, 10] y) {{
        c = ConvTranspose <group = {group}> (x, W{", B" if bias is not None else ""})
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in inits.items())
    return model


@pytest.mark.parametrize(("weight", "group", "bias", "needle"), [
    ((32, 4, 3, 3), 3, None, "not divisible by group=3"),
    ((32, 12, 3, 3), 0, None, "group attribute that is not a positive integer"),
    ((32, 12), 1, None, "rank 3 or more"),
    ((32, 12, 3, 3), 1, 7, "bias of shape [7] for 12 output channels"),
], ids=["32 channels, group 3", "group 0", "rank-2 weight", "bias length"])
def test_invalid_conv_transpose_is_invalid_model_error(weight: tuple[int, ...], group: int, bias: int | None,
                                                       needle: str, tmp_path: Path, rng: np.random.Generator) -> None:
    model = conv_transpose(rng, weight, group, bias=bias)
    with pytest.raises(InvalidModelError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        foldnorm.fold_model(model)
    path = tmp_path / "ct.onnx"
    onnx.save(model, path)
    with pytest.raises(InvalidModelError):
        foldnorm.fold_model(path)
    assert_user_error(run(["inspect", str(path)]), path, "invalid" if group < 1 or len(weight) < 3 else needle)


def test_static_input_channels_must_match_the_weight(rng: np.random.Generator) -> None:
    with pytest.raises(InvalidModelError, match="reads 16 input channels"):
        foldnorm.fold_model(conv_transpose(rng, (32, 3, 3, 3), 4, channels="16"))


def test_a_valid_grouped_conv_transpose_still_folds(rng: np.random.Generator) -> None:
    result = foldnorm.fold_model(conv_transpose(rng, (32, 3, 3, 3), 4))
    assert result.report.batchnorm_folded == 1
