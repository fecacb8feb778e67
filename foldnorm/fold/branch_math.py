"""Branch merging maths: a sum of convolutions of one input, and of the input itself, as one convolution.

    Y = Σ_b S_b ⊙ Conv(X; W_b, pads_b) + I ⊙ X + c   =   Conv(X; W, pads, bias)     (⊙: per output channel)

Along one spatial axis a convolution with kernel k, stride s, dilation d and pads (p, q) reads input positions
`i*s - p + j*d` (j < k) for output i and has `floor((L + p + q - d*(k-1) - 1) / s) + 1` outputs. Placing branch
b's kernel at offset o_b inside a merged kernel of size K with pads (P, Q) reads the same positions exactly when
`P - p_b = o_b * d`, and gives the same number of outputs for every length L exactly when `p + q - d*(k-1)` is the
same for every branch (`Q` follows). The taps outside a branch's own kernel are zero, so reading padding or real
values there adds nothing. `align` proves this from the attributes, never from tensor lengths; a kernel of size 1
reads one position whatever its dilation, and the identity is the kernel-1, stride-1, unpadded window.

The merged kernel has the greatest common group count G of the branches (a finer block structure embeds in a
coarser one), and the identity is 1 at input channel `o mod (C/G)` of output channel o (per group).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class Misaligned(ValueError):
    """The branches' windows cannot be one convolution; the message says why, from the attributes."""


@dataclass(frozen=True)
class Window:
    """Where a convolution reads its input, per spatial axis: kernel size, stride, dilation, pads before/after."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]

    @classmethod
    def identity(cls, rank: int) -> Window:
        """The window of the input itself: kernel 1, stride 1, no pads."""
        ones, zeros = (1,) * rank, (0,) * rank
        return cls(ones, ones, ones, zeros, zeros)


@dataclass(frozen=True)
class Alignment:
    """The merged convolution's window and where each branch's kernel sits in its kernel."""

    window: Window
    offsets: tuple[tuple[int, ...], ...]


def align(windows: Sequence[Window], names: Sequence[str]) -> Alignment:
    """The one window that reads what every branch reads; raises `Misaligned` naming the branches that differ.

    `names` label the windows in the message ("Conv c1", "the identity"). The merged kernel is never larger
    than the largest branch kernel.
    """
    rank = len(windows[0].kernel)
    kernel, strides, dilations, begin, end = [], [], [], [], []
    offsets: list[list[int]] = [[] for _ in windows]
    for axis in range(rank):
        where = f"along spatial axis {axis}"
        stride = _agree([w.strides[axis] for w in windows], names, f"strides {where}")
        wide = [(w, n) for w, n in zip(windows, names) if w.kernel[axis] > 1]  # dilation moves only these taps
        dilation = _agree([w.dilations[axis] for w, _ in wide], [n for _, n in wide], f"dilations {where}") \
            if wide else 1
        spans = [w.begin[axis] + w.end[axis] - dilation * (w.kernel[axis] - 1) for w in windows]
        _agree(spans, names, f"output lengths {where} (pads {[[w.begin[axis], w.end[axis]] for w in windows]}, "
                             f"kernels {[w.kernel[axis] for w in windows]})")
        first = max(w.begin[axis] for w in windows)
        size = max(w.kernel[axis] for w in windows)
        for k, (w, name) in enumerate(zip(windows, names)):
            shift, rest = divmod(first - w.begin[axis], dilation)
            if rest or shift + w.kernel[axis] > size:
                raise Misaligned(f"{name} reads other input positions {where} (pads {w.begin[axis]}, "
                                 f"{w.end[axis]} with kernel {w.kernel[axis]}) than a kernel of {size} with pads "
                                 f"{first}, {spans[0] + dilation * (size - 1) - first}: the outputs would not align")
            offsets[k].append(shift)
        kernel.append(size)
        strides.append(stride)
        dilations.append(dilation)
        begin.append(first)
        end.append(spans[0] + dilation * (size - 1) - first)
    merged = Window(tuple(kernel), tuple(strides), tuple(dilations), tuple(begin), tuple(end))
    return Alignment(merged, tuple(tuple(o) for o in offsets))


def _agree(values: Sequence[int], names: Sequence[str], what: str) -> int:
    if len(set(values)) > 1:
        pairs = ", ".join(f"{n}: {v}" for n, v in zip(names, values))
        raise Misaligned(f"the branches have different {what} ({pairs}): the outputs would not align")
    return values[0]


def merged_group(groups: Sequence[int]) -> int | None:
    """The group count of one conv holding every branch: their gcd, or None when that is coarser than every
    branch's (the merged conv would be denser than each of them)."""
    group = math.gcd(*groups)
    return group if group in groups else None


def merge_kernels(channels: tuple[int, int], group: int, alignment: Alignment,
                  kernels: Sequence[tuple[np.ndarray, int]], identity: np.ndarray | None) -> np.ndarray:
    """The merged float64 weight `[O, C/group, K...]`.

    `channels` is (O, C); `kernels` holds each conv branch's already-scaled weight `[O, C/g_b, k...]` and its
    group count g_b (group divides g_b), in the order of `alignment.offsets`; `identity` (when not None) holds
    the per-channel coefficient of X itself (O == C), whose offset is the last one.
    """
    out, cin = channels
    cin_g = cin // group
    merged = np.zeros((out, cin_g, *alignment.window.kernel))
    rows = np.arange(out)
    first_local = (rows // (out // group)) * cin_g  # the first input channel of each output's merged group
    for (weight, g), offsets in zip(kernels, alignment.offsets):
        branch_g = weight.shape[1]
        cols = ((rows // (out // g)) * branch_g - first_local)[:, None] + np.arange(branch_g)[None, :]
        window: tuple[Any, ...] = (rows[:, None], cols, *(slice(o, o + k) for o, k in zip(offsets, weight.shape[2:])))
        merged[window] += weight
    if identity is not None:
        centre: tuple[Any, ...] = (rows, rows - first_local, *alignment.offsets[-1])
        merged[centre] += identity
    return merged
