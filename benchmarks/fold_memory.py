"""Peak memory of folding a model larger than 2 GB (weights in an external data file).

Builds a chain of Conv+BatchNormalization layers whose weights are written straight to disk (the builder
never holds the whole model), then folds it with the library in a fresh subprocess and reads that process's peak
resident set size (VmHWM from /proc/self/status, which starts afresh at exec; ru_maxrss would carry the
parent's peak over fork). Prints a table and saves it under benchmarks/results/ (Linux only).
Needs about 3x the model size free on disk; deletes the files after.

    python benchmarks/fold_memory.py --layers 12 --channels 2304   # ~2.3 GB model
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RESULTS = Path(__file__).parent / "results"

# Runs in the child: fold through the library, write the result, report what it did.
PEAK = "int(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')).split()[1]) * 1024"
CHILD = f"""
import json, sys, time
from foldnorm import fold_file
start = time.perf_counter()
result = fold_file(sys.argv[1], sys.argv[2], verify=sys.argv[3] == "verify", batch_sizes=(1,))
print(json.dumps({{"seconds": time.perf_counter() - start, "summary": result.report.summary(),
                  "verify": result.verify.summary() if result.verify else None, "peak": {PEAK}}}))
"""


def build(path: Path, layers: int, channels: int, seed: int = 0) -> int:
    """Write the model and its external data file; return the bytes of weights."""
    rng = np.random.default_rng(seed)
    data_name = path.name + ".data"
    nodes, inits = [], []
    offset = 0
    with open(path.parent / data_name, "wb") as data:
        x = "x"
        for i in range(layers):
            w = rng.standard_normal((channels, channels, 3, 3), dtype=np.float32)
            w *= 1.0 / np.sqrt(channels * 9)
            tensor = TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=w.shape)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(w.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            data.write(w.tobytes())
            offset += w.nbytes
            del w
            inits.append(tensor)
            bn = {f"s{i}": rng.uniform(0.5, 1.5, channels), f"b{i}": rng.normal(0, 0.5, channels),
                  f"m{i}": rng.normal(0, 0.5, channels), f"v{i}": rng.uniform(0.5, 2.0, channels)}
            inits += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in bn.items()]
            nodes.append(helper.make_node("Conv", [x, f"W{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *bn], [f"y{i}"]))
            x = f"y{i}"
    graph = helper.make_graph(
        nodes, "big_conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 2, 2])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", channels, 2, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return offset


def fold_in_child(model: Path, out: Path, mode: str) -> dict[str, object]:
    """Fold in a fresh interpreter; return its output, wall time and peak RSS."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), str(out), mode],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"fold failed ({mode}):\n{proc.stderr}")
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def baseline_rss() -> int:
    """Peak RSS of a child that only imports foldnorm (interpreter + onnx + numpy)."""
    code = f"import foldnorm; print({PEAK})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--channels", type=int, default=2304)
    parser.add_argument("--mode", choices=["no-verify", "verify"], default="no-verify")
    parser.add_argument("--workdir", type=Path, default=None, help="Where the big files go (default: a temp dir).")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="foldnorm-mem-", dir=args.workdir))
    try:
        model = work / "big.onnx"
        start = time.perf_counter()
        weight_bytes = build(model, args.layers, args.channels)
        build_s = time.perf_counter() - start
        model_bytes = model.stat().st_size + (work / "big.onnx.data").stat().st_size
        onnx.checker.check_model(str(model))
        base = baseline_rss()
        run = fold_in_child(model, work / "folded.onnx", args.mode)
        out_bytes = sum(p.stat().st_size for p in work.glob("folded.onnx*"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peak = int(str(run["peak"]))
    gib = 1024**3
    rows = [
        ("model size (graph + external data)", f"{model_bytes / gib:.2f} GiB"),
        ("weights", f"{args.layers} Conv [{args.channels},{args.channels},3,3] fp32, {weight_bytes / gib:.2f} GiB"),
        ("mode", args.mode),
        ("peak RSS of the folding process", f"{peak / gib:.2f} GiB"),
        ("peak RSS / model size", f"{peak / model_bytes:.2f}x"),
        ("baseline RSS (python + import foldnorm)", f"{base / gib:.2f} GiB"),
        ("(peak - baseline) / model size", f"{(peak - base) / model_bytes:.2f}x"),
        ("fold wall time", f"{run['seconds']:.1f} s (build {build_s:.1f} s)"),
        ("output size", f"{out_bytes / gib:.2f} GiB"),
        ("fold report", str(run["summary"])),
        ("verify", str(run["verify"])),
        ("machine", f"{platform.machine()}, python {platform.python_version()}, onnx {onnx.__version__}"),
    ]
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    target = RESULTS / f"fold_memory_{args.mode}.txt"
    target.write_text(f"# {stamp}: python benchmarks/fold_memory.py --layers {args.layers} "
                      f"--channels {args.channels} --mode {args.mode}\n{text}\n")
    print(f"saved {target}")


if __name__ == "__main__":
    main()
