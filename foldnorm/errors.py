"""The one error family for user-facing problems.

A `FoldnormError` carries a sentence that names the thing that is wrong and the fix. The CLI prints it on
one line and exits with `exit_code`; anything that is not a `FoldnormError` is a bug and keeps its
traceback. `first_line` quotes a foreign exception inside such a sentence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foldnorm.workflows import FoldFileResult


class FoldnormError(Exception):
    """A problem with the user's input or environment, not a bug in foldnorm."""

    exit_code = 1


class ModelLoadError(FoldnormError):
    """A model file is missing, unreadable or not a valid ONNX model."""


class InvalidModelError(FoldnormError):
    """The model loaded but is inconsistent (e.g. BN parameters of the wrong length)."""


class UnknownRuleError(FoldnormError):
    """A fold rule named in `skip` or `only` does not exist."""


class OutputPathError(FoldnormError):
    """An output path cannot be written (missing directory, read-only, same as the input)."""


class InputSpecError(FoldnormError):
    """An input specification (shape, dtype, name, import spec) is malformed or does not match the model."""


class ModelMismatchError(FoldnormError):
    """Two models that are to be compared differ in interface (input/output names, counts, types, shapes)."""


class BackendUnavailableError(FoldnormError):
    """A requested backend cannot run on this machine."""


class ExportError(FoldnormError):
    """A PyTorch module could not be exported faithfully."""


class VerificationError(FoldnormError):
    """Two graphs that must compute the same function do not.

    `result` is what the failed check measured, when the library has it to give: `fold_file` passes its
    `FoldFileResult` (the fold report and the verification) so that a caller can still show them.
    """

    exit_code = 3

    def __init__(self, message: str, result: FoldFileResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class InvariantViolation(AssertionError):
    """A protected normalization node changed during folding: this is a bug, never a user error."""


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message (its type name when the message is empty), for quoting in an error.

    For an OS error, its reason alone ("File name too long"): the sentence quoting it names the path already.
    """
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
