"""INT8 (QDQ) models to benchmark: ONNX Runtime's static quantizer on an unfolded float model, and the
unfolded/folded pairs a benchmark times per model precision.

`quantize_static` in the QDQ format, int8 weights per output channel and uint8 activations (the combination
ONNX Runtime's x86 kernels fuse into QLinearConv/QGemm), MinMax-calibrated on seeded random inputs: the unfolded
model keeps every BatchNorm, as `Conv(DQ(x), DQ(W_q)) -> Q -> DQ -> BatchNormalization -> Q -> DQ`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from foldnorm.bench.backends.base import Precision
from foldnorm.bench.backends.ort_cpu import ORT_INSTALL_HINT
from foldnorm.bench.progress import Progress, Step
from foldnorm.bench.result import Int8Pair
from foldnorm.bench.workload import Workload
from foldnorm.errors import BackendUnavailableError, FoldnormError, first_line
from foldnorm.fold.engine import fold_model
from foldnorm.onnxgraph.modelio import save_model
from foldnorm.verify.compare import compare_models
from foldnorm.verify.quantized import is_quantized

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


def model_pairs(unfolded: onnx.ModelProto, paths: dict[str, str], precisions: Sequence[Precision], work: Path,
                 workload: Workload, seed: int,
                 say: Progress) -> tuple[dict[Precision, dict[str, str]], Int8Pair | None]:
    """The unfolded/folded files to time per model precision: a QDQ model is int8 as it is; a float model is
    fp32 (unless only int8 was asked for) and, for "int8", quantized by ONNX Runtime (calibrated at the first
    batch size) and folded again."""
    if is_quantized(unfolded):
        return {"int8": paths}, None
    pairs: dict[Precision, dict[str, str]] = {}
    if "int8" not in precisions or any(p != "int8" for p in precisions):
        pairs["fp32"] = paths
    if "int8" not in precisions:
        return pairs, None
    say(Step("quantizing (ONNX Runtime, QDQ int8)"))
    batch = workload.batch_sizes[0]
    calibration = [workload.feeds(unfolded, batch, seed + 1 + k) for k in range(CALIBRATION_BATCHES)]
    int8_path = quantize_qdq(paths["unfolded"], work / "int8.onnx", calibration)
    say(Step("folding the int8 model"))
    folded = fold_model(int8_path)
    pairs["int8"] = {"unfolded": str(int8_path), "folded": str(save_model(folded.model, work / "int8-folded.onnx"))}
    verify = compare_models(int8_path, folded.model, batch_sizes=workload.verify_batch_sizes(),
                            shapes=workload.shapes)
    origin = (f"ONNX Runtime quantize_static (QDQ, int8 weights per channel, uint8 activations, MinMax on "
              f"{CALIBRATION_BATCHES} seeded random batches)")
    return pairs, Int8Pair(origin, folded.report, verify)


def int8_notes(pairs: Mapping[Precision, Any], int8: Int8Pair | None) -> list[str]:
    """What the int8 rows ran and what their errors are measured against."""
    if int8 is not None:
        return [f"int8 rows: {int8.origin}; errors vs the fp32 unfolded model",
                f"int8 fold: {int8.fold_report.summary()}", f"int8 verify: {int8.verify.summary()}"]
    if "int8" in pairs:
        return ["int8 rows: a QDQ model; errors vs the unfolded QDQ model on ort-cpu opt=disabled"]
    return []
