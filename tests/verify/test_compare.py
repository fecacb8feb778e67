"""`foldnorm verify`, `foldnorm.compare_models` and `foldnorm.testing.assert_equivalent`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from foldnorm.cli.main import cli
from onnx import numpy_helper
from support.builders import conv_bn, parse
from support.fold_helpers import saved_pair

import foldnorm
from foldnorm.errors import InputSpecError, ModelMismatchError
from foldnorm.testing import assert_equivalent


def conv_bn_ln(rng: np.random.Generator, spatial: tuple[int | str, ...] = (8, 8),
               out_dims: str = "N, 6, 8, 8") -> onnx.ModelProto:
    """Conv -> BN -> LayerNorm (protected) -> output."""
    inits = {"ln_s": rng.uniform(0.5, 1.5, 8).astype(np.float32), "ln_b": rng.normal(0, 0.3, 8).astype(np.float32)}
    return conv_bn(rng, spatial=spatial, bn_out="b", inits=inits, outputs=f"float[{out_dims}] y",
                   tail=["y = LayerNormalization <axis = -1> (b, ln_s, ln_b)"])


def set_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name == name:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
    return out


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def conv_weight_name(model: onnx.ModelProto) -> str:
    return next(n.input[1] for n in model.graph.node if n.op_type == "Conv")


@pytest.fixture
def pair(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    return saved_pair(conv_bn_ln(rng), tmp_path)


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_verify_equivalent_text(pair: tuple[Path, Path]) -> None:
    result = run("verify", str(pair[0]), str(pair[1]), "--batch-sizes", "1,4")
    assert result.exit_code == 0, result.output
    assert "BatchNorm: 1 in reference, 0 in candidate" in result.stdout
    assert "intact: 1/1" in result.stdout
    assert "equivalent" in result.stdout
    assert "max abs err" in result.stdout


def test_verify_json(pair: tuple[Path, Path]) -> None:
    result = run("verify", str(pair[0]), str(pair[1]), "--format", "json", "--batch-sizes", "1,3", "--samples", "2")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["ok"] is True
    (out,) = data["outputs"]
    assert out["name"] == "y" and out["dtype"] == "float32"
    assert out["total"] == 2 * (1 + 3) * 6 * 8 * 8  # two samples of each batch size
    assert 0 < out["max_rel"] < 1e-5
    assert (out["rtol"], out["atol"]) == (1e-4, 1e-6)
    assert data["structure"]["batchnorm_reference"] == 1
    assert data["structure"]["protected"][0]["op_type"] == "LayerNormalization"


def test_verify_detects_wrong_weights(pair: tuple[Path, Path], tmp_path: Path) -> None:
    cand = onnx.load(pair[1])
    name = conv_weight_name(cand)
    w = initializer(cand, name).copy()
    w[0, 0, 1, 1] += 0.1  # a per-channel scale would vanish in the LayerNorm: change one tap
    onnx.save(set_initializer(cand, name, w), tmp_path / "bad.onnx")
    result = run("verify", str(pair[0]), str(tmp_path / "bad.onnx"), "--format", "json")
    assert result.exit_code == 3
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["outputs"][0]["mismatched"] > 0
    assert "not equivalent" in result.stderr


def test_tolerance_options_decide(pair: tuple[Path, Path], tmp_path: Path) -> None:
    cand = onnx.load(pair[1])
    name = conv_weight_name(cand)
    w = initializer(cand, name).copy()
    w[0, 0, 1, 1] += 0.01
    onnx.save(set_initializer(cand, name, w), tmp_path / "near.onnx")
    strict = run("verify", str(pair[0]), str(tmp_path / "near.onnx"))
    loose = run("verify", str(pair[0]), str(tmp_path / "near.onnx"), "--rtol", "0.05", "--atol", "0.01")
    assert (strict.exit_code, loose.exit_code) == (3, 0)


def test_nan_introduced_fails(tmp_path: Path) -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4] x) => (float[N, 4] y) { y = Mul (x, c) }
    """
    c = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    onnx.save(parse(text, {"c": c}), tmp_path / "ref.onnx")
    onnx.save(parse(text, {"c": np.array([1.0, 2.0, np.inf, 4.0], np.float32)}), tmp_path / "cand.onnx")
    result = foldnorm.compare_models(tmp_path / "ref.onnx", tmp_path / "cand.onnx", batch_sizes=(2,))
    assert not result.ok
    assert result.outputs[0].nonfinite_introduced == 2
    assert run("verify", str(tmp_path / "ref.onnx"), str(tmp_path / "cand.onnx")).exit_code == 3


def test_changed_layernorm_is_reported(pair: tuple[Path, Path]) -> None:
    cand = onnx.load(pair[1])
    ln = next(n for n in cand.graph.node if n.op_type == "LayerNormalization")
    ln.attribute.append(onnx.helper.make_attribute("epsilon", 1e-5))  # the default, so numbers stay equal
    result = foldnorm.compare_models(pair[0], cand)
    assert result.numerics_ok
    assert result.structure is not None and not result.structure.intact
    assert result.structure.protected[0].status == "changed"
    assert not result.ok
    assert foldnorm.compare_models(pair[0], cand, structure=False).ok


def test_interface_mismatch_is_exit_1(pair: tuple[Path, Path], tmp_path: Path, rng: np.random.Generator) -> None:
    other = conv_bn_ln(rng, spatial=(8, 16), out_dims="N, 6, 8, 16")
    onnx.save(other, tmp_path / "other.onnx")
    result = run("verify", str(pair[0]), str(tmp_path / "other.onnx"))
    assert result.exit_code == 1
    assert "input 'x'" in result.stderr and "float[N,4,8,16] in the candidate" in result.stderr
    renamed = onnx.load(pair[1])
    renamed.graph.output[0].name = "z"
    renamed.graph.node[-1].output[0] = "z"
    with pytest.raises(ModelMismatchError, match="different outputs"):
        foldnorm.compare_models(pair[0], renamed)


def test_dynamic_dims_need_shape(tmp_path: Path, rng: np.random.Generator) -> None:
    model = conv_bn_ln(rng, spatial=("H", 8), out_dims="N, 6, H, 8")
    onnx.save(model, tmp_path / "dyn.onnx")
    folded = foldnorm.fold_model(model).model
    onnx.save(folded, tmp_path / "dyn_f.onnx")
    missing = run("verify", str(tmp_path / "dyn.onnx"), str(tmp_path / "dyn_f.onnx"))
    assert missing.exit_code == 1
    assert "--shape x:" in missing.stderr
    result = run("verify", str(tmp_path / "dyn.onnx"), str(tmp_path / "dyn_f.onnx"), "--shape", "x:1x4x5x8",
                 "--batch-sizes", "2,3", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"][0]["total"] == (2 + 3) * 6 * 5 * 8  # the batch sizes still apply


def test_npz_inputs(pair: tuple[Path, Path], tmp_path: Path, rng: np.random.Generator) -> None:
    np.savez(tmp_path / "in.npz", x=rng.normal(0, 3, (5, 4, 8, 8)))  # float64: cast to the model's float32
    result = run("verify", str(pair[0]), str(pair[1]), "--inputs", str(tmp_path / "in.npz"), "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["batch_sizes"] == [5] and data["outputs"][0]["total"] == 5 * 6 * 8 * 8
    np.savez(tmp_path / "wrong.npz", image=np.zeros((1, 4, 8, 8), np.float32))
    bad = run("verify", str(pair[0]), str(pair[1]), "--inputs", str(tmp_path / "wrong.npz"))
    assert bad.exit_code == 1 and "missing ['x']" in bad.stderr
    np.savez(tmp_path / "shape.npz", x=np.zeros((1, 4, 8, 9), np.float32))
    with pytest.raises(InputSpecError, match="model wants Nx4x8x8"):
        foldnorm.compare_models(pair[0], pair[1], inputs=tmp_path / "shape.npz")


def test_integer_bool_and_fp16_inputs(tmp_path: Path, rng: np.random.Generator) -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    g (int64[N, 3] idx, bool[N, 3] keep, float16[N, 3] h) => (float[N, 3, 4] y, float16[N, 3] z) {
        e = Gather (E, idx)
        k = Unsqueeze (keep, axes)
        zero = ConstantOfShape <value = float[1] {0.0}> (s)
        y = Where (k, e, zero)
        z = Mul (h, h)
    }
    """
    inits = {"E": rng.normal(0, 1, (8, 4)).astype(np.float32), "axes": np.array([2], np.int64),
             "s": np.array([1], np.int64)}
    onnx.save(parse(text, inits), tmp_path / "m.onnx")
    result = foldnorm.compare_models(tmp_path / "m.onnx", tmp_path / "m.onnx", batch_sizes=(1, 4), samples=3)
    assert result.ok
    assert [(o.dtype, o.rtol, o.atol) for o in result.outputs] == [("float32", 1e-4, 1e-6),
                                                                   ("float16", 1e-2, 1e-3)]
    assert result.outputs[0].max_abs == 0.0


def test_fp16_conv_bn_fold_verifies_with_fp16_tolerance(tmp_path: Path, rng: np.random.Generator) -> None:
    model = conv_bn(rng, dtype="float16")
    result = assert_equivalent(model, foldnorm.fold_model(model).model)
    assert result.outputs[0].dtype == "float16" and result.outputs[0].rtol == 1e-2


def test_assert_equivalent_message(pair: tuple[Path, Path]) -> None:
    assert assert_equivalent(str(pair[0]), onnx.load(pair[1])).ok
    cand = onnx.load(pair[1])
    name = conv_weight_name(cand)
    wrong = set_initializer(cand, name, -initializer(cand, name))
    with pytest.raises(AssertionError) as info:
        assert_equivalent(pair[0], wrong)
    message = str(info.value)
    assert "NOT equivalent" in message
    assert "y (float32): max abs" in message and "FAIL" in message
    assert "BatchNorm: 1 in reference, 0 in candidate" in message
    assert len(message.splitlines()) <= 4


def test_fold_verification_is_compare_models(pair: tuple[Path, Path], tmp_path: Path) -> None:
    result = foldnorm.fold_file(pair[0], tmp_path / "out.onnx")
    assert isinstance(result.verify, foldnorm.VerifyResult)
    assert result.verify.structure is not None and result.verify.structure.intact


def test_what_changed_is_named(pair: tuple[Path, Path]) -> None:
    cand = onnx.load(pair[1])
    ln = next(n for n in cand.graph.node if n.op_type == "LayerNormalization")
    ln.attribute.append(onnx.helper.make_attribute("epsilon", 1e-3))
    scale = initializer(cand, "ln_s")
    cand = set_initializer(cand, "ln_s", (scale + np.float32(0.25) * (np.arange(8) == 3)).astype(np.float32))
    onnx.save(cand, pair[1].with_name("changed.onnx"))
    result = run("verify", str(pair[0]), str(pair[1].with_name("changed.onnx")))
    assert result.exit_code == 3
    assert "(LayerNormalization) changed (attribute epsilon: '(unset)' -> 0.0010000000474974513)" in result.stdout
    assert "parameter 'ln_s' (input 1): max abs diff 0.25 (max rel " in result.stdout
    data = json.loads(run("verify", str(pair[0]), str(pair[1].with_name("changed.onnx")), "--format", "json").stdout)
    (changed,) = data["structure"]["protected"]
    assert changed["status"] == "changed" and len(changed["changes"]) == 2
