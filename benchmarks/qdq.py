"""INT8 (QDQ) models: folding BatchNorm after ONNX Runtime's quantizer, and the other orders, on ort-cpu.

Part 1, the zoo: every built-in model is exported unfolded, quantized by ONNX Runtime's `quantize_static` (QDQ,
int8 weights per channel, uint8 activations, MinMax on 8 seeded random batches: `foldnorm.bench.int8`), and
folded by foldnorm. Per model: the BatchNorms (and constant Mul/Add tails) foldnorm folds in the float export and
in the QDQ model (a BN folded in the float model must fold in the QDQ model or be refused with a reason), the
relative error against the fp32 model (max |out - fp32| / max |fp32|, mean over `--batches` random batches of 4)
of the unfolded and of the folded QDQ model, and how far folded and unfolded QDQ differ, in output steps.

Part 2, latency of `--model` (default resnet18-bn at 1x3x224x224) on ONNX Runtime CPU, one intra-op thread,
opt=disabled and opt=all, all variants timed interleaved by foldnorm's timing loop:

  fp32 unfolded / fp32 folded        the float export, and foldnorm's fold of it
  int8 quantize->fold: unfolded      quantize_static of the unfolded export (every BN stays, between Q/DQ)
  int8 quantize->fold: folded        foldnorm fold of that QDQ model
  int8 fold->quantize                foldnorm fold first, then quantize_static
  int8 pre-process->quantize         ONNX Runtime's own quant_pre_process (its optimizer fuses Conv+BN), then
                                     quantize_static

Usage:  .venv/bin/python benchmarks/qdq.py [--iterations 100] [--out benchmarks/results/qdq.md]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import torch
from foldnorm.models import REGISTRY, get_spec

from foldnorm import export_onnx, fold_model, save_model
from foldnorm.bench.backends.ort_cpu import OrtOptions, OrtSession
from foldnorm.bench.environment import cpu_count, cpu_model
from foldnorm.bench.int8 import CALIBRATION_BATCHES, quantize_qdq
from foldnorm.bench.timing import Timed, time_interleaved
from foldnorm.errors import FoldnormError
from foldnorm.fold.report import FoldReport
from foldnorm.onnxgraph.inputs import make_feeds
from foldnorm.verify.quantized import output_steps

RESULTS = Path(__file__).parent / "results" / "qdq.md"


def run(path: str | Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The first output for each feed, ORT CPU with optimizations disabled."""
    with OrtSession(str(path)) as session:
        return [session.run(f)[0] for f in feeds]


def relative_error(outs: list[np.ndarray], refs: list[np.ndarray]) -> float:
    """Mean over batches of max |out - ref| / max |ref|."""
    return float(np.mean([np.abs(o - r).max() / np.abs(r).max() for o, r in zip(outs, refs)]))


def quantized(float_path: Path, out: Path, model: onnx.ModelProto, per_channel: bool = True) -> Path:
    """`quantize_qdq` calibrated on seeded random batches (batch 1)."""
    calibration = [make_feeds(model, 1, 100 + k) for k in range(CALIBRATION_BATCHES)]
    return quantize_qdq(float_path, out, calibration, per_channel=per_channel)


def bn_outcomes(report: FoldReport) -> dict[str, tuple[str, str]]:
    """(outcome, reason) of every BatchNorm or affine record, by source module (node name when unknown)."""
    return {r.module or r.node: (r.outcome, r.reason) for r in report.records if r.kind in ("batchnorm", "affine")}


def zoo_row(name: str, work: Path, batches: int) -> str:
    """One Markdown row of part 1 for the built-in model `name`."""
    spec = get_spec(name)
    float_path = work / f"{name}.onnx"
    torch.manual_seed(0)  # the conv and linear weights: the same model every run
    export_onnx(spec.build(), spec.example_inputs(), float_path)
    model = onnx.load(float_path)
    float_report = fold_model(model).report
    label = name
    try:
        qdq = quantized(float_path, work / f"{name}.int8.onnx", model)
    except FoldnormError:  # ONNX Runtime's quantizer fails on grouped ConvTranspose per channel
        qdq = quantized(float_path, work / f"{name}.int8.onnx", model, per_channel=False)
        label = f"{name} (weights per tensor: the quantizer fails per channel)"
    folded = fold_model(qdq)
    save_model(folded.model, work / f"{name}.int8.folded.onnx")
    float_bn, qdq_bn = bn_outcomes(float_report), bn_outcomes(folded.report)
    refused = [f"{k}: {qdq_bn[k][1]}" for k, (o, _) in float_bn.items() if o == "folded" and
               qdq_bn.get(k, ("", ""))[0] != "folded"]
    feeds = [make_feeds(model, 4, 1000 + k) for k in range(batches)]
    fp32, unfolded, refolded = (run(p, feeds) for p in (float_path, qdq, work / f"{name}.int8.folded.onnx"))
    step = output_steps(onnx.load(qdq)).get(model.graph.output[0].name) or float(np.abs(unfolded[0]).max() / 127)
    steps = max(float(np.abs(a - b).max()) for a, b in zip(refolded, unfolded)) / step
    err_u, err_f = relative_error(unfolded, fp32), relative_error(refolded, fp32)
    labels = ", ".join(f"{n} {k}" for k, n in folded.report.quantization_counts().items()) or "-"
    return (f"| {label} | {float_report.folded} | {folded.report.folded} ({labels}) | "
            f"{'; '.join(refused) or '-'} | {err_u:.4f} | {err_f:.4f} | {err_f / err_u:.2f} | {steps:.1f} |")


def variants(name: str, shape: tuple[int, ...], work: Path) -> dict[str, Path]:
    """The six models of part 2."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    spec = get_spec(name)
    paths = {"fp32 unfolded": work / "fp32.onnx", "fp32 folded": work / "fp32-folded.onnx"}
    torch.manual_seed(0)
    export_onnx(spec.build(), [torch.randn(shape)], paths["fp32 unfolded"])
    model = onnx.load(paths["fp32 unfolded"])
    save_model(fold_model(model).model, paths["fp32 folded"])
    unfolded = quantized(paths["fp32 unfolded"], work / "q-unfolded.onnx", model)
    paths["int8 quantize->fold: unfolded"] = unfolded
    paths["int8 quantize->fold: folded"] = save_model(fold_model(unfolded).model, work / "q-folded.onnx")
    paths["int8 fold->quantize"] = quantized(paths["fp32 folded"], work / "fq.onnx", model)
    # ORT's symbolic shape inference fails on torch's dynamo exports; its optimizer step is what folds BN.
    quant_pre_process(str(paths["fp32 unfolded"]), str(work / "pre.onnx"), skip_symbolic_shape=True)
    paths["int8 pre-process->quantize"] = quantized(work / "pre.onnx", work / "pq.onnx", model)
    return paths


def latency_rows(paths: dict[str, Path], feeds: dict[str, np.ndarray], iterations: int,
                 batches: list[dict[str, np.ndarray]]) -> list[str]:
    """Markdown rows of part 2: per optimization level, every variant timed interleaved on `feeds`; errors
    against fp32 over `batches`."""
    refs = run(paths["fp32 unfolded"], batches)
    errors = {v: relative_error(run(p, batches), refs) for v, p in paths.items()}
    bns = {v: sum(n.op_type == "BatchNormalization" for n in onnx.load(p).graph.node) for v, p in paths.items()}
    rows = []
    for opt in ("disabled", "all"):
        with ExitStack() as opened:
            sessions = {v: opened.enter_context(OrtSession(str(p), OrtOptions(opt=opt, threads=1)))
                        for v, p in paths.items()}
            timed = {v: Timed(partial(s.run_timed, s.prepare(feeds)), s.synchronize) for v, s in sessions.items()}
            stats, samples = time_interleaved(timed, warmup=5, min_time_s=0.0, max_iterations=iterations,
                                              min_iterations=iterations)
        for v in paths:
            base = "fp32 unfolded" if v.startswith("fp32") else "int8 quantize->fold: unfolded"
            ratio = np.median(np.asarray(samples[base]) / np.asarray(samples[v]))
            rows.append(f"| opt={opt} | {v} | {bns[v]} | {stats[v].p50_ms:.3f} | {stats[v].p90_ms:.3f} | "
                        f"{ratio:.3f} | {errors[v]:.4f} |")
    return rows


def main() -> None:
    """Run both parts, print the Markdown and save it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18-bn")
    parser.add_argument("--shape", default="1x3x224x224")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.shape.split("x"))
    lines = [f"CPU: {cpu_model()}, {cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start", "",
             "## Part 1: the zoo, quantized by ONNX Runtime, then folded", "",
             "| model | folded in fp32 | folded in QDQ | fp32-folded BN not folded in QDQ | rel err QDQ unfolded | "
             "rel err QDQ folded | ratio | folded vs unfolded (output steps) |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="foldnorm-qdq-") as tmp:
        work = Path(tmp)
        for name in REGISTRY:
            (work / name).mkdir()
            lines.append(zoo_row(name, work / name, args.batches))
            print(lines[-1], flush=True)
        lines += ["", f"## Part 2: {args.model} {args.shape}, ort-cpu, 1 thread, {args.iterations} interleaved runs",
                  "", "| config | variant | BN left | p50 ms | p90 ms | speed-up | rel err vs fp32 |",
                  "|---|---|---|---|---|---|---|"]
        (work / "latency").mkdir()
        paths = variants(args.model, shape, work / "latency")
        model = onnx.load(paths["fp32 unfolded"])
        batches = [make_feeds(model, 4, 1000 + k) for k in range(args.batches)]
        lines += latency_rows(paths, make_feeds(model, shape[0], 7), args.iterations, batches)
    lines += ["", "speed-up: median of per-round ratios against fp32 unfolded (fp32 rows) or the unfolded QDQ "
              "model (int8 rows); rel err: max |out - fp32| / max |fp32|, mean over "
              f"{args.batches} random batches of 4."]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
