"""Multi-branch models folded by foldnorm vs the model's own reparameterized export, side by side.

For each training-form export given (RepVGG, MobileOne, FastViT, RepGhost, RepViT: `<name>.<exporter>.onnx`,
exported without `reparameterize()`, every BatchNorm kept), the files next to it are the same weights after
timm's `reparameterize_model()`, `<name>.reparam.<exporter>.onnx` from the same exporter when there is one, else
`<name>.reparam.legacy.onnx`, and `<name>.io.npz` (an input). Those files are made by
`/work/benchvenv/bin/python benchmarks/zoo/export_zoo.py` (timm lives in that benchmark venv, never in
foldnorm's dependencies; random init, BN statistics calibrated, BN affine parameters randomised; it exports
the reparameterized models with the legacy exporter).

Per model, three variants: `unfolded` (the training export), `foldnorm` (`fold_model` with every rule) and
`reparam` (the model's own deploy form). Counted: BatchNormalization and Conv nodes. Accuracy: max |foldnorm -
unfolded| relative to max |unfolded| on the io.npz input, ONNX Runtime CPU with optimizations disabled, fp32.
Latency: ONNX Runtime CPU, all optimizations, 1 intra-op thread, batch 1; foldnorm and reparam interleaved
(order reversed every round) until each has run `--min-time` seconds, then unfolded and foldnorm the same way;
the ratios are medians of the per-round ratios (with their 25-75% range), so load that comes and goes cancels.
Prints the table and saves it to benchmarks/results/rep_merge.md.

    .venv/bin/python benchmarks/rep_merge.py /work/zoo/{repvgg_a0,mobileone_s0,fastvit_t8,repghostnet_050,\
repvit_m0_9}.{legacy,dynamo}.onnx [--min-time 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np
import onnx

from foldnorm.bench.backends.ort_cpu import OrtOptions, OrtSession
from foldnorm.bench.environment import cpu_count, cpu_model
from foldnorm.bench.timing import Timed, time_interleaved
from foldnorm.fold.engine import fold_model
from foldnorm.onnxgraph.modelio import load_model, save_model

RESULTS = Path(__file__).parent / "results" / "rep_merge.md"
VARIANTS = ("unfolded", "foldnorm", "reparam")
HEADER = ("| model | export (reparam) | BN unfolded / foldnorm / reparam | Conv unfolded / foldnorm / reparam "
          "| max rel err | unfolded ms | foldnorm ms | reparam ms | foldnorm / reparam (IQR) | unfolded / foldnorm |")


def max_rel_error(unfolded: Path, folded: Path, feeds: dict[str, np.ndarray]) -> float:
    """Max |folded - unfolded| over max |unfolded|, ONNX Runtime with optimizations disabled."""
    outputs = []
    for path in (unfolded, folded):
        with OrtSession(str(path), OrtOptions(opt="disabled")) as session:
            outputs.append(session.run(feeds)[0].astype(np.float64))
    return float(np.max(np.abs(outputs[1] - outputs[0])) / np.max(np.abs(outputs[0])))


def ratio(samples: dict[str, list[float]], top: str, bottom: str) -> str:
    """Median of the per-round ratios top/bottom, with the 25-75% range."""
    r = np.asarray(samples[top]) / np.asarray(samples[bottom])
    q25, q50, q75 = np.percentile(r, [25, 50, 75])
    return f"{q50:.3f} ({q25:.2f}-{q75:.2f})"


def row(path: Path, min_time: float, tmp: Path) -> str:
    """Fold one export, count and compare, time foldnorm against reparam and unfolded against foldnorm; one
    Markdown table row."""
    name, exporter = path.name.split(".")[:2]
    reparam = path.with_name(f"{name}.reparam.{exporter}.onnx")
    if not reparam.exists():
        reparam = path.with_name(f"{name}.reparam.legacy.onnx")
    inputs = np.load(path.with_name(f"{name}.io.npz"))["input"]
    model = load_model(path)
    folded_path = save_model(fold_model(model, in_place=True).model, tmp / f"{name}.{exporter}.folded.onnx")
    paths = {"unfolded": path, "foldnorm": folded_path, "reparam": reparam}
    graphs = {v: onnx.load(str(p), load_external_data=False).graph for v, p in paths.items()}
    ops = {v: Counter(node.op_type for node in g.node) for v, g in graphs.items()}
    feeds = {v: {g.input[0].name: inputs} for v, g in graphs.items()}
    error = max_rel_error(path, folded_path, feeds["unfolded"])
    options = OrtOptions(opt="all", threads=1)
    with ExitStack() as opened:
        sessions = {v: opened.enter_context(OrtSession(str(p), options)) for v, p in paths.items()}
        timed = {v: Timed(partial(s.run_timed, s.prepare(feeds[v])), s.synchronize) for v, s in sessions.items()}
        # two pairs, not rounds of three: in A B C / C B A rounds the middle variant never runs twice in a row
        # while the other two do at every turn of the order, which favours them with warm caches
        near, near_samples = time_interleaved({v: timed[v] for v in ("foldnorm", "reparam")}, warmup=10,
                                              min_time_s=min_time)
        far, far_samples = time_interleaved({v: timed[v] for v in ("unfolded", "foldnorm")}, warmup=10,
                                            min_time_s=min_time)
    bn = " / ".join(str(ops[v]["BatchNormalization"]) for v in VARIANTS)
    conv = " / ".join(str(ops[v]["Conv"]) for v in VARIANTS)
    ms = f"{far['unfolded'].p50_ms:.2f} | {near['foldnorm'].p50_ms:.2f} | {near['reparam'].p50_ms:.2f}"
    kind = reparam.name.split(".")[2]
    return (f"| {name} | {exporter} ({kind}) | {bn} | {conv} | {error:.1e} | {ms} "
            f"| {ratio(near_samples, 'foldnorm', 'reparam')} | {ratio(far_samples, 'unfolded', 'foldnorm')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", type=Path, help="training-form exports, <name>.<exporter>.onnx")
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds each variant runs per model")
    args = parser.parse_args()
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.exports:
            lines.append(row(path, args.min_time, Path(tmp)))
            print(lines[-1], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join([setup(args.min_time), "", *lines]) + "\n")
    print(f"saved {RESULTS}")


def setup(min_time: float) -> str:
    """The line above the saved table: what was timed, how, and on what."""
    return (f"ONNX Runtime CPU, all optimizations, 1 thread, batch 1; foldnorm/reparam and unfolded/foldnorm "
            f"interleaved, {min_time} s per variant and pair; {cpu_count()} CPUs ({cpu_model()}), 1-min load "
            f"average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
