"""foldnorm: fold BatchNorm into neighbouring linear ops in ONNX graphs, prove the other norms stayed intact,
and benchmark folded against unfolded graphs.

Importing foldnorm loads neither torch, onnxruntime nor tensorrt, nor any of its own stages: each public name
below is imported from its module on first use (PEP 562), so `foldnorm fold --no-verify` never pays for the
benchmark or the verification.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foldnorm.bench import BenchResult, benchmark
    from foldnorm.errors import FoldnormError, VerificationError
    from foldnorm.export import ExportResult, export_onnx
    from foldnorm.fold import (
        FoldOptions,
        FoldRecord,
        FoldReport,
        FoldResult,
        ModuleFoldResult,
        fold_model,
        fold_module,
    )
    from foldnorm.onnxgraph.modelio import load_model, save_model
    from foldnorm.verify import VerifyResult, compare_models
    from foldnorm.workflows import FoldFileResult, fold_file

__version__ = "0.1.0"

# The modules the public names come from.
_SOURCES = {
    "foldnorm.bench": ("BenchResult", "benchmark"),
    "foldnorm.errors": ("FoldnormError", "VerificationError"),
    "foldnorm.export": ("ExportResult", "export_onnx"),
    "foldnorm.fold": ("FoldOptions", "FoldRecord", "FoldReport", "FoldResult", "ModuleFoldResult", "fold_model",
                      "fold_module"),
    "foldnorm.onnxgraph.modelio": ("load_model", "save_model"),
    "foldnorm.verify": ("VerifyResult", "compare_models"),
    "foldnorm.workflows": ("FoldFileResult", "fold_file"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "BenchResult",
    "ExportResult",
    "FoldFileResult",
    "FoldOptions",
    "FoldRecord",
    "FoldReport",
    "FoldResult",
    "FoldnormError",
    "ModuleFoldResult",
    "VerificationError",
    "VerifyResult",
    "__version__",
    "benchmark",
    "compare_models",
    "export_onnx",
    "fold_file",
    "fold_model",
    "fold_module",
    "load_model",
    "save_model",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use, and keep it here."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'foldnorm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazily imported ones included."""
    return sorted({*globals(), *_MODULE_OF})
