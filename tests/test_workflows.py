"""Folding files: weights kept on disk (external data), in-place, and whole directories in parallel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.builders import conv_bn, op_count, run_ort

import foldnorm
from foldnorm.directory import fold_directory
from foldnorm.onnxgraph.external import has_weights_on_disk


def conv_bn_ln(rng: np.random.Generator, channels: int = 16) -> onnx.ModelProto:
    """Conv -> BN -> LayerNorm with parameters big enough to go to external data."""
    inits = {"ln_s": rng.uniform(0.5, 1.5, 512).astype(np.float32), "ln_b": rng.normal(0, 0.3, 512).astype(np.float32),
             "shape": np.array([0, channels, 512], np.int64)}
    return conv_bn(rng, cin=8, cout=channels, spatial=(16, 32), w_scale=0.3, bn_out="b", inits=inits,
                   tail=["r = Reshape (b, shape)", "y = LayerNormalization <axis = -1> (r, ln_s, ln_b)"],
                   outputs=f"float[N, {channels}, 512] y")


def save_external(model: onnx.ModelProto, path: Path) -> None:
    model = onnx.ModelProto.FromString(model.SerializeToString())  # onnx.save moves the caller's tensors out
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".weights", size_threshold=256)


def test_fold_external_data_model(tmp_path: Path, rng: np.random.Generator) -> None:
    model = conv_bn_ln(rng)
    src = tmp_path / "in" / "m.onnx"
    src.parent.mkdir()
    save_external(model, src)
    before = {p.name: p.read_bytes() for p in src.parent.iterdir()}
    out = tmp_path / "out.onnx"
    result = foldnorm.fold_file(src, out)
    assert result.verify is not None and result.verify.ok and result.verify.structure is not None
    assert result.verify.structure.intact and result.verify.candidate == str(out)
    assert {p.name: p.read_bytes() for p in src.parent.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.onnx", "out.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    folded = onnx.load(out)
    assert op_count(folded, "BatchNormalization") == 0
    x = {"x": rng.normal(0, 1, (2, 8, 16, 32)).astype(np.float32)}
    expected, got = run_ort(model, x), run_ort(folded, x)
    assert np.max(np.abs(expected[0] - got[0])) <= 1e-5 * np.max(np.abs(expected[0]))


def test_lazy_load_reads_weights_on_demand(tmp_path: Path, rng: np.random.Generator) -> None:
    model = conv_bn_ln(rng)
    save_external(model, tmp_path / "m.onnx")
    lazy = foldnorm.load_model(tmp_path / "m.onnx", keep_weights_on_disk=True)
    assert has_weights_on_disk(lazy)
    assert lazy.ByteSize() < 2048
    saved = foldnorm.save_model(foldnorm.fold_model(lazy).model, tmp_path / "f.onnx")
    assert not any(e.value.startswith("/") for t in onnx.load(saved, load_external_data=False).graph.initializer
                   for e in t.external_data)
    assert foldnorm.compare_models(tmp_path / "m.onnx", saved).ok


def test_in_place_with_external_data(tmp_path: Path, rng: np.random.Generator) -> None:
    src = tmp_path / "m.onnx"
    model = conv_bn_ln(rng)
    reference = tmp_path / "ref.onnx"
    onnx.save(model, reference)
    onnx.save(model, src, save_as_external_data=True, location="m.onnx.data", size_threshold=256)
    result = CliRunner().invoke(cli, ["fold", str(src), "--in-place"])
    assert result.exit_code == 0, result.output
    assert op_count(onnx.load(src), "BatchNormalization") == 0
    assert foldnorm.compare_models(reference, src).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data", "ref.onnx"]


@pytest.fixture
def model_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    onnx.save(conv_bn_ln(rng), d / "a.onnx")
    save_external(conv_bn_ln(rng, channels=8), d / "b.onnx")
    (d / "broken.onnx").write_bytes(b"\x08\x07garbage" * 50)
    (d / "notes.txt").write_text("not a model")
    (tmp_path / "out").mkdir()
    return d


def test_fold_directory_api_reports_each_file(model_dir: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    result = fold_directory(model_dir, tmp_path / "out", progress=lambda item: seen.append(Path(item.input).name))
    assert [Path(i.input).name for i in result.items] == ["a.onnx", "b.onnx", "broken.onnx"]
    assert sorted(seen) == ["a.onnx", "b.onnx", "broken.onnx"]
    assert [i.ok for i in result.items] == [True, True, False]
    assert "broken.onnx" in result.items[2].message
    assert result.summary().startswith("folded 2/3 models") and "1 failed: broken.onnx" in result.summary()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.onnx", "b.onnx", "b.onnx.data"]


def test_fold_directory_cli_parallel(model_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["fold", str(model_dir), "-o", str(tmp_path / "out"), "--jobs", "2",
                                      "--format", "json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [i["ok"] for i in data["items"]] == [True, True, False]
    assert "FAILED" in result.stderr and "1 of 3 models failed" in result.stderr
    for name in ("a.onnx", "b.onnx"):
        assert op_count(onnx.load(tmp_path / "out" / name), "BatchNormalization") == 0


def test_fold_directory_all_good_exit_0(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "broken.onnx").unlink()
    result = CliRunner().invoke(cli, ["fold", str(model_dir), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("folded 2/2 models")


def test_fold_directory_refuses_itself_without_in_place(model_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["fold", str(model_dir), "-o", str(model_dir)])
    assert result.exit_code == 1 and "--in-place" in result.stderr


def test_save_model_leaves_the_callers_model_usable(tmp_path: Path, rng: np.random.Generator) -> None:
    model = conv_bn_ln(rng)
    before = model.SerializeToString()
    foldnorm.save_model(model, tmp_path / "ext.onnx", external_data=True)
    assert model.SerializeToString() == before
    assert (tmp_path / "ext.onnx.data").stat().st_size > 0
    lazy = foldnorm.load_model(tmp_path / "ext.onnx", keep_weights_on_disk=True)
    assert foldnorm.compare_models(model, lazy).ok  # runs the lazy model from a temporary copy
    foldnorm.save_model(lazy, tmp_path / "again.onnx")
    assert foldnorm.compare_models(model, tmp_path / "again.onnx").ok
    assert foldnorm.compare_models(model, lazy).ok  # still readable: it points at its own file


def test_fold_report_has_each_folds_error_and_before_after(tmp_path: Path, rng: np.random.Generator) -> None:
    onnx.save(conv_bn_ln(rng), tmp_path / "m.onnx")
    result = CliRunner().invoke(cli, ["fold", str(tmp_path / "m.onnx"), str(tmp_path / "out.onnx"), "--report",
                                      str(tmp_path / "r.json"), "--worst", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.onnx").exists()  # the positional OUT
    assert "largest errors at a fold:" in result.stdout and "max rel err" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    (bn,) = [r for r in report["records"] if r["op_type"] == "BatchNormalization"]
    assert bn["outcome"] == "folded" and bn["error_at"] == "b"  # the BN's output, now the Conv's
    assert 0 < bn["max_rel_err"] < 1e-5 and bn["max_abs_err"] > 0
    (ln,) = [r for r in report["records"] if r["op_type"] == "LayerNormalization"]
    assert ln["max_rel_err"] is None  # kept: nothing folded there
    before, after = report["before"], report["after"]
    assert before["nodes"]["BatchNormalization"] == 1 and "BatchNormalization" not in after["nodes"]
    assert after["node_count"] == before["node_count"] - 1
    assert after["parameters"] == before["parameters"] - 4 * 16 + 16  # BN's four vectors gone, a Conv bias added
    assert before["file_bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert after["file_bytes"] == (tmp_path / "out.onnx").stat().st_size
    assert after["tensor_bytes"] == before["tensor_bytes"] - 4 * (4 * 16 - 16)


def test_external_data_stays_external_when_every_weight_folds(tmp_path: Path, rng: np.random.Generator) -> None:
    src = tmp_path / "m.onnx"
    save_external(conv_bn(rng, cin=8, cout=16), src)  # its one external tensor, W, is folded
    size = src.stat().st_size + (tmp_path / "m.onnx.weights").stat().st_size
    result = foldnorm.fold_file(src, tmp_path / "out.onnx", verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.weights", "out.onnx", "out.onnx.data"]
    folded = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    assert {e.value for t in folded.graph.initializer for e in t.external_data if e.key == "location"} == \
        {"out.onnx.data"}
    assert result.report.before is not None and result.report.before.file_bytes == size
    assert foldnorm.fold_model(src).report.before.file_bytes == size  # type: ignore[union-attr]
    assert foldnorm.compare_models(src, tmp_path / "out.onnx").ok


def test_a_constant_node_stored_in_external_data_loads_and_folds(tmp_path: Path, rng: np.random.Generator) -> None:
    # save_model(external_data=True) moves a big Constant node's tensor to the data file too (as
    # onnx.save(convert_attribute=True) does); the checker used to see its absolute location and refuse the model.
    model = conv_bn(rng, cin=8, cout=16)
    weight = next(t for t in model.graph.initializer if t.name == "W")
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["W"], value=weight))
    model.graph.initializer.remove(weight)
    src = tmp_path / "m.onnx"
    foldnorm.save_model(model, src, external_data=True)
    stored = onnx.load(src, load_external_data=False).graph.node[0].attribute[0].t
    assert stored.data_location == onnx.TensorProto.EXTERNAL
    result = foldnorm.fold_file(src, tmp_path / "out.onnx")
    assert result.report.folded == 1 and result.verify is not None and result.verify.ok


def test_inspect_shows_before_and_after(tmp_path: Path, rng: np.random.Generator) -> None:
    onnx.save(conv_bn_ln(rng), tmp_path / "m.onnx")
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0
    assert "  BatchNormalization" in result.stdout and "parameters" in result.stdout
    assert "file size (after: estimated)" in result.stdout
    data = json.loads(CliRunner().invoke(cli, ["inspect", str(tmp_path / "m.onnx"), "--format", "json"]).stdout)
    assert data["report"]["before"]["file_bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert data["report"]["after"]["file_bytes"] is None and data["report"]["after"]["node_count"] > 0


def test_fold_output_given_twice_is_a_usage_error(tmp_path: Path, rng: np.random.Generator) -> None:
    onnx.save(conv_bn(rng), tmp_path / "m.onnx")
    result = CliRunner().invoke(cli, ["fold", str(tmp_path / "m.onnx"), str(tmp_path / "a.onnx"), "-o",
                                      str(tmp_path / "b.onnx")])
    assert result.exit_code == 2 and "two outputs" in result.stderr
    missing = CliRunner().invoke(cli, ["fold", str(tmp_path / "m.onnx")])
    assert missing.exit_code == 2 and "-o OUT.onnx" in missing.stderr


def test_fold_tolerances_and_where_a_failed_fold_diverges(tmp_path: Path, rng: np.random.Generator) -> None:
    onnx.save(conv_bn_ln(rng), tmp_path / "m.onnx")
    strict = CliRunner().invoke(cli, ["fold", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"),
                                      "--rtol", "0", "--atol", "0"])
    assert strict.exit_code == 3 and not (tmp_path / "out.onnx").exists()
    assert "first divergence at 'b' (Conv " in strict.stderr  # the folded Conv's output, under the BN's name
    assert "localize: first divergence at tensor 'b'" in strict.stdout
    loose = CliRunner().invoke(cli, ["fold", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"),
                                     "--rtol", "1e-3", "--format", "json"])
    assert loose.exit_code == 0
    assert json.loads(loose.stdout)["verify"]["outputs"][0]["rtol"] == 1e-3


def test_fold_judges_against_the_noise_floor(tmp_path: Path) -> None:
    from support.builders import parse

    # y = x*1000 - x*999.9 after a BN: float32 rounding in the model itself is far above rtol 1e-4
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6] x) => (float[N, 4, 6] y) {
        c = Conv (x, w)
        b = BatchNormalization (c, s, t, m, v)
        p = Mul (b, big)
        q = Mul (b, big2)
        y = Sub (p, q)
    }
    """, {"w": np.random.default_rng(0).normal(0, 1, (4, 4, 1)).astype(np.float32),
          "s": np.array([1.3, -0.7, 0.9, 2.0], np.float32), "t": np.array([0.1, 0.2, -0.3, 0.4], np.float32),
          "m": np.array([0.5, -0.1, 0.2, 0.0], np.float32), "v": np.array([0.7, 1.5, 2.2, 0.4], np.float32),
          "big": np.array(1000.0, np.float32), "big2": np.array(999.9, np.float32)})
    onnx.save(model, tmp_path / "m.onnx")
    result = foldnorm.fold_file(tmp_path / "m.onnx", tmp_path / "out.onnx", batch_sizes=(4,))
    assert result.verify is not None and result.verify.ok and result.verify.noise is not None
    (out,) = result.verify.outputs
    assert out.mismatched > 0 and out.within_noise and out.noise_floor is not None  # both numbers reported
    assert "noise floor" in result.verify.summary()
