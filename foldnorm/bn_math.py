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
    scale = g / np.sqrt(v + float(eps))
    return ChannelAffine(scale, b - m * scale)


def fold_output_channels(
    weight: np.ndarray, bias: np.ndarray | None, affine: ChannelAffine, axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Fold `affine` into a producer whose output channel c is `weight` indexed by c along `axis`.

    Returns float64 `(weight', bias')`; `bias=None` stands for a zero bias.
    """
    w_folded = np.array(weight, dtype=np.float64)  # our own copy, scaled in place (big weights: one buffer)
    shape = [1] * w_folded.ndim
    shape[axis] = affine.channels
    w_folded *= affine.scale.reshape(shape)
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


FP16_MAX = 65504.0


def emit(values: np.ndarray, dtype: np.dtype, channel_axis: int = 0) -> tuple[np.ndarray | None, str | None]:
    """Round float64 `values` once to `dtype`; refuse (None, reason) when the result would be wrong.

    Refused: non-finite values, values beyond the dtype's finite range, and output channels that lose more
    than 1% of their magnitude to rounding (the tell-tale of a scale that underflows the dtype).
    """
    if not np.all(np.isfinite(values)):
        return None, "the folded values are not finite (a zero variance with eps = 0, or an infinite parameter)"
    finfo_max, name = float(ml_dtypes.finfo(dtype).max), str(np.dtype(dtype))
    peak = max(float(values.max()), -float(values.min())) if values.size else 0.0
    if peak > finfo_max:
        return None, f"a folded value ({peak:.4g}) exceeds the {name} range (max {finfo_max:.6g})"
    rounded = values.astype(dtype)
    if values.ndim and values.size:
        mag, err = _channel_rounding_error(values, rounded, channel_axis)
        lossy = (mag > 0) & (err > 0.01 * mag)
        if np.any(lossy):
            c = int(np.argmax(lossy))
            return None, (
                f"channel {c} of the folded values underflows {name} "
                f"(largest magnitude {mag[c]:.3g}, rounding error {err[c]:.3g})"
            )
    return rounded, None



def _channel_rounding_error(values: np.ndarray, rounded: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: largest |value| and largest rounding error, a few million elements at a time (big
    weights would otherwise need several float64 temporaries of their full size)."""
    moved, back = np.moveaxis(values, axis, 0), np.moveaxis(rounded, axis, 0)
    channels = moved.shape[0]
    mag, err = np.empty(channels), np.empty(channels)
    step = max(1, (1 << 22) // max(1, moved[0].size))
    for start in range(0, channels, step):
        v = moved[start:start + step].reshape(-1, moved[0].size)
        r = back[start:start + step].reshape(v.shape).astype(np.float64)
        mag[start:start + step] = np.max(np.abs(v), axis=1)
        err[start:start + step] = np.max(np.abs(r - v), axis=1)
    return mag, err
