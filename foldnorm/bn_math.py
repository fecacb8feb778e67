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
    with np.errstate(divide="ignore", invalid="ignore"):  # non-finite results are refused by the caller
        scale = g / np.sqrt(v + float(eps))
    return ChannelAffine(scale, b - m * scale)


def fold_output_channels(
    weight: np.ndarray, bias: np.ndarray | None, affine: ChannelAffine, axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Fold `affine` into a producer whose output channel c is `weight` indexed by c along `axis`.

    Returns float64 `(weight', bias')`; `bias=None` stands for a zero bias.
    """
    w = np.asarray(weight, dtype=np.float64)
    shape = [1] * w.ndim
    shape[axis] = affine.channels
    w_folded = w * affine.scale.reshape(shape)
    b = np.zeros(affine.channels) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    return w_folded, b * affine.scale + affine.shift


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


FP16_MAX = 65504.0


def emit(values: np.ndarray, dtype: np.dtype, channel_axis: int = 0) -> tuple[np.ndarray | None, str | None]:
    """Round float64 `values` once to `dtype`; refuse (None, reason) when the result would be wrong.

    Refused: non-finite values, values beyond the dtype's finite range, and output channels that lose more
    than 1% of their magnitude to rounding (the tell-tale of a scale that underflows the dtype).
    """
    if not np.all(np.isfinite(values)):
        return None, "the folded values are not finite (a zero variance with eps = 0, or an infinite parameter)"
    finfo_max, name = float(ml_dtypes.finfo(dtype).max), str(np.dtype(dtype))
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak > finfo_max:
        return None, f"a folded value ({peak:.4g}) exceeds the {name} range (max {finfo_max:.6g})"
    rounded = values.astype(dtype)
    if values.ndim and values.size:
        moved = np.moveaxis(values, channel_axis, 0).reshape(values.shape[channel_axis], -1)
        back = np.moveaxis(rounded.astype(np.float64), channel_axis, 0).reshape(moved.shape)
        mag = np.max(np.abs(moved), axis=1)
        err = np.max(np.abs(back - moved), axis=1)
        lossy = (mag > 0) & (err > 0.01 * mag)
        if np.any(lossy):
            c = int(np.argmax(lossy))
            return None, (
                f"channel {c} of the folded values underflows {name} "
                f"(largest magnitude {mag[c]:.3g}, rounding error {err[c]:.3g})"
            )
    return rounded, None

