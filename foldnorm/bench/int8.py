"""INT8 (QDQ) models to benchmark: ONNX Runtime's static quantizer on an unfolded float model.

`quantize_static` in the QDQ format, int8 weights per output channel and uint8 activations (the combination
ONNX Runtime's x86 kernels fuse into QLinearConv/QGemm), MinMax-calibrated on seeded random inputs: the unfolded
model keeps every BatchNorm, as `Conv(DQ(x), DQ(W_q)) -> Q -> DQ -> BatchNormalization -> Q -> DQ`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from foldnorm.bench.backends.ort_cpu import ORT_INSTALL_HINT
from foldnorm.errors import BackendUnavailableError, FoldnormError, first_line

#: calibration batches `benchmark` draws when it quantizes a float model itself.
CALIBRATION_BATCHES = 8


def quantize_qdq(source: str | os.PathLike, output: str | os.PathLike,
                 calibration: Sequence[Mapping[str, np.ndarray]], *, per_channel: bool = True) -> Path:
    """Quantize the float ONNX file `source` into `output` (QDQ, int8 weights, uint8 activations), calibrated
    on the feeds `calibration`; returns `output`. BatchNorms stay: quantize first, then fold, to compare."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise BackendUnavailableError("quantizing needs onnxruntime, which is not installed; "
                                      f"install: {ORT_INSTALL_HINT}") from None

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds: Iterator[Mapping[str, np.ndarray]] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            feed = next(self.feeds, None)
            return None if feed is None else dict(feed)

    quiet = logging.getLogger()  # the quantizer logs its advice on the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_static(str(source), str(output), Feeds(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    except Exception as exc:  # the quantizer raises plain exceptions for models it cannot handle
        raise FoldnormError(f"{source}: ONNX Runtime's quantizer cannot quantize it ({first_line(exc)}); "
                            "benchmark a QDQ model you quantized yourself") from exc
    finally:
        quiet.setLevel(level)
    return Path(output)
