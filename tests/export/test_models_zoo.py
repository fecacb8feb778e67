"""Every built-in reference model: export (BN kept, GN/LN/IN kept), ORT equals torch, fold keeps outputs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from foldnorm.cli.main import cli
from foldnorm.models import REGISTRY, get_spec
from foldnorm.models.calibrate import calibrate
from torch import nn

from foldnorm import compare_models, export_onnx, fold_model
from foldnorm.export.exporter import ExportResult
from foldnorm.fold.normalizations import NormCounts, survey

pytestmark = pytest.mark.slow  # exports real PyTorch models


@dataclass(frozen=True)
class Expect:
    """What one model's export holds (normalizations by kind, as the classifier names them), and how many
    report records folding marks `folded` (a BN node, or one Mul/Add/Sub/Div of a hand-written or frozen BN)."""

    bn: int
    folded: int
    groupnorm: int = 0
    layernorm: int = 0
    instancenorm: int = 0

    @property
    def counts(self) -> NormCounts:
        return NormCounts(self.bn, self.groupnorm, self.layernorm, self.instancenorm)


EXPECTED: dict[str, Expect] = {
    # GroupNorm lowers to Reshape -> InstanceNormalization -> Reshape -> Mul -> Add at opset 18: still a GroupNorm.
    "resnet-bn": Expect(bn=9, folded=9, groupnorm=1),
    "resnet18-bn": Expect(bn=20, folded=20),
    "mobilenet-bn": Expect(bn=7, folded=7),
    "decoder-bn": Expect(bn=4, folded=4),
    "mlp-bn1d": Expect(bn=2, folded=2),
    "conv1d-bn": Expect(bn=2, folded=2),
    "conv3d-bn": Expect(bn=2, folded=2),
    "unet-gn": Expect(bn=0, folded=0, groupnorm=3),
    "transformer-ln": Expect(bn=0, folded=0, layernorm=3),
    # InstanceNorm2d(track_running_stats=True) exports as Tile'd stats -> Reshape -> BatchNormalization -> Reshape:
    # an InstanceNorm, never folded.
    "stylenet-in": Expect(bn=0, folded=0, instancenorm=3),
    # 2 BN after a Conv; bn_direct before the padding-free 1x1 Conv; 2 BN with no linear neighbour.
    "preact-bn": Expect(bn=5, folded=3),
    # Hand-written BN: Sub/Div/Sqrt/Mul/Add chains after Conv, Conv and Gemm; no BatchNormalization node.
    # Each of the 3 folds as 4 records (Sub, Mul, Div, Add); Sqrt is part of the constant.
    "scratch-bn": Expect(bn=0, folded=12),
    "frozen-bn": Expect(bn=0, folded=4),  # 2 frozen BNs, a Mul and an Add each
    "two-input-bn": Expect(bn=3, folded=3),  # two Conv-BN on the image input, Linear-BN1d on the feature input
}

# Legacy exports of these need a static batch (torch refuses InstanceNorm with running stats otherwise).
LEGACY_STATIC = {"stylenet-in"}


def test_every_registry_model_has_expectations() -> None:
    assert set(EXPECTED) == set(REGISTRY)


class ZooExports:
    """Each model built and exported (dynamo) once per test module, on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[str, tuple[nn.Module, ExportResult]] = {}

    def __getitem__(self, name: str) -> tuple[nn.Module, ExportResult]:
        if name not in self.done:
            spec = get_spec(name)
            module = spec.build()
            self.done[name] = module, export_onnx(module, spec.example_inputs(), self.root / f"{name}.onnx")
        return self.done[name]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> ZooExports:
    return ZooExports(tmp_path_factory.mktemp("zoo"))


def _norm_modules(module: nn.Module) -> NormCounts:
    """The module's normalization layers by kind: one node of that kind each in the export."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    return NormCounts(*(sum(isinstance(m, kind) for m in module.modules()) for kind in kinds))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_export_keeps_every_norm_and_matches_torch(name: str, exports: ZooExports) -> None:
    module, result = exports[name]
    expect = EXPECTED[name]
    model = onnx.load(result.path)
    onnx.checker.check_model(model, full_check=True)
    counts = survey(model)
    assert counts == expect.counts
    assert (result.batchnorm, result.protected) == (counts.batchnorm, counts.by_op())
    assert counts == _norm_modules(module)  # one node per normalization layer (BN written as tensor ops has none)
    assert result.ok, result.summary()
    assert [c.batch_size for c in result.checks] == [1, 2]
    assert result.max_rel < 1e-5
    inits = {t.name for t in model.graph.initializer}
    for node in model.graph.node:  # the dynamo Expand(Shape(W)) zero bias is gone: biases are initializers
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 2:
            assert node.input[2] in inits, f"{node.name}: bias computed at run time"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_fold_keeps_outputs(name: str, exports: ZooExports) -> None:
    _, result = exports[name]
    expect = EXPECTED[name]
    original = onnx.load(result.path)
    folded = fold_model(original)
    verdict = compare_models(original, folded.model)
    assert verdict.ok, verdict.summary()
    before, after = survey(original), survey(folded.model)
    assert (after.groupnorm, after.layernorm, after.instancenorm) == (before.groupnorm, before.layernorm,
                                                                      before.instancenorm)  # GN/LN/IN untouched
    # export, the fold report and verify's structure check count with the same classifier
    assert (result.batchnorm, result.protected) == (before.batchnorm, before.by_op())
    assert folded.report.norms == before
    assert folded.report.protected_kept == before.protected
    structure = verdict.structure
    assert structure is not None
    assert (structure.batchnorm_reference, structure.batchnorm_candidate) == (before.batchnorm, after.batchnorm)
    assert len(structure.protected) == before.protected
    after_conv = _bn_after_conv(original)
    folded_names = {r.node for r in folded.report.records if r.outcome == "folded"}
    assert after_conv <= folded_names, f"BN after a Conv left unfolded: {sorted(after_conv - folded_names)}"
    assert folded.report.folded == expect.folded
    assert after.batchnorm == expect.bn - sum(r.kind == "batchnorm" for r in folded.report.records
                                              if r.outcome == "folded")


def _bn_after_conv(model: onnx.ModelProto) -> set[str]:
    """BatchNormalization nodes whose input is the single use of a Conv output."""
    producer = {o: n for n in model.graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    found = set()
    for n in model.graph.node:
        src = producer.get(n.input[0]) if n.op_type == "BatchNormalization" else None
        if src is not None and src.op_type == "Conv" and uses[n.input[0]] == 1:
            found.add(n.name or n.output[0])
    return found


@pytest.mark.parametrize("name", list(REGISTRY))
def test_legacy_export(name: str, tmp_path: Path) -> None:
    spec = get_spec(name)
    result = export_onnx(spec.build(), spec.example_inputs(), tmp_path / "m.onnx", exporter="legacy",
                         dynamic_batch=name not in LEGACY_STATIC)
    assert result.ok, result.summary()
    assert survey(onnx.load(result.path)) == EXPECTED[name].counts
    assert result.batchnorm == EXPECTED[name].bn


def test_bn_statistics_are_calibrated_not_defaults() -> None:
    for name in ("resnet-bn", "mlp-bn1d", "scratch-bn"):
        module = get_spec(name).build()
        norms = [m for m in module.modules() if isinstance(getattr(m, "running_var", None), torch.Tensor)]
        assert norms
        for m in norms:
            assert not torch.allclose(m.running_mean, torch.zeros_like(m.running_mean))
            assert not torch.allclose(m.running_var, torch.ones_like(m.running_var))
            assert not torch.allclose(m.weight, torch.ones_like(m.weight))


def test_scratch_bn_updates_running_stats_with_momentum() -> None:
    spec = get_spec("scratch-bn")
    randomized = calibrate(spec.factory(), spec.input_shapes, steps=0)
    trained = calibrate(spec.factory(), spec.input_shapes, steps=4)
    assert not torch.allclose(randomized.bn1.running_mean, trained.bn1.running_mean)
    # eval uses the running statistics: the same input gives the same output twice
    (x,) = spec.example_inputs()
    with torch.no_grad():
        assert torch.equal(trained(x), trained(x))


def test_mobilenet_bn_eps() -> None:
    module = get_spec("mobilenet-bn").build()
    assert {m.eps for m in module.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}


def test_models_command_text_and_json() -> None:
    runner = CliRunner()
    text = runner.invoke(cli, ["models"])
    assert text.exit_code == 0
    for name in REGISTRY:
        assert name in text.output
    data = json.loads(runner.invoke(cli, ["models", "--format", "json"]).output)
    assert [d["name"] for d in data] == list(REGISTRY)
    assert data[0]["input_shapes"] == [list(shape) for shape in get_spec(data[0]["name"]).input_shapes]
    two = next(d for d in data if d["name"] == "two-input-bn")
    assert two["input_shapes"] == [[1, 3, 32, 32], [1, 6]]
    assert "1x3x32x32 1x6" in text.output
