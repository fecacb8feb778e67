"""`verify --localize` and `foldnorm.verify.localize`: the first tensor where two models diverge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.builders import parse
from support.chains import blocks, conv_stack, corrupt_conv

import foldnorm
from foldnorm.verify.compare import compare_models, verification_draws
from foldnorm.verify.localize import localize


@pytest.fixture
def corrupted(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    ref = conv_stack(rng, 6)
    folded = foldnorm.fold_model(ref).model
    onnx.save(ref, tmp_path / "ref.onnx")
    onnx.save(corrupt_conv(folded, "/block3/conv/Conv"), tmp_path / "bad.onnx")
    return tmp_path / "ref.onnx", tmp_path / "bad.onnx"


def test_localize_names_the_corrupted_conv(corrupted: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(cli, ["verify", str(corrupted[0]), str(corrupted[1]), "--localize"])
    assert result.exit_code == 3, result.output
    assert "localize: first divergence at tensor 'b3'" in result.stdout
    assert "candidate node: /block3/conv/Conv (Conv)" in result.stdout
    assert "reference node: /block3/bn/BatchNormalization (BatchNormalization)" in result.stdout
    assert "module: block3.conv" in result.stdout
    assert "input r2: max abs" in result.stdout and "(ok)" in result.stdout  # the conv's input still agrees


def test_localize_json(corrupted: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(cli, ["verify", str(corrupted[0]), str(corrupted[1]), "--localize", "--format",
                                      "json", "--samples", "2"])
    assert result.exit_code == 3
    loc = json.loads(result.stdout)["localization"]
    assert (loc["tensor"], loc["candidate_op"], loc["reference_op"]) == ("b3", "Conv", "BatchNormalization")
    assert loc["error"]["ok"] is False and loc["error"]["max_rel"] > 1e-2
    assert loc["error"]["total"] == 2 * (1 + 2) * 4 * 6 * 6  # every sample of every batch size
    (tensor_input,) = [i for i in loc["inputs"] if i["kind"] == "tensor"]
    assert tensor_input["name"] == "r2" and tensor_input["error"]["ok"] is True


def test_search_in_several_rounds_finds_the_first_divergence(tmp_path: Path, rng: np.random.Generator) -> None:
    ref = conv_stack(rng, 24)
    bad = corrupt_conv(foldnorm.fold_model(ref).model, "/block17/conv/Conv")
    feeds = verification_draws(ref)
    found = localize(ref, bad, ["y"], feeds, feeds, tmp_path, chunk=3)
    assert found.tensor == "b17" and found.candidate_node == "/block17/conv/Conv"
    assert found.rounds > 2  # 24 * 3 tensors searched 3 at a time
    assert found.error is not None and not found.error.ok


def test_a_branch_beside_the_divergence_does_not_mislead(tmp_path: Path, rng: np.random.Generator) -> None:
    arrays: dict[str, np.ndarray] = {}
    first, a_out = blocks(rng, 8, 4, arrays, "a")
    second, b_out = blocks(rng, 8, 4, arrays, "b")  # computed after branch a in the graph's order
    ref = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {{
        {chr(10).join(first + second)}
        y = Add ({a_out}, {b_out})
    }}
    """, arrays)
    folded = foldnorm.fold_model(ref).model
    conv = next(n for n in folded.graph.node if n.output[0] == "ba5")
    conv.name = "/a5/conv/Conv"
    feeds = verification_draws(ref)
    for chunk in (2, 3, 5, 32):
        found = localize(ref, corrupt_conv(folded, "/a5/conv/Conv"), ["y"], feeds, feeds, tmp_path, chunk=chunk)
        assert found.tensor == "ba5", chunk


def test_equivalent_models_localize_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    ref = conv_stack(rng, 3)
    result = compare_models(ref, foldnorm.fold_model(ref).model, localize_failure=True)
    assert result.ok and result.localization is None


def test_models_sharing_no_tensor_name_say_so(tmp_path: Path, rng: np.random.Generator) -> None:
    ref = conv_stack(rng, 2)
    bad = corrupt_conv(foldnorm.fold_model(ref).model, "/block0/conv/Conv")
    renamed = {out: f"other_{out}" for node in bad.graph.node for out in node.output if out != "y"}
    for node in bad.graph.node:  # rename every intermediate tensor
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    result = compare_models(ref, bad, localize_failure=True)
    assert not result.ok and result.localization is not None
    assert result.localization.tensor == "y"  # only the output is computed by both
