"""Stage 3, verify: do two graphs compute the same thing (numerics on ONNX Runtime), and are the protected
normalizations of the reference intact in the candidate (structure)?"""

from foldnorm.verify.compare import VerifyResult, compare_models

__all__ = ["VerifyResult", "compare_models"]
