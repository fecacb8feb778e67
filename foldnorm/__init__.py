"""foldnorm: fold BatchNorm into neighbouring linear ops in ONNX graphs, prove the other norms stayed intact,
and benchmark folded against unfolded graphs.

Importing foldnorm loads neither torch, onnxruntime nor tensorrt; those load inside the functions that
need them.
"""

from foldnorm.bench import BenchResult, benchmark
from foldnorm.errors import FoldnormError, VerificationError
from foldnorm.export import ExportResult, export_onnx
from foldnorm.fold import FoldOptions, FoldRecord, FoldReport, FoldResult, ModuleFoldResult, fold_model, fold_module
from foldnorm.onnxgraph.modelio import load_model, save_model
from foldnorm.verify import VerifyResult, compare_models
from foldnorm.workflows import FoldFileResult, fold_file

__version__ = "0.1.0"

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
