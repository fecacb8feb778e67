"""Item 6: options that would make verification lie, or allocate without bound, are refused up front."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, conv_bn, parse
from support.cli import assert_user_error, run
from support.hostile import tensor

import foldnorm
from foldnorm.errors import FoldnormError, InputSpecError
from foldnorm.verify import compare


@pytest.fixture
def broken(tmp_path: Path, rng: np.random.Generator) -> Path:
    model = conv_bn(rng, cin=3)
    weight = tensor(model, "W")
    weight.raw_data = bytes(len(weight.raw_data))
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture
def dynamic(tmp_path: Path, rng: np.random.Generator) -> Path:
    inits = {"W": rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32), **bn_params("bn", 6, rng)}
    path = tmp_path / "dynamic.onnx"
    onnx.save(parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3, H, W] x) => (float[N, 6, H, W] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits), path)
    return path


@pytest.mark.parametrize("option", ["--atol", "--rtol"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1e-3"])
def test_tolerances_that_are_not_finite_or_are_negative_are_usage_errors(option: str, value: str, good: Path,
                                                                          broken: Path) -> None:
    result = run(["verify", str(good), str(broken), f"{option}={value}"])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_api_refuses_such_tolerances(value: float, good: Path, broken: Path) -> None:
    with pytest.raises(FoldnormError, match="finite number >= 0"):
        foldnorm.compare_models(good, broken, atol=value)
    with pytest.raises(FoldnormError, match="finite number >= 0"):
        foldnorm.compare_models(good, broken, rtol=value)
    with pytest.raises(FoldnormError, match="finite number >= 0"):
        compare.measure_error(np.ones(3), np.zeros(3), rtol=value)
    assert not foldnorm.compare_models(good, broken).ok  # the broken model is caught with sane tolerances


@pytest.mark.parametrize("args", [
    ["--shape", "x:1x3x40000x40000"],
    ["--batch-sizes", "1000000000", "--shape", "x:1x3x8x8"],
    ["--samples", "100000000", "--shape", "x:1x3x8x8"],
    ["--batch-sizes", "1,2,4", "--samples", "3000", "--shape", "x:1x3x512x512"],
], ids=["shape", "batch size", "samples", "all of them"])
def test_verification_inputs_over_the_budget_are_refused_before_anything_is_drawn(
        args: list[str], dynamic: Path, good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*a: object, **k: object) -> None:
        raise AssertionError("inputs were drawn")

    monkeypatch.setattr(compare, "make_feeds", never)
    result = run(["verify", str(dynamic), str(dynamic), *args])
    assert_user_error(result, "GiB", "over its 2 GiB limit")
    with pytest.raises(InputSpecError, match="GiB"):
        foldnorm.fold_file(good, None, batch_sizes=(10**9,))


def test_inputs_are_drawn_one_at_a_time(dynamic: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each draw is made when the model runs on it and freed after: never all of them at once."""
    real = compare.make_feeds
    alive: list[weakref.ref[np.ndarray]] = []
    most = 0

    def tracked(*args: object, **kwargs: object) -> dict[str, np.ndarray]:
        nonlocal most
        feeds = real(*args, **kwargs)  # type: ignore[arg-type]
        alive.extend(weakref.ref(a) for a in feeds.values())
        most = max(most, sum(r() is not None for r in alive))
        return feeds

    monkeypatch.setattr(compare, "make_feeds", tracked)
    result = foldnorm.compare_models(dynamic, dynamic, batch_sizes=(1, 2, 3), samples=4, shapes={"x": (1, 3, 8, 8)})
    assert result.ok and len(alive) == 2 * 12  # 12 draws for each model
    assert most <= 2


def test_bench_threads_are_bounded(good: Path) -> None:
    result = run(["bench", str(good), "--threads", "100000", "--iterations", "1"])
    assert result.exit_code == 2, result.output
    assert "4x the" in result.stderr and "Traceback" not in result.output
    with pytest.raises(InputSpecError, match="threads=100000"):
        foldnorm.benchmark(str(good), threads=100000)
    assert run(["bench", str(good), "--threads", "1", "--iterations", "1", "--warmup", "0",
                "--ort-opt", "disabled"]).exit_code == 0
