"""The fold passes. `DEFAULT_PASSES` is the one list the engine runs, in order of preference."""

from foldnorm.passes.base import BatchNormPass, ChannelParams, FoldContext, FoldOptions, Plan
from foldnorm.passes.batchnorm_chain import BatchNormChain
from foldnorm.passes.conv import ConvBatchNorm
from foldnorm.passes.conv_input import BatchNormConv
from foldnorm.passes.conv_transpose import ConvTransposeBatchNorm
from foldnorm.passes.gemm import GemmBatchNorm
from foldnorm.passes.matmul import MatMulBatchNorm

DEFAULT_PASSES: tuple[BatchNormPass, ...] = (
    ConvBatchNorm(),
    ConvTransposeBatchNorm(),
    GemmBatchNorm(),
    MatMulBatchNorm(),
    BatchNormChain(),
    BatchNormConv(),
)

__all__ = [
    "DEFAULT_PASSES",
    "BatchNormPass",
    "ChannelParams",
    "FoldContext",
    "FoldOptions",
    "Plan",
]
