"""The reference model's own noise floor: how far its outputs move when its inputs move by one ulp.

Every float input element is moved one ulp up or down (seeded random signs) and the reference is run again; an
output's noise floor is its max rel change. A fold's error is rounding of the same order, so an output whose
error misses the fixed tolerance but stays within `NOISE_MULTIPLE` times the floor is accepted, and both numbers
are reported. A floor above `UNSTABLE` means the model itself is unstable (e.g. a top-k that picks different
queries after a one-ulp change): element-wise comparison cannot judge it, nothing is accepted on the floor's
account, and the result says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from foldnorm.onnxgraph.modelio import ModelLike, model_label
from foldnorm.verify.measure import is_float, measure_error
from foldnorm.verify.ortrun import outputs

if TYPE_CHECKING:
    from foldnorm.verify.compare import OutputDiff

#: An output within this multiple of its noise floor is accepted.
NOISE_MULTIPLE = 10.0
#: A noise floor (max rel output change under a 1-ulp input change) above this marks an unstable model.
UNSTABLE = 1e-2


@dataclass
class NoiseFloor:
    """Max rel change of each float output of the reference under a 1-ulp perturbation of its inputs."""

    per_output: dict[str, float] = field(default_factory=dict)
    multiple: float = NOISE_MULTIPLE

    @property
    def max_rel(self) -> float:
        """The largest floor over the outputs."""
        return max(self.per_output.values(), default=0.0)

    @property
    def unstable(self) -> bool:
        """Whether a one-ulp input change already moves an output by more than `UNSTABLE` (relative)."""
        return self.max_rel > UNSTABLE

    def judge(self, outputs: Sequence[OutputDiff]) -> None:
        """Record each output's floor; accept an output out of tolerance whose error is within the multiple (never
        on an unstable model, whose floor says nothing about the candidate)."""
        for diff in outputs:
            floor = self.per_output.get(diff.name)
            if floor is None:
                continue
            diff.noise_floor = floor
            diff.within_noise = (not self.unstable and diff.nonfinite_introduced == 0
                                 and 0 < diff.max_rel <= self.multiple * floor)

    def sentence(self) -> str:
        """What the floor says about the reference model."""
        if self.unstable:
            worst = max(self.per_output, key=lambda k: self.per_output[k])
            return (f"the reference model itself is unstable: a one-ulp change of its inputs moves output "
                    f"{worst!r} by {self.per_output[worst]:.3g} (relative), so element-wise comparison cannot "
                    "judge it; compare with --metric top1/cosine, or loosen --rtol")
        return f"the reference's own noise floor is {self.max_rel:.3g} (max rel change under a one-ulp input change)"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"per_output": self.per_output, "max_rel": self.max_rel, "multiple": self.multiple,
                "unstable": self.unstable, "summary": self.sentence()}


def perturbed(feed: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`feed` with every float element moved one ulp up or down (random signs); other inputs as they are."""
    out = {}
    for name, array in feed.items():
        if is_float(array.dtype) and array.size:
            direction = np.where(rng.integers(0, 2, array.shape) == 1, np.inf, -np.inf).astype(array.dtype)
            out[name] = np.nextafter(array, direction).astype(array.dtype)
        else:
            out[name] = array
    return out


def noise_floor(source: ModelLike, model: onnx.ModelProto, workdir: Path, feeds: Iterable[Mapping[str, np.ndarray]],
                expected: Sequence[Sequence[np.ndarray]], names: Sequence[str], seed: int) -> NoiseFloor:
    """Run the reference once more on one-ulp perturbed feeds (`feeds`, drawn again) and measure each float
    output's change against `expected`, its outputs on the feeds themselves."""
    rng = np.random.default_rng(seed + 7919)
    again = list(outputs(source, model, workdir, "reference", model_label(source),
                         (perturbed(f, rng) for f in feeds)))
    floor = NoiseFloor()
    for i, name in enumerate(names):
        if is_float(expected[0][i].dtype):
            floor.per_output[name] = max(measure_error(e[i], a[i])[1] for e, a in zip(expected, again))
    return floor
