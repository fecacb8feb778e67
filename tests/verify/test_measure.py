"""measure_error gives the float64 numbers exactly, though narrow arrays are compared mostly in float32."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from foldnorm.verify.measure import measure_error


def in_float64(ref: np.ndarray, cand: np.ndarray, rtol: float, atol: float) -> tuple[float, float, int, int]:
    """The definition, element by element in float64: the oracle."""
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    introduced = int(np.count_nonzero(np.isfinite(r) & ~np.isfinite(c)))
    both = np.isfinite(r) & np.isfinite(c)
    if not both.any():
        return 0.0, 0.0, introduced, introduced
    diff = np.abs(c[both] - r[both])
    scale = float(np.abs(r[both]).max())
    max_abs = float(diff.max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, max_rel, int(np.count_nonzero(diff > atol + rtol * scale)) + introduced, introduced


def near_limit(rng: np.random.Generator, rtol: float, atol: float, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """float32 pairs whose differences sit within a few float32 ulps of the tolerance, on both sides."""
    limit = atol + rtol * 3.0
    # half of them small (then the float32 difference is rounded: the values are far apart in magnitude)
    ref = np.where(rng.random(n) < 0.5, rng.uniform(-3, 3, n), rng.uniform(-0.3, 0.3, n) * limit).astype(np.float32)
    ref[0] = 3.0  # the scale
    steps = rng.integers(-6, 7, n)
    delta = limit * (1 + steps * 2.0 ** -23) * rng.choice([-1, 1], n)
    return ref, (ref.astype(np.float64) + delta).astype(np.float32)


@pytest.mark.parametrize("rtol, atol", [(1e-4, 1e-6), (1e-2, 0.0), (0.0, 1e-3), (3e-7, 1e-9)])
def test_differences_at_the_tolerance_are_decided_as_in_float64(rng: np.random.Generator, rtol: float,
                                                                atol: float) -> None:
    ref, cand = near_limit(rng, rtol, atol)
    expected = in_float64(ref, cand, rtol, atol)
    naive = int(np.count_nonzero(np.abs(cand - ref) > np.float32(atol + rtol * 3.0)))
    assert naive != expected[2]  # float32 alone would count differently here
    assert 0 < expected[2] < ref.size
    assert measure_error(ref, cand, rtol, atol) == expected


def test_the_largest_difference_is_the_float64_one(rng: np.random.Generator) -> None:
    ref = rng.uniform(1, 2, 1000).astype(np.float32)
    cand = ref.copy()
    # differences of 1 ulp at different exponents: the same float32 difference, different exact ones
    big = rng.choice(1000, 50, replace=False)
    cand[big] = np.nextafter(ref[big], np.float32(np.inf))
    ref[:3] = np.float32([1e-8, -2e-8, 3e-9])
    cand[:3] = ref[:3] + np.float32(1.1920929e-07)
    for rtol, atol in [(1e-4, 1e-6), (0.0, 0.0)]:
        assert measure_error(ref, cand, rtol, atol) == in_float64(ref, cand, rtol, atol)


@pytest.mark.parametrize("case", ["equal", "zeros", "nan", "inf", "overflow", "tiny", "fp16", "bf16", "mixed",
                                  "float64", "int"])
def test_every_kind_of_pair_matches_float64(rng: np.random.Generator, case: str) -> None:
    ref = rng.normal(0, 1, (3, 50)).astype(np.float32)
    cand = (ref + rng.normal(0, 1e-5, ref.shape)).astype(np.float32)
    rtol, atol = 1e-4, 1e-6
    if case == "equal":
        cand = ref.copy()
    elif case == "zeros":
        ref = np.zeros_like(ref)
    elif case == "nan":
        ref[0, 1], cand[1, 2], cand[2, 3] = np.nan, np.nan, np.inf
    elif case == "inf":
        ref[0, 0] = cand[0, 0] = np.inf
    elif case == "overflow":
        ref[0, 0], cand[0, 0] = np.float32(3e38), np.float32(-3e38)
    elif case == "tiny":
        ref, cand, rtol, atol = ref * np.float32(1e-36), cand * np.float32(1e-36), 1e-4, 0.0
    elif case == "fp16":
        ref, cand = ref.astype(np.float16), cand.astype(np.float16)
    elif case == "bf16":
        ref, cand = ref.astype(ml_dtypes.bfloat16), cand.astype(ml_dtypes.bfloat16)
    elif case == "mixed":
        cand = cand.astype(np.float16)
    elif case == "float64":
        ref, cand = ref.astype(np.float64), cand.astype(np.float64) + 1e-12
    elif case == "int":
        ref, cand, rtol, atol = rng.integers(0, 5, 40), rng.integers(0, 5, 40), 0.0, 0.0
    assert measure_error(ref, cand, rtol, atol) == in_float64(ref, cand, rtol, atol)


def test_random_pairs_match_float64(rng: np.random.Generator) -> None:
    for _ in range(200):
        n = int(rng.integers(1, 300))
        scale = float(10.0 ** rng.uniform(-20, 20))
        ref = (rng.normal(0, scale, n)).astype(np.float32)
        noise = rng.normal(0, scale * 10.0 ** rng.uniform(-8, -1), n)
        cand = (ref + noise * (rng.random(n) < 0.5)).astype(np.float32)
        rtol, atol = float(10.0 ** rng.uniform(-8, -1)), float(rng.choice([0.0, scale * 1e-6]))
        assert measure_error(ref, cand, rtol, atol) == in_float64(ref, cand, rtol, atol)
