"""The fold maths against PyTorch itself: conv/conv-transpose followed by inference batch_norm."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from foldnorm.fold.bn_math import batchnorm_affine, emit, fold_conv, fold_conv_transpose  # noqa: E402


def random_bn(channels: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    gamma = torch.rand(channels, generator=gen) * 2 - 1
    beta = torch.randn(channels, generator=gen)
    mean = torch.randn(channels, generator=gen)
    var = torch.rand(channels, generator=gen) * 3 + 0.05
    return gamma, beta, mean, var


def rel_err(expected: torch.Tensor, got: torch.Tensor) -> float:
    return float((expected - got).abs().max() / expected.abs().max())


@pytest.mark.parametrize(("groups", "bias"), [(1, True), (1, False), (3, True), (6, False)])
def test_conv_fold_matches_torch(groups: int, bias: bool) -> None:
    gen = torch.Generator().manual_seed(groups * 10 + bias)
    cin, cout, eps = 6, 12, 1e-3
    w = torch.randn(cout, cin // groups, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(cout, generator=gen, dtype=torch.float64) if bias else None
    gamma, beta, mean, var = (t.double() for t in random_bn(cout, gen))
    x = torch.randn(2, cin, 9, 9, generator=gen, dtype=torch.float64)
    expected = F.batch_norm(F.conv2d(x, w, b, padding=1, groups=groups), mean, var, gamma, beta, False, 0.0, eps)
    affine = batchnorm_affine(gamma.numpy(), beta.numpy(), mean.numpy(), var.numpy(), eps)
    w2, b2 = fold_conv(w.numpy(), None if b is None else b.numpy(), affine)
    got = F.conv2d(x, torch.from_numpy(w2), torch.from_numpy(b2), padding=1, groups=groups)
    assert rel_err(expected, got) < 1e-12


@pytest.mark.parametrize(("groups", "cin", "cout"), [(1, 4, 6), (2, 4, 6), (4, 8, 4), (3, 6, 9)])
def test_conv_transpose_fold_matches_torch(groups: int, cin: int, cout: int) -> None:
    gen = torch.Generator().manual_seed(groups + cin + cout)
    w = torch.randn(cin, cout // groups, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(cout, generator=gen, dtype=torch.float64)
    gamma, beta, mean, var = (t.double() for t in random_bn(cout, gen))
    x = torch.randn(2, cin, 5, 5, generator=gen, dtype=torch.float64)
    expected = F.batch_norm(F.conv_transpose2d(x, w, b, stride=2, groups=groups), mean, var, gamma, beta,
                            False, 0.0, 1e-5)
    affine = batchnorm_affine(gamma.numpy(), beta.numpy(), mean.numpy(), var.numpy(), 1e-5)
    w2, b2 = fold_conv_transpose(w.numpy(), b.numpy(), affine, groups)
    got = F.conv_transpose2d(x, torch.from_numpy(w2), torch.from_numpy(b2), stride=2, groups=groups)
    assert rel_err(expected, got) < 1e-12


def test_emit_refuses_fp16_overflow_and_underflow() -> None:
    ok, problem = emit(np.array([[1.0, 2.0], [3.0, 4.0]]), np.dtype(np.float16))
    assert problem is None and ok is not None and ok.dtype == np.float16
    _, problem = emit(np.array([[1e6, 1.0]]), np.dtype(np.float16))
    assert problem is not None and "exceeds" in problem
    _, problem = emit(np.array([[1.0, 2.0], [1e-9, 3e-9]]), np.dtype(np.float16))
    assert problem is not None and "underflows" in problem
    _, problem = emit(np.array([np.inf]), np.dtype(np.float32))
    assert problem is not None and "not finite" in problem
