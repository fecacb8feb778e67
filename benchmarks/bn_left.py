"""BatchNorms left by `fold` with and without the rules of issue 13 (reshape-bn, concat-bn, bn-linear, affine-conv,
bn-constant), against ONNX Runtime's own fusion, and ONNX Runtime latency of the folded models against the unfolded
one.

For every model given: the BatchNormalization nodes in the file, those left after folding without the new rules
(skipped; issue 13's classifier, IR and opset fixes apply in both) and with every rule, how many the classifier
keeps as a tracked InstanceNorm (a Reshape -> BN -> Reshape proving torch's pattern), those ONNX Runtime's basic
level leaves (its Conv/Gemm+BN fusions and constant folding: the graph it saves with `optimized_model_filepath`),
and the folded model's max relative error against the unfolded one (ONNX Runtime, optimizations disabled,
`foldnorm verify`'s check). For every `--latency` model:
unfolded, folded without and with the new rules, timed on ONNX Runtime CPU (each `--opt`, default all, i.e.
ORT_ENABLE_ALL; `--threads` intra-op threads, default 1; no spinning), interleaved round by round; the speed-up
is the median (and IQR) of the per-round ratios unfolded/folded. Prints the tables and saves them to `--out`.

The models are the third-party exports of the zoo (timm, transformers; random init, calibrated BN), made by
`/work/benchvenv/bin/python benchmarks/zoo/export_zoo.py`, and ONNX's light models (IR 3, from the onnx package's
backend test data, `onnx/backend/test/data/light/`):

    Z=/work/zoo; .venv/bin/python benchmarks/bn_left.py \\
        $Z/{levit_128s,hf_levit,mixnet_s,repvit_m0_9,efficientvit_m0,resnetv2_50x1_bit,hf_bit}.{legacy,dynamo}.onnx \\
        $Z/onnx_light/light_{resnet50,shufflenet,inception_v2,densenet121}.onnx \\
        --latency $Z/levit_128s.legacy.onnx --latency $Z/levit_128s.dynamo.onnx --opt all --opt disabled
"""

from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import onnx

from foldnorm import FoldOptions, compare_models, fold_model
from foldnorm.bench.backends.base import OPT_LEVELS, OptLevel
from foldnorm.bench.backends.ort_cpu import OrtOptions, OrtSession
from foldnorm.bench.environment import cpu_count, cpu_model
from foldnorm.bench.speedup import paired_speedup
from foldnorm.bench.timing import Timed, time_interleaved
from foldnorm.onnxgraph.inputs import make_feeds
from foldnorm.onnxgraph.modelio import load_model, save_model

NEW_RULES = ("reshape-bn", "concat-bn", "bn-linear", "affine-conv", "bn-constant")
VARIANTS = {"before": FoldOptions(skip=NEW_RULES), "after": FoldOptions()}
RESULTS = Path(__file__).parent / "results" / "bn_left.md"


def batchnorms(graph: onnx.GraphProto) -> int:
    """BatchNormalization nodes in `graph` and its subgraphs."""
    count = 0
    for node in graph.node:
        count += node.op_type == "BatchNormalization"
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                count += batchnorms(sub)
    return count


def ort_basic_batchnorms(path: str) -> int:
    """BatchNormalization nodes left in the graph ONNX Runtime's basic optimization level saves for `path`."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(Path(tmp) / "basic.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return batchnorms(onnx.load(so.optimized_model_filepath).graph)


def bn_left_row(path: str) -> str:
    """One table row: BNs in the file, left before/after the new rules, kept as InstanceNorm, left by ORT basic,
    errors."""
    model = load_model(path)
    cells = [Path(path).name, str(batchnorms(model.graph))]
    errors = []
    for options in VARIANTS.values():
        result = fold_model(model, options=options)
        cells.append(str(batchnorms(result.model.graph)))
        errors.append(f"{compare_models(model, result.model).max_rel:.2g}")
    kept_in = sum(r.op_type == "BatchNormalization" and r.kind == "instancenorm" for r in result.report.records)
    return "| " + " | ".join([*cells, str(kept_in), str(ort_basic_batchnorms(path)), *errors]) + " |"


def latency_rows(path: str, opt: OptLevel, threads: int, min_time: float) -> list[str]:
    """Rows of p50/p90 and the paired speed-up of each folded variant over the unfolded model."""
    model = load_model(path)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as opened:
        paths = {"unfolded": path}
        for name, fold_options in VARIANTS.items():
            paths[f"folded {name}"] = str(save_model(fold_model(model, options=fold_options).model,
                                                     Path(tmp) / f"{name}.onnx"))
        feeds = make_feeds(model, 1, 0)
        ort_options = OrtOptions(opt=opt, threads=threads)
        sessions = {v: opened.enter_context(OrtSession(p, ort_options)) for v, p in paths.items()}
        timed = {v: Timed(partial(s.run_timed, s.prepare(feeds)), s.synchronize) for v, s in sessions.items()}
        stats, samples = time_interleaved(timed, warmup=10, min_time_s=min_time)
    rows = []
    for variant, latency in stats.items():
        median, (lo, hi) = paired_speedup(samples["unfolded"], samples[variant])
        rows.append(f"| {Path(path).name} | {variant} | {latency.p50_ms:.3f} | {latency.p90_ms:.3f} | "
                    f"{latency.iterations} | {median:.3f} | {lo:.2f}-{hi:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="ONNX files to count BatchNorms in")
    parser.add_argument("--latency", action="append", default=[], help="an ONNX file to time (repeatable)")
    parser.add_argument("--opt", choices=OPT_LEVELS, action="append",
                        help="ONNX Runtime optimization level (repeatable; default all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-time", type=float, default=5.0, help="seconds per variant at least")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    lines = [f"BatchNormalization nodes left by `fold` before issue 13's rules ({', '.join(NEW_RULES)} skipped) "
             "and after; max rel error of each folded model vs the unfolded one (ORT, optimizations disabled).", "",
             "| model | BN in file | BN left before | BN left after | kept as InstanceNorm (after) | "
             "BN left by ORT basic | max rel err before | max rel err after |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for path in args.models:
        lines.append(bn_left_row(path))
        print(lines[-1], flush=True)
    for opt in (args.opt or ["all"]) if args.latency else []:
        block = ["", f"ONNX Runtime CPU, opt={opt}, {args.threads} thread(s), batch 1, interleaved rounds, at "
                 f"least {args.min_time} s per variant; speed-up: median (IQR) of per-round unfolded/variant ratios.",
                 "", "| model | variant | p50 ms | p90 ms | runs | speed-up | IQR |", "|---|---|---|---|---|---|---|"]
        print("\n".join(block), flush=True)
        lines += block
        for path in args.latency:
            for row in latency_rows(path, opt, args.threads, args.min_time):
                lines.append(row)
                print(row, flush=True)
    lines += ["", f"{cpu_count()} CPUs ({cpu_model()}), 1-min load average at the end {os.getloadavg()[0]:.1f}"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
