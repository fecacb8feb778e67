"""Verification data on disk: .npz and Polygraphy JSON inputs and outputs, data-loader scripts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from foldnorm.cli.main import cli
from support.builders import conv_bn
from support.fold_helpers import saved_pair

import foldnorm
from foldnorm.errors import InputSpecError
from foldnorm.verify.data import read_feeds, write_feeds, write_outputs


@pytest.fixture
def pair(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    return saved_pair(conv_bn(rng), tmp_path)


def verify(pair: tuple[Path, Path], *args: str) -> Result:
    result = CliRunner().invoke(cli, ["verify", str(pair[0]), str(pair[1]), "--format", "json", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_saved_inputs_round_trip(pair: tuple[Path, Path], tmp_path: Path, suffix: str) -> None:
    saved = tmp_path / f"inputs{suffix}"
    first = json.loads(verify(pair, "--batch-sizes", "1,3", "--samples", "2", "--save-inputs", str(saved)).stdout)
    feeds = read_feeds(saved)
    assert [f["x"].shape[0] for f in feeds] == [1, 1, 3, 3] and all(f["x"].dtype == np.float32 for f in feeds)
    again = json.loads(verify(pair, "--inputs", str(saved)).stdout)
    assert again["max_abs"] == first["max_abs"] > 0  # the very same numbers ran
    assert again["outputs"][0]["total"] == first["outputs"][0]["total"]
    assert again["inputs"] == str(saved)


def test_one_feed_npz_is_plain_names(tmp_path: Path, rng: np.random.Generator) -> None:
    x = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    write_feeds(tmp_path / "one.npz", [{"x": x}])
    with np.load(tmp_path / "one.npz") as npz:
        assert npz.files == ["x"]
    (feed,) = read_feeds(tmp_path / "one.npz")
    np.testing.assert_array_equal(feed["x"], x)


def test_saved_outputs(pair: tuple[Path, Path], tmp_path: Path) -> None:
    verify(pair, "--save-outputs", str(tmp_path / "out.npz"), "--batch-sizes", "1,2")
    with np.load(tmp_path / "out.npz") as npz:
        assert sorted(npz.files) == ["candidate/0/y", "candidate/1/y", "reference/0/y", "reference/1/y"]
        assert npz["reference/1/y"].shape == (2, 6, 8, 8)
        assert 0 < np.max(np.abs(npz["reference/1/y"] - npz["candidate/1/y"])) < 1e-4


def test_data_loader_script(pair: tuple[Path, Path], tmp_path: Path) -> None:
    script = tmp_path / "loader.py"
    script.write_text("import numpy as np\n\ndef batches():\n    for n in (1, 5):\n"
                      "        yield {'x': np.full((n, 4, 8, 8), 0.5, dtype=np.float32)}\n")
    data = json.loads(verify(pair, "--data-loader-script", f"{script}:batches").stdout)
    assert data["batch_sizes"] == [1, 5] and data["inputs"] == f"{script}:batches"
    missing = CliRunner().invoke(cli, ["verify", str(pair[0]), str(pair[1]), "--data-loader-script",
                                       f"{script}:load_data"])
    assert missing.exit_code == 1 and "defines no function 'load_data'" in missing.stderr


def test_bad_data_files_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"not": "feeds"}')
    with pytest.raises(InputSpecError, match="list of feed dicts"):
        read_feeds(tmp_path / "bad.json")
    with pytest.raises(InputSpecError, match=r"\.npz or \.json"):
        write_feeds(tmp_path / "x.txt", [])


def test_polygraphy_reads_and_writes_the_same_json(pair: tuple[Path, Path], tmp_path: Path,
                                                   rng: np.random.Generator) -> None:
    polygraphy_json = pytest.importorskip("polygraphy.json")
    from polygraphy.comparator import RunResults

    feeds = [{"x": rng.normal(size=(n, 4, 8, 8)).astype(np.float32)} for n in (1, 2)]
    polygraphy_json.save_json(feeds, str(tmp_path / "theirs.json"))  # what polygraphy run --save-inputs does
    ours = read_feeds(tmp_path / "theirs.json")
    assert len(ours) == 2 and all(np.array_equal(a["x"], b["x"]) for a, b in zip(ours, feeds))
    assert json.loads(verify(pair, "--inputs", str(tmp_path / "theirs.json")).stdout)["batch_sizes"] == [1, 2]

    write_feeds(tmp_path / "ours.json", feeds)
    theirs = polygraphy_json.load_json(str(tmp_path / "ours.json"))
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(theirs, feeds))

    write_outputs(tmp_path / "out.json", ["y"], {"reference": [[feeds[0]["x"]]], "candidate": [[feeds[1]["x"]]]})
    results = RunResults.load(str(tmp_path / "out.json"))
    assert list(results.keys()) == ["reference", "candidate"]
    np.testing.assert_array_equal(results["candidate"][0]["y"], feeds[1]["x"])


def test_inputs_saved_by_polygraphy_run(tmp_path: Path, rng: np.random.Generator) -> None:
    pytest.importorskip("polygraphy")
    pytest.importorskip("onnxruntime")
    import subprocess
    import sys

    program = Path(sys.executable).parent / "polygraphy"
    if not program.exists():
        pytest.skip("the polygraphy command is not installed beside this Python")
    ref = conv_bn(rng, outputs="float[2, 6, 8, 8] y")
    ref.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # polygraphy's default loader wants static dims
    onnx.save(ref, tmp_path / "ref.onnx")
    foldnorm.save_model(foldnorm.fold_model(ref).model, tmp_path / "cand.onnx")
    subprocess.run([str(program), "run", str(tmp_path / "ref.onnx"), "--onnxrt", "--save-inputs",
                    str(tmp_path / "in.json")], check=True, capture_output=True, timeout=300)
    data = json.loads(verify((tmp_path / "ref.onnx", tmp_path / "cand.onnx"), "--inputs",
                             str(tmp_path / "in.json")).stdout)
    assert data["ok"] and data["batch_sizes"] == [2] and data["max_abs"] > 0
