"""The fold passes. `DEFAULT_PASSES` is the one list the engine runs, in order of preference."""

from foldnorm.fold.rules.base import BatchNormPass, ChannelParams, FoldContext, FoldOptions, Plan
from foldnorm.fold.rules.bn_bn import BatchNormChain
from foldnorm.fold.rules.bn_conv import BatchNormConv
from foldnorm.fold.rules.conv_bn import ConvBatchNorm
from foldnorm.fold.rules.conv_transpose_bn import ConvTransposeBatchNorm
from foldnorm.fold.rules.gemm_bn import GemmBatchNorm
from foldnorm.fold.rules.matmul_bn import MatMulBatchNorm

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
