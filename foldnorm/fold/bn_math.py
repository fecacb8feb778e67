"""The fold maths, apart from any graph plumbing. Everything is computed in float64.

Inference BatchNorm on channel c is the affine map  y = s_c * x + t_c  with
    s = gamma / sqrt(var + eps),   t = beta - mean * s.
Folding it into a producer that is linear in its output channels scales that producer's weights along
the output-channel axis by s and maps its bias b to  s * b + t.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class ChannelAffine:
    """A per-channel affine map y = scale * x + shift, in float64."""

    scale: np.ndarray
    shift: np.ndarray

    @property
    def channels(self) -> int:
        """Number of channels the map acts on."""
        return int(self.scale.shape[0])

    def then(self, other: ChannelAffine) -> ChannelAffine:
        """The composition `other(self(x))`."""
        return ChannelAffine(self.scale * other.scale, self.shift * other.scale + other.shift)


def batchnorm_affine(
    gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> ChannelAffine:
    """The affine map of an inference BatchNorm, computed in float64."""
    g, b, m, v = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (gamma, beta, mean, var))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # non-finite results: the caller refuses
        scale = g / np.sqrt(v + float(eps))
        return ChannelAffine(scale, b - m * scale)


def batch_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel (axis 1) mean and biased variance of `x` over every other axis, in float64: what a
    training-mode BatchNorm normalizes `x` with."""
    x64 = np.asarray(x, dtype=np.float64)
    axes = tuple(a for a in range(x64.ndim) if a != 1)
    return x64.mean(axis=axes), x64.var(axis=axes)


def apply_affine(x: np.ndarray, affine: ChannelAffine) -> np.ndarray:
    """`affine` applied to the channels (axis 1) of `x`, in float64."""
    shape = (affine.channels, *([1] * (x.ndim - 2)))
    return np.asarray(x, dtype=np.float64) * affine.scale.reshape(shape) + affine.shift.reshape(shape)


@dataclass(frozen=True)
class Scaled:
    """The product `base * factor` (broadcast), held unevaluated so that `emit` can compute it in float64
    and round it once straight into the target dtype, without a float64 copy of a big weight."""

    base: np.ndarray
    factor: np.ndarray

    def exact(self) -> np.ndarray:
        """The product in float64 (inf * 0 is NaN without a warning: `emit` refuses non-finite values)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return np.multiply(self.base, self.factor, dtype=np.float64)

    def rounded(self, dtype: np.dtype) -> np.ndarray:
        """The product computed in float64, rounded once to `dtype`."""
        out = np.empty(np.broadcast_shapes(self.base.shape, self.factor.shape), dtype=dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            np.multiply(self.base, self.factor, out=out, dtype=np.float64, casting="unsafe")
        return out


def distinct(values: np.ndarray) -> np.ndarray:
    """`values` without the copies a broadcast view repeats: each axis of stride 0 cut to length 1.

    (A weight `inspect` leaves unread is such a view of one zero: a fold computed on what this returns costs
    nothing per element of the weight. Any other array is returned as it is.)
    """
    if not any(st == 0 and n > 1 for st, n in zip(values.strides, values.shape)):
        return values
    return values[tuple(slice(0, 1) if st == 0 and n > 1 else slice(None)
                        for st, n in zip(values.strides, values.shape))]


def scale_output_channels(weight: np.ndarray, affine: ChannelAffine, axis: int = 0) -> Scaled:
    """`weight` with output channel c (index c along `axis`) scaled by `s[c]`, as an unevaluated product."""
    shape = [1] * weight.ndim
    shape[axis] = affine.channels
    return Scaled(weight, affine.scale.reshape(shape))


def fold_output_channels(
    weight: np.ndarray, bias: np.ndarray | None, affine: ChannelAffine, axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Fold `affine` into a producer whose output channel c is `weight` indexed by c along `axis`.

    Returns float64 `(weight', bias')`; `bias=None` stands for a zero bias.
    """
    return scale_output_channels(weight, affine, axis).exact(), fold_bias(bias, affine)


def fold_conv(
    weight: np.ndarray, bias: np.ndarray | None, affine: ChannelAffine
) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight `[O, I/g, k...]`: output channel o is weight row o, for any group count."""
    return fold_output_channels(weight, bias, affine, axis=0)


def fold_conv_transpose(
    weight: np.ndarray, bias: np.ndarray | None, affine: ChannelAffine, group: int
) -> tuple[np.ndarray, np.ndarray]:
    """ConvTranspose weight `[I, O/g, k...]`: `W[i, j]` feeds output channel `(i // (I/g)) * (O/g) + j`.

    Scaling along axis 1 alone is right only for `group == 1`.
    """
    w = np.asarray(weight, dtype=np.float64)
    cin, cout_g = w.shape[0], w.shape[1]
    grouped = w.reshape(group, cin // group, cout_g, *w.shape[2:])
    scale = affine.scale.reshape(group, 1, cout_g, *([1] * (w.ndim - 2)))
    w_folded = (grouped * scale).reshape(w.shape)
    b = np.zeros(affine.channels) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    return w_folded, b * affine.scale + affine.shift


def fold_conv_input(
    weight: np.ndarray, bias: np.ndarray | None, affine: ChannelAffine, group: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fold `affine` applied to a Conv's INPUT into the Conv (exact only when the conv pads nothing).

    Conv weight `[O, I/g, k...]`: output channel o reads input channel `(o // (O/g)) * (I/g) + j` through
    `W[o, j]`. So `W'[o, j] = W[o, j] * s[in(o, j)]` and `b'[o] = b[o] + sum_{j,k} W[o, j, k] * t[in(o, j)]`.
    """
    w = np.asarray(weight, dtype=np.float64)
    cout, cin_g = w.shape[0], w.shape[1]
    groups = np.arange(cout) // (cout // group)
    channel = groups[:, None] * cin_g + np.arange(cin_g)[None, :]  # [O, I/g] -> input channel
    extra = [1] * (w.ndim - 2)
    w_folded = w * affine.scale[channel].reshape(cout, cin_g, *extra)
    shift = (w * affine.shift[channel].reshape(cout, cin_g, *extra)).reshape(cout, -1).sum(axis=1)
    b = np.zeros(cout) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    return w_folded, b + shift


def fold_bias(bias: np.ndarray | None, affine: ChannelAffine, beta: float = 1.0) -> np.ndarray:
    """The new bias `beta * s * C + t` with channels on the LAST axis; C may be scalar, [N], [1,N] or [M,N].

    `bias=None` gives `t` ([N]). The result keeps C's rank, widened to N columns where C broadcast.
    """
    if bias is None:
        return affine.shift.copy()
    c = np.asarray(bias, dtype=np.float64)
    return beta * c * affine.scale + affine.shift



def emit(values: np.ndarray | Scaled, dtype: np.dtype,
         channel_axis: int = 0) -> tuple[np.ndarray | None, str | None]:
    """Round float64 `values` (an array or an unevaluated `Scaled` product) once to `dtype`.

    Returns `(rounded, None)`, or `(None, reason)` when the result would be wrong.

    Refused: non-finite values, values beyond the dtype's finite range, and output channels that lose more
    than 1% of their magnitude to rounding (the tell-tale of a scale that underflows the dtype).

    Rounding a normal number loses at most eps/2 (<= 0.4% for bf16) of it, and a subnormal one at most half
    the smallest subnormal, so only channels whose rounded magnitude is below 100x the smallest normal number
    can lose 1%; only those are compared with the float64 values (big tensors stay fast). The work is done on
    the `distinct` values of a broadcast view, and the result broadcast back to its shape.
    """
    name = str(np.dtype(dtype))
    if isinstance(values, Scaled):
        shape = np.broadcast_shapes(values.base.shape, values.factor.shape)
        values = Scaled(distinct(values.base), values.factor)
    else:
        shape, values = values.shape, distinct(values)
    if isinstance(values, Scaled):
        rounded, exact = values.rounded(dtype), values.exact
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            rounded = values.astype(dtype)
        array = values

        def exact() -> np.ndarray:
            return np.asarray(array, dtype=np.float64)
    if not rounded.size:
        return np.broadcast_to(rounded, shape), None
    channels = rounded.shape[channel_axis] if rounded.ndim else 1
    flat = np.moveaxis(rounded, channel_axis, 0).reshape(channels, -1) if rounded.ndim else rounded.reshape(1, 1)
    hi = flat.max(axis=1).astype(np.float64)
    lo = flat.min(axis=1).astype(np.float64)
    if not (np.all(np.isfinite(hi)) and np.all(np.isfinite(lo))):
        values64 = exact()
        if not np.all(np.isfinite(values64)):
            return None, "the folded values are not finite (a zero variance with eps = 0, or an infinite parameter)"
        finfo_max = float(ml_dtypes.finfo(dtype).max)
        peak = float(np.max(np.abs(values64)))
        return None, f"a folded value ({peak:.4g}) exceeds the {name} range (max {finfo_max:.6g})"
    suspect = np.flatnonzero(np.maximum(hi, -lo) < 100 * float(ml_dtypes.finfo(dtype).smallest_normal))
    if suspect.size:
        values64 = exact()
        by_channel = np.moveaxis(values64, channel_axis, 0).reshape(channels, -1) if values64.ndim \
            else values64.reshape(1, 1)
        for c in suspect:
            mag = float(np.max(np.abs(by_channel[c])))
            err = float(np.max(np.abs(flat[c].astype(np.float64) - by_channel[c])))
            if mag > 0 and err > 0.01 * mag:
                return None, (
                    f"channel {int(c)} of the folded values underflows {name} "
                    f"(largest magnitude {mag:.3g}, rounding error {err:.3g})"
                )
    return (rounded if rounded.shape == shape else np.broadcast_to(rounded, shape)), None
