"""Item 2: tensors whose data does not match what they declare are invalid models: exit 1, one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from support.builders import conv_bn
from support.cli import assert_user_error, run, snapshot
from support.hostile import external_entry, save_external, tensor

import foldnorm
from foldnorm.errors import FoldnormError, InvalidModelError
from foldnorm.onnxgraph import modelio


def _external(key: str, value: str) -> Callable[[onnx.ModelProto], None]:
    return lambda m: external_entry(tensor(m, "W"), key, value)


def _short_raw(m: onnx.ModelProto) -> None:
    tensor(m, "W").raw_data = tensor(m, "W").raw_data[:-4]


def _huge_dims(m: onnx.ModelProto) -> None:
    w = tensor(m, "W")
    del w.dims[:]
    w.dims.extend([2**31, 2**31])
    w.raw_data = bytes(16)


def _typed_field_short(m: onnx.ModelProto) -> None:
    w = tensor(m, "W")
    values = onnx.numpy_helper.to_array(w).reshape(-1)[:-1]
    w.ClearField("raw_data")
    w.float_data.extend(values.tolist())


def _negative_dim(m: onnx.ModelProto) -> None:
    tensor(m, "bn_var").dims[0] = -6


# (stored externally?, mutation, what the error says)
CASES: dict[str, tuple[bool, Callable[[onnx.ModelProto], None], str]] = {
    "negative offset": (True, _external("offset", "-1"), "offset '-1'"),
    "non-numeric offset": (True, _external("offset", "abc"), "offset 'abc'"),
    "negative length": (True, _external("length", "-648"), "length '-648'"),
    "float length": (True, _external("length", "6.48e2"), "length '6.48e2'"),
    "length shorter than dims": (True, _external("length", "600"), "need 648 bytes"),
    "no location": (True, _external("location", ""), "names no data file"),
    "raw data shorter than dims": (False, _short_raw, "need 648"),
    "dims 2^31 x 2^31 over 16 bytes": (False, _huge_dims, "holds 16 bytes"),
    "float_data one short": (False, _typed_field_short, "holds 161 float_data"),
    "negative dim": (False, _negative_dim, "negative dimension"),
}


def _model(tmp_path: Path, rng: np.random.Generator, case: str) -> Path:
    external, mutate, _ = CASES[case]
    path = tmp_path / "bad.onnx"
    if external:
        save_external(conv_bn(rng, cin=3), path)
        model = onnx.load(path, load_external_data=False)
    else:
        model = conv_bn(rng, cin=3)
    mutate(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", [["fold", "{m}", "-o", "{out}"], ["fold", "{m}", "-o", "{out}", "--no-verify"],
                                     ["inspect", "{m}"], ["verify", "{m}", "{m}"],
                                     ["bench", "{m}", "--iterations", "1", "--warmup", "0", "--ort-opt", "disabled"]],
                         ids=["fold", "fold-no-verify", "inspect", "verify", "bench"])
def test_malformed_tensor_is_one_line_exit_1(case: str, command: list[str], tmp_path: Path,
                                             rng: np.random.Generator) -> None:
    bad = _model(tmp_path, rng, case)
    before = snapshot(tmp_path)
    result = run([a.format(m=bad, out=tmp_path / "out.onnx") for a in command])
    assert_user_error(result, bad, CASES[case][2])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", list(CASES))
def test_api_raises_the_error_family(case: str, tmp_path: Path, rng: np.random.Generator) -> None:
    bad = _model(tmp_path, rng, case)
    with pytest.raises(FoldnormError, match=CASES[case][2]):
        foldnorm.fold_model(bad)


def test_in_memory_model_with_bad_tensor_is_invalid(rng: np.random.Generator) -> None:
    """A ModelProto from the caller: its raw bytes are checked when the fold reads the tensor."""
    model = conv_bn(rng, cin=3)
    tensor(model, "bn_var").raw_data = bytes(16)
    with pytest.raises(InvalidModelError, match="'bn_var': its data does not fit its type and dims"):
        foldnorm.fold_model(model)


def test_data_file_truncated_while_it_is_read(tmp_path: Path, rng: np.random.Generator,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The data file passes the size check, then shrinks before the fold reads the weights."""
    path = save_external(conv_bn(rng, cin=3), tmp_path / "model.onnx")
    data = tmp_path / "model.onnx.data"
    real_check = modelio._check_skeleton

    def check_then_truncate(light: bytes, where: Path) -> None:
        real_check(light, where)
        data.write_bytes(data.read_bytes()[:100])

    monkeypatch.setattr(modelio, "_check_skeleton", check_then_truncate)
    out = tmp_path / "out.onnx"
    result = run(["fold", str(path), "-o", str(out), "--no-verify"])
    assert_user_error(result, data, "ends")
    assert "early" in result.stderr and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
