"""Why an export went wrong, in one line: the root cause in torch's exception chain, a batch axis that torch
could not keep dynamic (or silently made static), and float16 error that is float16's own."""

from __future__ import annotations

import re

import onnx

from foldnorm.errors import first_line

#: What the one-line reason says when torch cannot keep the batch dimension dynamic.
SPECIALISED = "the module specialises the batch dimension"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions behind it (`__cause__`, else `__context__`), outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def specialises_batch(exc: BaseException) -> bool:
    """Whether torch failed because the module pins the batch dimension that was asked to be dynamic."""
    return any(type(e).__name__ == "ConstraintViolationError" or "Constraints violated (batch)" in str(e)
               for e in exception_chain(exc))


def root_cause(exc: BaseException) -> str:
    """One line: the innermost exception of the chain and its type (`message (torch: TypeName)`), or the batch
    specialisation in words; never torch's "Next steps" banner."""
    chain = exception_chain(exc)
    if specialises_batch(exc):
        return f"{SPECIALISED} (torch: ConstraintViolationError)"
    root = chain[-1]
    text = _ANSI.sub("", first_line(root)).split(" [Caused by")[0].split(" Next steps:")[0].strip()[:300]
    return f"{text} (torch: {type(root).__name__})"


def static_batch(model: onnx.ModelProto, names: list[str]) -> int | None:
    """The fixed size of axis 0 of the inputs `names` when the exporter wrote one (torch made the batch static),
    None when the axis is symbolic."""
    inputs = {vi.name: vi for vi in model.graph.input}
    for name in names:
        vi = inputs.get(name)
        dims = vi.type.tensor_type.shape.dim if vi is not None else []
        if dims and dims[0].HasField("dim_value") and not dims[0].dim_param:
            return int(dims[0].dim_value)
    return None


def fp16_note(ort_rel: float, intrinsic_rel: float) -> str:
    """The check's note when a float16 export misses its tolerance by no more than float16 itself does."""
    return (f"float16's own error, not the export: ONNX Runtime is {ort_rel:.3g} (max rel) from the float16 module, "
            f"and the float16 module is already {intrinsic_rel:.3g} from its float32 original on the same inputs; "
            f"compare with --rtol {max(ort_rel, intrinsic_rel) * 2:.1g}, or export float32")
