"""Stage 2, fold: the engine, its rules (`foldnorm.fold.rules`), the fold maths, the one normalization
classifier, the report, and the torch-side fold of `nn.Module`s."""

from foldnorm.fold.engine import FoldResult, fold_model, inspect_model
from foldnorm.fold.options import FoldOptions
from foldnorm.fold.report import FoldRecord, FoldReport
from foldnorm.fold.torch_fold import ModuleFoldResult, fold_module

__all__ = ["FoldOptions", "FoldRecord", "FoldReport", "FoldResult", "ModuleFoldResult", "fold_model", "fold_module",
           "inspect_model"]
