"""bn-affine: a BatchNormalization with nothing to fold into lowered to one Mul and one Add under
`standalone_bn="affine"` (`--standalone-bn affine`); kept by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.builders import bn_inputs, bn_params, parse, x_feed
from support.fold_helpers import assert_folds, assert_refused, assert_turned_off

from foldnorm import FoldOptions


def standalone_model(rng: np.random.Generator, x_type: str = "float", dtype: type = np.float32) -> onnx.ModelProto:
    inits = bn_params("bn", 4, rng, dtype)
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g ({x_type}[N, 4, 6, 6] x) => ({x_type}[N, 4, 6, 6] y) {{
        r = Relu (x)
        y = BatchNormalization (r, {bn_inputs("bn")})
    }}
    """, inits)


def test_standalone_bn_is_kept_by_default(rng: np.random.Generator) -> None:
    assert_refused(standalone_model(rng), "standalone", outcome="kept")


def test_standalone_bn_lowers_to_mul_add(rng: np.random.Generator) -> None:
    result = assert_folds(standalone_model(rng), x_feed(rng), options=FoldOptions(standalone_bn="affine"))
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "Mul", "Add"]
    assert "lowered to Mul + Add" in result.report.records[0].reason


def test_standalone_mixed_precision_bn_lowers_in_input_dtype(rng: np.random.Generator) -> None:
    model = standalone_model(rng, "float16", np.float32)  # BN-15: fp16 X, fp32 parameters
    feeds = {"x": rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float16)}
    result = assert_folds(model, feeds, rtol=5e-3, options=FoldOptions(standalone_bn="affine"))
    new = [t for t in result.model.graph.initializer if "affine" in t.name]
    assert {t.data_type for t in new} == {onnx.TensorProto.FLOAT16}


def test_skip_bn_affine_keeps_the_standalone_bn_and_says_so(rng: np.random.Generator) -> None:
    result = assert_turned_off(standalone_model(rng), "bn-affine", options=FoldOptions(standalone_bn="affine"))
    (record,) = result.report.records
    assert record.reason.startswith("standalone: its input comes from Relu r, which is not linear")


def test_skip_bn_affine_without_the_option_changes_nothing(rng: np.random.Generator) -> None:
    model = standalone_model(rng)
    result = assert_refused(model, "standalone", outcome="kept", options=FoldOptions(skip=("bn-affine",)))
    assert "turned off" not in result.report.records[0].reason


def test_cli_fold_standalone_affine(rng: np.random.Generator, tmp_path: Path) -> None:
    model = standalone_model(rng)
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save_model(model, str(src))
    result = CliRunner().invoke(cli, ["fold", str(src), "-o", str(out), "--standalone-bn", "affine",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)["report"]["records"]
    assert record["outcome"] == "folded" and "Mul + Add" in record["reason"]
    folded = onnx.load(str(out))
    onnx.checker.check_model(folded, full_check=True)
    assert [n.op_type for n in folded.graph.node] == ["Relu", "Mul", "Add"]


def test_standalone_bn_whose_input_type_only_shape_inference_proves_lowers(rng: np.random.Generator) -> None:
    # Legacy exports record no types inside the graph, and long chains (DPN's Concat/Add/Slice, 30 blocks deep)
    # or ops the prover does not follow (Pow) hide the input's dtype from the producers (issue 13, item 7).
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float16[N, 4, 6, 6] x) => (float16[N, 4, 6, 6] y) {{
        p = Pow (x, two)
        y = BatchNormalization (p, {bn_inputs("bn")})
    }}
    """, {"two": np.array(2, np.float16), **bn_params("bn", 4, rng, np.float32)})
    feeds = {"x": rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float16)}
    result = assert_folds(model, feeds, rtol=5e-3, options=FoldOptions(standalone_bn="affine"))
    assert [n.op_type for n in result.model.graph.node] == ["Pow", "Mul", "Add"]
