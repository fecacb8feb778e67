"""How far a candidate array is from a reference array: element-wise tolerances and task-level metrics.

Element-wise: `max_abs = max |candidate - reference|`, `max_rel = max_abs / max |reference|` (relative to the
reference's scale, so near-zero elements do not blow it up); an element is out of tolerance when
`|candidate - reference| > atol + rtol * max |reference|`, and a NaN or Inf where the reference is finite
("introduced") always is. The numbers are those of a float64 computation, whatever the two dtypes (fp32 against
fp16 too); narrow arrays get there mostly in float32 (`measure_error`).

Task-level (`Metric`): `top1` and `topk:K` ask that every row (the last axis) has the same top-K class set;
`cosine` that every sample (axis 0) has a cosine similarity of at least `min_cosine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from foldnorm.errors import InputSpecError

# Default tolerances by dtype: (rtol, atol).
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-9, 1e-12),
    "float32": (1e-4, 1e-6),
    "float16": (1e-2, 1e-3),
    "bfloat16": (5e-2, 1e-2),
}

#: The default `--min-cosine`.
MIN_COSINE = 0.999

MetricName = Literal["max-rel", "topk", "cosine"]


def tolerances_for(dtype: np.dtype, rtol: float | None, atol: float | None) -> tuple[float, float]:
    """The (rtol, atol) to use for an output of `dtype`, with user overrides (finite numbers >= 0)."""
    check_tolerances(rtol, atol)
    default_rtol, default_atol = DEFAULT_TOLERANCES.get(np.dtype(dtype).name, (0.0, 0.0))
    return (default_rtol if rtol is None else rtol), (default_atol if atol is None else atol)


def check_tolerances(rtol: float | None, atol: float | None) -> None:
    """Raise `InputSpecError` unless each given tolerance is a finite number >= 0 (NaN would pass anything)."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InputSpecError(f"{name}={value}: a tolerance is a finite number >= 0; give e.g. {name}=1e-4")


def is_float(dtype: np.dtype) -> bool:
    """Whether `dtype` is a floating type (bfloat16 from ml_dtypes included)."""
    return np.dtype(dtype).name in DEFAULT_TOLERANCES or np.issubdtype(dtype, np.floating)


def measure_error(
    reference: np.ndarray, candidate: np.ndarray, rtol: float | None = None, atol: float | None = None
) -> tuple[float, float, int, int]:
    """`(max_abs, max_rel, mismatched, nonfinite_introduced)` of `candidate` against `reference`.

    A tolerance left as None is the default for the reference's dtype (`tolerances_for`). The numbers are those
    of the float64 computation; arrays of 32 bits or fewer are compared in float32 first (`_in_float32`), and
    only the elements whose float32 difference could decide a result differently are widened.
    """
    rtol, atol = tolerances_for(np.asarray(reference).dtype, rtol, atol)
    ref, cand = np.asarray(reference), np.asarray(candidate)
    if ref.shape != cand.shape:
        return float("inf"), float("inf"), int(max(ref.size, cand.size)), 0
    quick = _in_float32(ref, cand, rtol, atol)
    return quick if quick is not None else _in_float64(ref, cand, rtol, atol)


def _in_float64(reference: np.ndarray, candidate: np.ndarray, rtol: float, atol: float
                ) -> tuple[float, float, int, int]:
    """`measure_error` computed in float64 throughout (arrays of the same shape)."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    ref_finite = np.isfinite(ref)
    introduced = int(np.count_nonzero(ref_finite & ~np.isfinite(cand)))
    both = ref_finite & np.isfinite(cand)
    if not np.any(both):
        return 0.0, 0.0, introduced, introduced
    diff = np.abs(cand[both] - ref[both])
    scale = float(np.max(np.abs(ref[both])))
    max_abs = float(np.max(diff))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    mismatched = int(np.count_nonzero(diff > atol + rtol * scale)) + introduced
    return max_abs, max_rel, mismatched, introduced


def _in_float32(ref: np.ndarray, cand: np.ndarray, rtol: float, atol: float) -> tuple[float, float, int, int] | None:
    """`measure_error` for two arrays that float32 holds exactly (float32, float16, bfloat16, float8), computed
    mostly in float32; None when float64 must decide (a NaN or Inf, a difference past float32's range).

    Float32 and float64 subtraction both round the exact difference correctly, and rounding is monotonic: the
    element of the largest float64 difference is among those of the largest float32 difference, a float32
    difference below the largest float32 at most the tolerance comes from an exact one below it, one above the
    smallest float32 over the tolerance from an exact one over that float32. Only the elements between those two
    float32 values (and of the largest difference) are widened; the results are the float64 ones exactly.
    """
    if not (_narrow(ref.dtype) and _narrow(cand.dtype)) or ref.size == 0:
        return None
    r, c = ref.astype(np.float32, copy=False), cand.astype(np.float32, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        diff = np.subtract(c, r)
    np.abs(diff, out=diff)
    top = diff.max()
    if not np.isfinite(top):  # a NaN or Inf in either array, or a difference past float32's range
        return None
    scale = float(max(r.max(), -r.min()))
    limit = atol + rtol * scale
    if top == 0:  # equal arrays (a float difference is zero only between equal values)
        return 0.0, 0.0, 0, 0
    widest = diff == top
    max_abs = float(np.max(np.abs(c[widest].astype(np.float64) - r[widest])))
    max_rel = max_abs / scale if scale > 0 else float("inf")
    if limit == 0:
        return max_abs, max_rel, int(np.count_nonzero(diff)), 0
    low, high = _float32_at_most(limit), _float32_over(limit)
    if top < low:
        return max_abs, max_rel, 0, 0
    mismatched = int(np.count_nonzero(diff > high))
    if int(np.count_nonzero(diff >= low)) > mismatched:  # differences near the tolerance: decided in float64
        near = (diff >= low) & (diff <= high)
        mismatched += int(np.count_nonzero(np.abs(c[near].astype(np.float64) - r[near]) > limit))
    return max_abs, max_rel, mismatched, 0


def _narrow(dtype: np.dtype) -> bool:
    """Whether float32 holds every value of `dtype` exactly (a float type of at most 32 bits)."""
    return is_float(dtype) and np.dtype(dtype).itemsize <= 4


def _float32_at_most(value: float) -> np.float32:
    """The largest float32 at most `value` (> 0)."""
    with np.errstate(over="ignore"):
        near = np.float32(value)
    return near if float(near) <= value else np.nextafter(near, np.float32(0))


def _float32_over(value: float) -> np.float32:
    """The smallest float32 over `value` (> 0; inf past float32's range)."""
    with np.errstate(over="ignore"):
        near = np.float32(value)
    return near if float(near) > value else np.nextafter(near, np.float32(np.inf))


@dataclass
class ErrorStats:
    """Errors of one tensor accumulated over several runs (batch sizes, samples)."""

    name: str
    dtype: str
    rtol: float
    atol: float
    max_abs: float = 0.0
    max_rel: float = 0.0
    mismatched: int = 0
    total: int = 0
    nonfinite_introduced: int = 0

    @classmethod
    def for_dtype(cls, name: str, dtype: np.dtype, rtol: float | None, atol: float | None) -> ErrorStats:
        """Empty statistics with the tolerances of `dtype` (user overrides win)."""
        r, a = tolerances_for(dtype, rtol, atol)
        return cls(name, np.dtype(dtype).name, r, a)

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Fold one run's pair of arrays into the statistics."""
        max_abs, max_rel, bad, introduced = measure_error(reference, candidate, self.rtol, self.atol)
        self.max_abs, self.max_rel = max(self.max_abs, max_abs), max(self.max_rel, max_rel)
        self.mismatched += bad
        self.nonfinite_introduced += introduced
        self.total += int(np.asarray(reference).size)

    @property
    def ok(self) -> bool:
        """Within tolerance and no NaN/Inf that the reference does not have."""
        return self.mismatched == 0 and self.nonfinite_introduced == 0


@dataclass(frozen=True)
class Metric:
    """What "the same output" means: element-wise `max-rel` (the default), `topk` with `k`, or `cosine`."""

    name: MetricName = "max-rel"
    k: int = 1
    min_cosine: float = MIN_COSINE

    @classmethod
    def parse(cls, text: str, min_cosine: float = MIN_COSINE) -> Metric:
        """`max-rel`, `top1`, `topk:K` or `cosine` (a malformed one raises `InputSpecError`)."""
        value = text.strip().lower()
        if value in ("max-rel", "cosine"):
            return cls("max-rel" if value == "max-rel" else "cosine", min_cosine=min_cosine)
        if value == "top1":
            return cls("topk", 1)
        head, _, k = value.partition(":")
        if head == "topk" and k.isdigit() and int(k) > 0:
            return cls("topk", int(k))
        raise InputSpecError(f"metric {text!r} is not one of max-rel, top1, topk:K (K a positive integer), cosine")

    @property
    def label(self) -> str:
        """The metric as the user writes it."""
        if self.name == "topk":
            return "top1" if self.k == 1 else f"topk:{self.k}"
        return self.name

    @property
    def elementwise(self) -> bool:
        """Whether the verdict comes from the element-wise tolerance."""
        return self.name == "max-rel"

    def score(self, reference: np.ndarray, candidate: np.ndarray) -> float:
        """Top-K agreement (fraction of rows with the same top-K set) or the smallest per-sample cosine."""
        ref = np.asarray(reference, dtype=np.float64)
        cand = np.asarray(candidate, dtype=np.float64)
        if ref.shape != cand.shape or ref.size == 0:
            return 0.0 if ref.shape != cand.shape else 1.0
        if self.name == "topk":
            return _topk_agreement(ref, cand, self.k)
        return _min_cosine(ref, cand)

    def passes(self, score: float) -> bool:
        """Whether a score from `score` (the worst over all runs) is good enough."""
        return score >= (1.0 if self.name == "topk" else self.min_cosine)


def _topk_agreement(ref: np.ndarray, cand: np.ndarray, k: int) -> float:
    classes = ref.shape[-1] if ref.ndim else 1
    if k > classes:
        raise InputSpecError(f"--metric topk:{k} asks for more classes than the output's last axis has ({classes})")
    rows_ref, rows_cand = ref.reshape(-1, classes), cand.reshape(-1, classes)
    top_ref = np.sort(np.argsort(-rows_ref, axis=1, kind="stable")[:, :k], axis=1)
    top_cand = np.sort(np.argsort(-rows_cand, axis=1, kind="stable")[:, :k], axis=1)
    return float(np.mean(np.all(top_ref == top_cand, axis=1)))


def _min_cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    rows = ref.shape[0] if ref.ndim > 1 else 1
    a, b = ref.reshape(rows, -1), cand.reshape(rows, -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    cosine = np.where(np.isfinite(cosine), cosine, 0.0)
    return float(np.min(cosine))
