"""fold_module: BN fused into Conv (any groups), ConvTranspose (groups > 1), Linear; refusals reported."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from foldnorm import fold_module  # noqa: E402


def randomize_bn(module: nn.Module, seed: int) -> nn.Module:
    """Random running stats AND affine params on every BN (defaults hide folding bugs)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            sign = torch.where(torch.rand(c, generator=g) < 0.5, -1.0, 1.0)
            with torch.no_grad():
                m.weight.copy_((torch.rand(c, generator=g) * 1.7 + 0.3) * sign)
                m.bias.copy_(torch.randn(c, generator=g) * 0.7)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.8)
                m.running_var.copy_(torch.rand(c, generator=g) * 2.8 + 0.2)
    return module.eval()


def assert_same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        want, got = a(x), b(x)
    assert torch.isfinite(got).all()
    scale = want.abs().max().item()
    assert (want - got).abs().max().item() <= 1e-5 * max(scale, 1.0)


def count_bn(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_any_groups(groups: int, bias: bool) -> None:
    model = randomize_bn(nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, groups=groups, bias=bias),
                                       nn.BatchNorm2d(12), nn.ReLU()), seed=groups)
    result = fold_module(model)
    assert count_bn(result.module) == 0
    assert [r.outcome for r in result.report.records] == ["folded"]
    assert_same(model, result.module, torch.randn(2, 8, 9, 9))
    assert count_bn(model) == 1, "the input module must not change"


@pytest.mark.parametrize(("groups", "out"), [(1, 9), (2, 8), (3, 9)])
def test_conv_transpose_groups(groups: int, out: int) -> None:
    model = randomize_bn(nn.Sequential(nn.ConvTranspose2d(6, out, 3, stride=2, groups=groups), nn.BatchNorm2d(out)),
                         seed=10 + groups)
    result = fold_module(model)
    assert count_bn(result.module) == 0
    assert_same(model, result.module, torch.randn(2, 6, 5, 5))


def test_linear_and_conv1d_need_shapes() -> None:
    model = randomize_bn(nn.Sequential(nn.Linear(10, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Unflatten(1, (7, 1)),
                                       nn.Conv1d(7, 5, 1), nn.BatchNorm1d(5)), seed=3)
    x = torch.randn(4, 10)
    without = fold_module(model)
    assert [r.outcome for r in without.report.records] == ["skipped", "skipped"]
    assert "example_inputs" in without.report.records[0].reason
    result = fold_module(model, example_inputs=[x])
    assert [r.outcome for r in result.report.records] == ["folded", "folded"]
    assert count_bn(result.module) == 0
    assert_same(model, result.module, x)


def test_linear_on_3d_input_is_refused() -> None:
    # BatchNorm1d on (N, L, F) normalizes axis 1 (L), not the Linear's features.
    model = randomize_bn(nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5)), seed=4)
    result = fold_module(model, example_inputs=[torch.randn(2, 5, 6)])
    assert result.report.records[0].outcome == "skipped"
    assert "rank 3" in result.report.records[0].reason


class Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.conv(x)))


class TwoConsumers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class ReusedBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x)) + self.bn(self.b(x))


class Aliased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(4, 4, 1)
        self.first, self.second = conv, conv
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.first(x)) + self.second(x)


class TiedWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.b.weight = self.a.weight
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x)) + self.b(x)


@pytest.mark.parametrize(("cls", "words"), [
    (Reused, "called 2 times"),
    (TwoConsumers, "2 consumers"),
    (ReusedBN, "called 2 times"),
    (Aliased, "called 2 times"),
    (TiedWeights, "shared"),
])
def test_refusals_keep_numbers(cls: type[nn.Module], words: str) -> None:
    model = randomize_bn(cls(), seed=7)
    result = fold_module(model)
    assert all(r.outcome == "skipped" for r in result.report.records)
    assert words in result.report.records[0].reason
    assert count_bn(result.module) == count_bn(model)
    assert_same(model, result.module, torch.randn(2, 4, 6, 6))


def test_no_running_stats_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    result = fold_module(model)
    assert result.report.records[0].outcome == "skipped"
    assert "track_running_stats" in result.report.records[0].reason


def test_untraceable_module_is_a_clear_error() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    from foldnorm.errors import FoldnormError

    with pytest.raises(FoldnormError, match=r"torch\.fx"):
        fold_module(Branchy())


def test_builtin_model_folds_every_bn() -> None:
    from foldnorm.models import get_spec

    spec = get_spec("resnet-bn")
    model = spec.build()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(spec.input_shapes[0]).astype(np.float32))
    result = fold_module(model, example_inputs=[x])
    assert count_bn(result.module) == 0
    assert result.report.folded == result.report.batchnorm_total > 0
    assert_same(model, result.module, x)


def test_import_foldnorm_does_not_load_torch() -> None:
    import subprocess
    import sys

    code = "import sys, foldnorm; foldnorm.fold_module; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=25, deadline=None)
@given(groups=st.sampled_from([1, 2, 3]), stride=st.integers(1, 2), dilation=st.integers(1, 2),
       bias=st.booleans(), transpose=st.booleans(), seed=st.integers(0, 10_000))
def test_property_conv_and_conv_transpose(groups: int, stride: int, dilation: int, bias: bool, transpose: bool,
                                          seed: int) -> None:
    torch.manual_seed(seed)
    cin, cout = 3 * groups, 2 * groups
    conv_cls = nn.ConvTranspose2d if transpose else nn.Conv2d
    conv = conv_cls(cin, cout, 3, stride=stride, dilation=dilation, groups=groups, bias=bias)
    model = randomize_bn(nn.Sequential(conv, nn.BatchNorm2d(cout)), seed=seed)
    result = fold_module(model)
    assert count_bn(result.module) == 0
    assert_same(model, result.module, torch.randn(2, cin, 7, 7))
