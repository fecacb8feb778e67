"""The fold rules. `RULES` is the one registry the engine runs, in order of preference.

A new rule is one file here (a subclass of a rule class in `base.py`) and one line in `RULES`.
"""

from foldnorm.fold.rules.affine_conv import AffineConv
from foldnorm.fold.rules.affine_tail import AffineTail
from foldnorm.fold.rules.base import (
    AloneRule,
    BlockRule,
    ChannelParams,
    NeighbourRule,
    Plan,
    Refusal,
    Rule,
    SubjectRule,
)
from foldnorm.fold.rules.bn_affine import BatchNormAffine
from foldnorm.fold.rules.bn_bn import BatchNormChain
from foldnorm.fold.rules.bn_constant import BatchNormConstant
from foldnorm.fold.rules.bn_conv import BatchNormConv
from foldnorm.fold.rules.bn_linear import BatchNormLinear
from foldnorm.fold.rules.common import batchnorm_params
from foldnorm.fold.rules.concat_bn import ConcatBatchNorm
from foldnorm.fold.rules.conv_bn import ConvBatchNorm
from foldnorm.fold.rules.conv_transpose_bn import ConvTransposeBatchNorm
from foldnorm.fold.rules.gemm_bn import GemmBatchNorm
from foldnorm.fold.rules.matmul_bn import MatMulBatchNorm
from foldnorm.fold.rules.qdq_bn import QdqBatchNorm
from foldnorm.fold.rules.rep_branches import RepBranches
from foldnorm.fold.rules.reshape_bn import ReshapeBatchNorm

RULES: tuple[Rule, ...] = (
    ConvBatchNorm(),
    ConvTransposeBatchNorm(),
    GemmBatchNorm(),
    MatMulBatchNorm(),
    QdqBatchNorm(),
    ReshapeBatchNorm(),
    ConcatBatchNorm(),
    BatchNormChain(),
    BatchNormConv(),
    BatchNormLinear(),
    AffineConv(),
    AffineTail(),
    BatchNormConstant(),
    BatchNormAffine(),
    RepBranches(),  # a "block" rule: the engine offers it every node before any per-node fold
)

__all__ = [
    "RULES",
    "AloneRule",
    "BlockRule",
    "ChannelParams",
    "NeighbourRule",
    "Plan",
    "Refusal",
    "Rule",
    "SubjectRule",
    "batchnorm_params",
]
