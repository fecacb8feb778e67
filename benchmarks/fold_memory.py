"""Peak memory of `fold` and `inspect`: big models (external data and inline) and a graph of many small tensors.

Builds, without ever holding a whole model in memory:

  external   `--layers` Conv [C,C,3,3] + BatchNormalization layers (C = `--channels`), weights in a data file
  inline     the same model as one .onnx file (under protobuf's 2 GiB limit: `--inline-layers` layers)
  small      `--pairs` Conv [1,1,1,1] + BatchNormalization pairs with 1-channel parameters (a graph of many
             small tensors: about 215 bytes of file per pair)

then runs each case in a fresh interpreter and reads its peak resident set size (VmHWM from
/proc/self/status, which starts afresh at exec; ru_maxrss would carry the parent's peak over the fork).
`fold-*` folds without verification, `verify-*` with it (one batch size); `load-small` only parses the small
model with `onnx.load`: the floor of any tool that holds the model as protobuf messages. Prints a table with
the targets of issue 11 (fold: peak <= 1.5x the model size inline, <= 1.3x with external data, <= 10x the
file for small tensors; inspect: independent of the weights) and the peak of a child that only imports
foldnorm, onnx and numpy (the base), and saves it to benchmarks/results/fold_memory.txt (Linux only). Needs
about 3x the models' size free in `--workdir` (default: a temp dir under /tmp); deletes the files after.

    python benchmarks/fold_memory.py                      # 2.2 GB external, 1.6 GB inline, 200k pairs (43 MB)
    python benchmarks/fold_memory.py --cases load-small,fold-small --pairs 50000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

RESULTS = Path(__file__).parent / "results"
GIB = 1024**3

PEAK = "int(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')).split()[1]) * 1024"
# Runs in the child: one fold or inspect through the library, then its peak.
CHILD = f"""
import json, sys, time
import foldnorm
from foldnorm.fold.engine import inspect_model
start = time.perf_counter()
if sys.argv[1] == "load":
    import onnx
    onnx.load(sys.argv[2])
    summary, verify = "onnx.load only", None
elif sys.argv[1] == "inspect":
    summary, verify = inspect_model(sys.argv[2]).summary(), None
else:
    result = foldnorm.fold_file(sys.argv[2], sys.argv[3], verify=sys.argv[1] == "verify", batch_sizes=(1,))
    summary, verify = result.report.summary(), result.verify.summary() if result.verify else None
print(json.dumps({{"seconds": time.perf_counter() - start, "summary": summary, "verify": verify, "peak": {PEAK}}}))
"""

SMALL = """
import sys
import numpy as np
import onnx
from onnx import TensorProto, helper
pairs, path = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
graph = onnx.GraphProto(name="small")
x = "x"
for i in range(pairs):
    values = rng.uniform(0.5, 1.5, 5).astype(np.float32)
    for name, v in zip(("w", "s", "b", "m", "v"), values):
        graph.initializer.append(helper.make_tensor(f"{name}{i}", TensorProto.FLOAT, [1, 1, 1, 1] if name == "w"
                                                    else [1], v.tobytes(), raw=True))
    graph.node.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"]))
    graph.node.append(helper.make_node("BatchNormalization", [f"c{i}", f"s{i}", f"b{i}", f"m{i}", f"v{i}"], [f"y{i}"]))
    x = f"y{i}"
graph.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4]))
graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 1, 4, 4]))
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
with open(path, "wb") as f:
    f.write(model.SerializeToString())
"""

INLINE = """
import sys
from pathlib import Path
from foldnorm.onnxgraph.external import write_inline
from foldnorm.onnxgraph.modelio import load_model
write_inline(load_model(sys.argv[1], keep_weights_on_disk=True), Path(sys.argv[2]))
"""


def build_wide(path: Path, layers: int, channels: int) -> None:
    """Conv+BN layers with external data (`fold_speed.py`'s builder, in a child: this process stays small)."""
    subprocess.run([sys.executable, str(Path(__file__).parent / "fold_speed.py"), "--build", "wide", str(path),
                    "--wide-layers", str(layers), "--wide-channels", str(channels)], check=True)


def run_child(*argv: str) -> dict[str, object]:
    """One case in a fresh interpreter: its output, wall time and peak RSS."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stderr[-3000:]}")
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def baseline_rss() -> int:
    """Peak RSS of a child that only imports foldnorm and the modules every fold loads (onnx, numpy: `import
    foldnorm` alone loads them lazily)."""
    code = f"import foldnorm, numpy, onnx; print({PEAK})"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def size_of(model: Path) -> int:
    return sum(p.stat().st_size for p in model.parent.glob(model.name + "*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12, help="external model: Conv+BN layers")
    parser.add_argument("--inline-layers", type=int, default=9, help="inline model: Conv+BN layers (< 2 GiB)")
    parser.add_argument("--channels", type=int, default=2304)
    parser.add_argument("--pairs", type=int, default=200_000, help="small model: Conv+BN pairs")
    parser.add_argument("--cases", default="fold-external,fold-inline,verify-external,inspect-external,"
                        "inspect-inline,load-small,fold-small")
    parser.add_argument("--workdir", type=Path, default=None, help="where the big files go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fold_memory.txt")
    args = parser.parse_args()
    cases = args.cases.split(",")
    work = Path(tempfile.mkdtemp(prefix="foldnorm-mem-", dir=args.workdir))
    rows: list[tuple[str, str, str, str, str, str, str]] = []
    try:
        models: dict[str, Path] = {}
        if any(c.endswith("-external") for c in cases):
            models["external"] = work / "external.onnx"
            build_wide(models["external"], args.layers, args.channels)
        if any(c.endswith("-inline") for c in cases):
            source = work / "source.onnx"
            build_wide(source, args.inline_layers, args.channels)
            models["inline"] = work / "inline.onnx"
            subprocess.run([sys.executable, "-c", INLINE, str(source), str(models["inline"])], check=True)
            for p in work.glob("source.onnx*"):
                p.unlink()
        if any(c.endswith("-small") for c in cases):
            models["small"] = work / "small.onnx"
            subprocess.run([sys.executable, "-c", SMALL, str(args.pairs), str(models["small"])], check=True)
        base = baseline_rss()
        for case in cases:
            mode, kind = case.split("-")
            model = models[kind]
            size = size_of(model)
            out = work / "out.onnx"
            print(f"{case}: {size / GIB:.2f} GiB", file=sys.stderr)
            run = run_child(mode, str(model)) if mode in ("inspect", "load") else \
                run_child("verify" if mode == "verify" else "fold", str(model), str(out))
            for p in work.glob("out.onnx*"):
                p.unlink()
            peak = int(str(run["peak"]))
            target = {"fold-inline": "<= 1.5x", "fold-external": "<= 1.3x", "verify-external": "<= 1.3x",
                      "fold-small": "<= 10x", "load-small": "(the floor)"}.get(case, "independent of weights")
            rows.append((case, f"{size / 2**20:,.0f} MiB", f"{peak / 2**20:,.0f} MiB", f"{peak / size:.2f}x",
                         f"{(peak - base) / size:.2f}x", f"{float(str(run['seconds'])):.1f}", target))
            print(f"  {rows[-1]}  {run['summary']}  {run['verify'] or ''}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = ("case", "model size", "peak RSS", "peak / size", "(peak - base) / size", "wall s", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"# {time.strftime('%Y-%m-%d')}: python benchmarks/fold_memory.py {' '.join(sys.argv[1:])}".rstrip(),
             f"external: {args.layers} Conv [{args.channels},{args.channels},3,3] fp32 + BN, weights in a data file; "
             f"inline: {args.inline_layers} such layers in one file; small: {args.pairs:,} Conv [1,1,1,1] + BN pairs",
             f"base (python + import foldnorm, onnx, numpy): {base / 2**20:.0f} MiB; {platform.machine()}, python "
             f"{platform.python_version()}, onnx {onnx.__version__}, {os.cpu_count()} CPUs",
             "",
             "  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths),
             *("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"saved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
