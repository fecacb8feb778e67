"""Bad input: exit 1 (2 for usage), a short message naming the file and the fix, no traceback, the input
untouched and no partial output, for fold, verify and bench (CLI) and the library's one error family."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.builders import conv_bn, parse
from support.cli import assert_user_error, run, snapshot

import foldnorm
from foldnorm.errors import FoldnormError, OutputPathError
from foldnorm.onnxgraph import modelio


@pytest.fixture
def good(tmp_path: Path, rng: np.random.Generator) -> Path:
    path = tmp_path / "good.onnx"
    onnx.save(conv_bn(rng, cin=3), path)
    return path


def _missing(d: Path, good: Path, rng: np.random.Generator) -> Path:
    return d / "missing.onnx"


def _empty(d: Path, good: Path, rng: np.random.Generator) -> Path:
    (d / "empty.onnx").write_bytes(b"")
    return d / "empty.onnx"


def _random(d: Path, good: Path, rng: np.random.Generator) -> Path:
    (d / "random.onnx").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return d / "random.onnx"


def _truncated(d: Path, good: Path, rng: np.random.Generator) -> Path:
    data = good.read_bytes()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    return d / "truncated.onnx"


def _directory(d: Path, good: Path, rng: np.random.Generator) -> Path:
    (d / "dir.onnx").mkdir()
    return d / "dir.onnx"


def _json(d: Path, good: Path, rng: np.random.Generator) -> Path:
    (d / "model.json").write_text('{"graph": {"node": []}, "opset": 18}\n')
    return d / "model.json"


def _bn_wrong_length(d: Path, good: Path, rng: np.random.Generator) -> Path:
    model = conv_bn(rng, cin=3)  # made invalid after parsing: the checker would refuse it
    scale = next(t for t in model.graph.initializer if t.name == "bn_scale")
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale)[:5], "bn_scale"))
    onnx.save(model, d / "bn5.onnx")
    return d / "bn5.onnx"


def _undefined_input(d: Path, good: Path, rng: np.random.Generator) -> Path:
    model = conv_bn(rng, cin=3)
    model.graph.node[0].input[1] = "nowhere"
    onnx.save(model, d / "undefined.onnx")
    return d / "undefined.onnx"


def _missing_external_data(d: Path, good: Path, rng: np.random.Generator) -> Path:
    onnx.save(conv_bn(rng, cin=3), d / "ext.onnx", save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    (d / "ext.onnx.data").unlink()
    return d / "ext.onnx"


def _opset_99(d: Path, good: Path, rng: np.random.Generator) -> Path:
    model = conv_bn(rng, cin=3)
    model.opset_import[0].version = 99
    onnx.save(model, d / "opset99.onnx")
    return d / "opset99.onnx"


BAD: dict[str, tuple[Callable[[Path, Path, np.random.Generator], Path], str]] = {
    "missing": (_missing, "no such file"),
    "empty": (_empty, "empty"),
    "random bytes": (_random, "ONNX"),
    "truncated": (_truncated, "ONNX"),
    "directory": (_directory, "is a directory"),
    "json": (_json, "ONNX"),
    "bn params of wrong length": (_bn_wrong_length, "invalid"),
    "undefined input": (_undefined_input, "invalid"),
    "missing external data": (_missing_external_data, "external data"),
    "unsupported opset": (_opset_99, "opset 99"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("command", ["fold", "inspect", "verify-ref", "verify-cand", "bench"])
def test_bad_model_file(case: str, command: str, tmp_path: Path, good: Path, rng: np.random.Generator) -> None:
    make, needle = BAD[case]
    bad = make(tmp_path, good, rng)
    out = tmp_path / "out" / "folded.onnx"
    out.parent.mkdir()
    args = {
        "fold": ["fold", str(bad), "-o", str(out)],
        "inspect": ["inspect", str(bad)],
        "verify-ref": ["verify", str(bad), str(good)],
        "verify-cand": ["verify", str(good), str(bad)],
        "bench": ["bench", str(bad), "--iterations", "1", "--warmup", "0", "--ort-opt", "disabled"],
    }[command]
    before = snapshot(tmp_path)
    assert_user_error(run(args), bad, needle)
    assert snapshot(tmp_path) == before  # input untouched, nothing written


@pytest.mark.parametrize("case", list(BAD))
def test_library_raises_the_error_family(case: str, tmp_path: Path, good: Path, rng: np.random.Generator) -> None:
    bad = BAD[case][0](tmp_path, good, rng)
    with pytest.raises(FoldnormError, match=str(bad.name)):
        foldnorm.fold_model(bad)
    with pytest.raises(FoldnormError):
        foldnorm.compare_models(good, bad)


def test_bugs_are_not_user_errors() -> None:
    with pytest.raises(TypeError):
        foldnorm.fold_model(42)  # type: ignore[arg-type]


def test_output_directory_missing(good: Path, tmp_path: Path) -> None:
    result = run(["fold", str(good), "-o", str(tmp_path / "nodir" / "f.onnx")])
    assert_user_error(result, tmp_path / "nodir", "does not exist")


def test_output_is_input_refused_then_in_place(good: Path) -> None:
    original = good.read_bytes()
    result = run(["fold", str(good), "-o", str(good)])
    assert_user_error(result, good, "--in-place")
    assert good.read_bytes() == original
    result = run(["fold", str(good), "--in-place"])
    assert result.exit_code == 0, result.output
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(good).graph.node) == 0
    assert [p.name for p in good.parent.iterdir() if p.name.startswith(".foldnorm")] == []


def test_read_only_output_file(good: Path, tmp_path: Path) -> None:
    out = tmp_path / "ro.onnx"
    out.write_bytes(b"keep me")
    out.chmod(0o444)
    assert_user_error(run(["fold", str(good), "-o", str(out)]), out, "read-only")
    assert out.read_bytes() == b"keep me"


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a directory nobody may create files in (/sys)")
def test_unwritable_output_directory(good: Path) -> None:
    out = Path("/sys/foldnorm-test.onnx")
    assert_user_error(run(["fold", str(good), "-o", str(out)]), out, "not writable")
    assert not out.exists()


@pytest.mark.parametrize("args", [
    ["verify", "{good}", "{good}", "--shape", "x:abc"],
    ["verify", "{good}", "{good}", "--shape", "1x3x8x8"],
    ["verify", "{good}", "{good}", "--input-shape", "x:abc"],
    ["verify", "{good}", "{good}", "--samples", "-1"],
    ["verify", "{good}", "{good}", "--batch-sizes", "0,2"],
    ["verify", "{good}", "{good}", "--batch-sizes", "one"],
    ["verify", "{good}", "{good}", "--rtol", "-1"],
    ["fold", "{good}", "-o", "{out}", "--jobs", "0"],
    ["fold", "{good}"],
    ["bench", "{good}", "--iterations", "-3"],
    ["bench", "{good}", "--batch-size", "0"],
])
def test_malformed_options_are_usage_errors(args: list[str], good: Path, tmp_path: Path) -> None:
    filled = [a.format(good=good, out=tmp_path / "o.onnx") for a in args]
    result = run(filled)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_bench_output_blocked_by_a_file_is_refused_before_timing(good: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("not a directory")
    result = run(["bench", str(good), "-o", str(blocker / "run1"), "--iterations", "1", "--warmup", "0"])
    assert_user_error(result, blocker, "not a directory")
    assert result.stdout == ""  # refused before any timing was done
    assert blocker.read_text() == "not a directory"


def test_unknown_shape_name_is_exit_1(good: Path, tmp_path: Path) -> None:
    result = run(["verify", str(good), str(good), "--shape", "image:1x3x8x8"])
    assert result.exit_code == 1 and "no input named 'image'" in result.stderr


def test_interrupted_write_leaves_nothing(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C arriving while the file is being written: no partial output, no temp files, old file kept."""
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    real_save = onnx.save_model

    def save_then_interrupt(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(modelio.onnx, "save_model", save_then_interrupt)
    result = CliRunner().invoke(cli, ["fold", str(good), "-o", str(out)])
    assert result.exit_code == 130
    assert "no partially written file" in result.stderr
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.onnx", "out.onnx"]


def test_interrupted_external_data_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[4096] x) => (float[4096] y) { y = Add (x, c) }
    """, {"c": np.arange(4096, dtype=np.float32)})
    from foldnorm.onnxgraph import external

    def interrupted(tensor: onnx.TensorProto, *args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(external, "_set_location", interrupted)
    with pytest.raises(KeyboardInterrupt):
        modelio.save_model(model, tmp_path / "big.onnx", external_data=True)
    assert list(tmp_path.iterdir()) == []


def test_save_model_errors_are_output_path_errors(good: Path, tmp_path: Path) -> None:
    model = onnx.load(good)
    with pytest.raises(OutputPathError, match="does not exist"):
        foldnorm.save_model(model, tmp_path / "nope" / "m.onnx")
    with pytest.raises(OutputPathError, match="is a directory"):
        foldnorm.save_model(model, tmp_path)


@pytest.mark.parametrize(("missing", "args", "hint"), [
    ("onnxruntime", ["fold", "{good}", "-o", "{out}"], "foldnorm[ort]"),
    ("onnxruntime", ["verify", "{good}", "{good}"], "foldnorm[ort]"),
    ("torch", ["export", "mlp-bn1d", "-o", "{out}"], "foldnorm[torch]"),
])
def test_missing_optional_dependency_is_one_line_with_the_extra(missing: str, args: list[str], hint: str, good: Path,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now fails as if it were not installed
    out = tmp_path / "o.onnx"
    result = run([a.format(good=good, out=out) for a in args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: this command needs {missing}, which is not installed; install: ")
    assert hint in last
    assert not out.exists()
