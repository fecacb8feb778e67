"""The fold passes. `DEFAULT_PASSES` is the one list the engine runs, in order of preference."""

from foldnorm.passes.base import BatchNormParams, BatchNormPass, FoldContext, FoldOptions, Plan
from foldnorm.passes.conv import ConvBatchNorm

DEFAULT_PASSES: tuple[BatchNormPass, ...] = (ConvBatchNorm(),)

__all__ = ["DEFAULT_PASSES", "BatchNormParams", "BatchNormPass", "FoldContext", "FoldOptions", "Plan"]
