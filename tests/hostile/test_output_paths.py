"""Item 4: outputs never replace an input, another output, or anything that is not a regular file; every OS
error is one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from support.builders import conv_bn
from support.cli import assert_user_error, run, snapshot
from support.hostile import save_external

import foldnorm
from foldnorm.errors import OutputPathError

LONG = "x" * 300


@pytest.fixture
def external(tmp_path: Path, rng: np.random.Generator) -> Path:
    return save_external(conv_bn(rng, cin=3), tmp_path / "e.onnx")


def _refused(args: list[str], tmp_path: Path, named: Path | str, needle: str) -> None:
    before = snapshot(tmp_path)
    assert_user_error(run([str(a) for a in args]), named, needle)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("report", ["input", "output", "input data", "symlink to input"])
def test_report_never_replaces_an_input_or_the_output(report: str, tmp_path: Path, external: Path) -> None:
    out = tmp_path / "out.onnx"
    path = {"input": external, "output": out, "input data": tmp_path / "e.onnx.data",
            "symlink to input": tmp_path / "link.json"}[report]
    if report == "symlink to input":
        path.symlink_to(external)
    _refused(["fold", external, "-o", out, "--report", path], tmp_path, path, "would overwrite")


def test_report_is_not_the_input_in_place_either(tmp_path: Path, good: Path) -> None:
    _refused(["fold", good, "--in-place", "--report", good], tmp_path, good, "would overwrite")


def test_output_data_file_never_replaces_the_input_data(tmp_path: Path, rng: np.random.Generator) -> None:
    """a.onnx keeps its weights in b.onnx.data; `-o b.onnx` would write b.onnx.data over them."""
    onnx.save(conv_bn(rng, cin=3), tmp_path / "a.onnx", save_as_external_data=True, location="b.onnx.data",
              size_threshold=0)
    _refused(["fold", tmp_path / "a.onnx", "-o", tmp_path / "b.onnx"], tmp_path, tmp_path / "b.onnx.data",
             "would overwrite the input's data file")


@pytest.mark.parametrize("which", ["-o", "--report", "-o's data file"])
@pytest.mark.parametrize("kind", ["fifo", "symlink to /dev/null", "directory"])
def test_an_existing_non_file_is_never_replaced(which: str, kind: str, tmp_path: Path, external: Path) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    target = {"-o": out, "--report": report, "-o's data file": tmp_path / "out.onnx.data"}[which]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    else:
        target.symlink_to("/dev/null")
    _refused(["fold", external, "-o", out, "--report", report], tmp_path, target,
             "is a directory" if kind == "directory" else "not a regular file")
    assert Path("/dev/null").is_char_device()


@pytest.mark.parametrize("args", [
    ["fold", "{m}", "-o", "{d}/" + LONG + ".onnx"],
    ["fold", "{m}", "-o", "{d}/o.onnx", "--report", "{d}/" + LONG + ".json"],
    ["fold", "{d}/" + LONG + ".onnx", "-o", "{d}/o.onnx"],
    ["inspect", "{d}/" + LONG + ".onnx"],
    ["verify", "{m}", "{d}/" + LONG + ".onnx"],
    ["bench", "{m}", "-o", "{d}/" + LONG, "--iterations", "1"],
    ["fold", "{m}", "-o", "{d}/" + LONG + "/o.onnx"],
], ids=["-o", "--report", "fold input", "inspect input", "verify input", "bench -o", "-o directory"])
def test_name_too_long_is_one_line(args: list[str], tmp_path: Path, good: Path) -> None:
    result = run([a.format(m=good, d=tmp_path) for a in args])
    assert_user_error(result, LONG, "too long")


def test_a_name_that_fits_is_written_even_when_a_temp_name_would_not(tmp_path: Path, external: Path) -> None:
    """A 250-character output name: temporary names must not be derived from it."""
    out = tmp_path / ("y" * 240 + ".onnx")
    result = run(["fold", str(external), "-o", str(out), "--no-verify"])
    assert result.exit_code == 0, result.output
    assert out.is_file()


@pytest.mark.parametrize("blocker", ["fifo", "model data"])
def test_bench_files_never_replace_the_model_or_a_non_file(blocker: str, tmp_path: Path,
                                                         rng: np.random.Generator) -> None:
    results = tmp_path / "results"
    results.mkdir()
    if blocker == "fifo":
        os.mkfifo(results / "bench.json")
        named = results / "bench.json"
        model = results / "m.onnx"
        onnx.save(conv_bn(rng, cin=3), model)
    else:
        model = results / "m.onnx"
        onnx.save(conv_bn(rng, cin=3), model, save_as_external_data=True, location="bench.txt", size_threshold=0)
        named = results / "bench.txt"
    before = snapshot(tmp_path)
    result = run(["bench", str(model), "-o", str(results), "--iterations", "1", "--warmup", "0"])
    assert_user_error(result, named, "not a regular file" if blocker == "fifo" else "would overwrite")
    assert result.stdout == ""  # refused before any timing
    assert snapshot(tmp_path) == before


def test_directory_report_never_replaces_an_input_or_output(tmp_path: Path, rng: np.random.Generator) -> None:
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    onnx.save(conv_bn(rng, cin=3), src / "a.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    for report in (src / "a.onnx", dst / "a.onnx", src / "w.bin", dst / "a.onnx.data"):
        _refused(["fold", src, "-o", dst, "--report", report, "--jobs", "2"], tmp_path, report, "would overwrite")


def test_api_checks_other_outputs_and_save_model_refuses_a_fifo(tmp_path: Path, good: Path) -> None:
    with pytest.raises(OutputPathError, match="would overwrite the input"):
        foldnorm.fold_file(good, tmp_path / "o.onnx", other_outputs=[good])
    os.mkfifo(tmp_path / "pipe.onnx")
    with pytest.raises(OutputPathError, match="not a regular file"):
        foldnorm.save_model(onnx.load(good), tmp_path / "pipe.onnx")
    assert not (tmp_path / "o.onnx").exists()
