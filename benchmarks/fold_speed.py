"""Fold speed as whole processes: foldnorm vs a plain python load + save, onnxscript's rules and ONNX Runtime.

Builds two unfolded models, then times each tool as a fresh process on each model, interleaved round by round
(the order rotates every round; `sync` before each run, so that none pays for the writes of the one before),
`--repeats` rounds:

  resnet50   a ResNet-50 (25.6M parameters, 53 Conv+BatchNormalization, random weights and BN statistics),
             one inline .onnx file of 102 MB
  wide-1gb   `--wide-layers` Conv [C,C,3,3]+BatchNormalization layers (C = `--wide-channels`) with the
             weights in an external data file (about 1 GB by default)

  load+save        python -c: onnx.load + onnx.save (external data: load it, save it as external data)
  foldnorm         `foldnorm fold IN -o OUT --no-verify` (checked load, fold, atomic save)
  foldnorm+verify  `foldnorm fold IN -o OUT` (the default: the fold, then ONNX Runtime compares both models at
                   batch sizes 1 and 2 before the output is committed)
  onnxscript       python -c: onnx_ir.load, onnxscript's fuse_batchnorm_into_{conv,conv_transpose,gemm} rules,
                   onnx_ir.save (external data: to a data file)
  ort-basic        python -c: onnxruntime.InferenceSession at ORT_ENABLE_BASIC with optimized_model_filepath,
                   ONNX Runtime's own offline Conv+BN fusion (external data: to a data file)

Each row: median wall time and its ratio to load+save's median, CPU time (user + system, from wait4) and
peak RSS of the process, BatchNormalization nodes left in the output. A process start-up row times
`python -c "import onnx"` and `foldnorm --help`; a verification row gives foldnorm+verify less foldnorm as a
multiple of foldnorm. Then (`--profile`) the verification's floor in-process (ONNX Runtime's own compute of
both models at batch sizes 1 and 2: plain, with the fold's record tensors exposed, and so side by side) and the
phases of one foldnorm fold in-process, to show where the time goes. Files go to `--workdir` (default /dev/shm
for the ResNet-50, /tmp for the external-data model: it needs about 4x its size free). foldnorm's modules are
byte-compiled first, as pip does when it installs a package (the other tools' packages come compiled).

Usage:  .venv/bin/python benchmarks/fold_speed.py [--repeats 5] [--models resnet50,wide-1gb]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent


class ResNet50Builder:
    """Writes the nodes and random initializers of an unfolded ResNet-50 (Conv without bias + BN)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def _init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, name: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        w = self._init(f"{name}.weight", self.rng.normal(0, (2.0 / (cin * k * k)) ** 0.5, (cout, cin, k, k)))
        pad = k // 2
        self.nodes.append(helper.make_node("Conv", [x, w], [f"{name}_conv"], name=f"{name}/Conv",
                                           kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))
        bn = [self._init(f"{name}.bn.{p}", v) for p, v in (
            ("weight", self.rng.uniform(0.5, 1.5, cout)), ("bias", self.rng.normal(0, 0.1, cout)),
            ("running_mean", self.rng.normal(0, 0.1, cout)), ("running_var", self.rng.uniform(0.5, 2, cout)))]
        out = f"{name}_bn"
        self.nodes.append(helper.make_node("BatchNormalization", [f"{name}_conv", *bn], [out],
                                           name=f"{name}/BatchNormalization", epsilon=1e-5))
        if relu:
            self.nodes.append(helper.make_node("Relu", [out], [f"{name}_relu"], name=f"{name}/Relu"))
            return f"{name}_relu"
        return out

    def bottleneck(self, x: str, name: str, cin: int, width: int, stride: int) -> str:
        h = self.conv_bn(x, f"{name}.conv1", cin, width, 1)
        h = self.conv_bn(h, f"{name}.conv2", width, width, 3, stride)
        h = self.conv_bn(h, f"{name}.conv3", width, width * 4, 1, relu=False)
        skip = x if stride == 1 and cin == width * 4 else \
            self.conv_bn(x, f"{name}.downsample", cin, width * 4, 1, stride, relu=False)
        self.nodes.append(helper.make_node("Add", [h, skip], [f"{name}_add"], name=f"{name}/Add"))
        self.nodes.append(helper.make_node("Relu", [f"{name}_add"], [f"{name}_out"], name=f"{name}/Relu"))
        return f"{name}_out"

    def build(self) -> onnx.ModelProto:
        h = self.conv_bn("input", "conv1", 3, 64, 7, 2)
        self.nodes.append(helper.make_node("MaxPool", [h], ["pool"], kernel_shape=[3, 3], strides=[2, 2],
                                           pads=[1, 1, 1, 1]))
        h, cin = "pool", 64
        for layer, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
            for b in range(blocks):
                h = self.bottleneck(h, f"layer{layer}.{b}", cin, width, 2 if b == 0 and layer > 1 else 1)
                cin = width * 4
        fc_w = self._init("fc.weight", self.rng.normal(0, 0.02, (1000, 2048)))
        fc_b = self._init("fc.bias", np.zeros(1000))
        self.nodes += [helper.make_node("GlobalAveragePool", [h], ["gap"]),
                       helper.make_node("Flatten", ["gap"], ["flat"]),
                       helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], transB=1)]
        graph = helper.make_graph(
            self.nodes, "resnet50",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def build_wide(path: Path, layers: int, channels: int, seed: int = 0, spatial: int = 2) -> int:
    """Write a chain of Conv [C,C,3,3] + BatchNormalization layers with the weights in `<path>.data`, never
    holding more than one weight; return the bytes of weights."""
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
        nodes, "wide_conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, spatial, spatial])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", channels, spatial, spatial])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return offset


LOAD_SAVE = """
import sys, onnx
src, dst, external = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
model = onnx.load(src)
if external:
    onnx.save(model, dst, save_as_external_data=True, location=dst.rsplit("/", 1)[-1] + ".data")
else:
    onnx.save(model, dst)
"""

ONNXSCRIPT = """
import sys
import onnx_ir as ir
from onnxscript.rewriter import RewriteRuleSet, rewrite
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule, fuse_batchnorm_into_gemm_rule)
src, dst, external = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
rules = RewriteRuleSet([fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule,
                        fuse_batchnorm_into_gemm_rule])
model = rewrite(ir.load(src), pattern_rewrite_rules=rules)
if external:
    ir.save(model, dst, external_data=dst.rsplit("/", 1)[-1] + ".data")
else:
    ir.save(model, dst)
"""

ORT_BASIC = """
import sys
import onnxruntime as ort
src, dst, external = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
so.optimized_model_filepath = dst
if external:
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                dst.rsplit("/", 1)[-1] + ".data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
"""


def _python(code: str) -> Callable[[Path, Path, bool], list[str]]:
    return lambda src, dst, external: [sys.executable, "-c", code, str(src), str(dst), "1" if external else "0"]


def _foldnorm(*extra: str) -> Callable[[Path, Path, bool], list[str]]:
    return lambda src, dst, external: [str(BIN / "foldnorm"), "fold", str(src), "-o", str(dst), *extra]


TOOLS: dict[str, Callable[[Path, Path, bool], list[str]]] = {
    "load+save": _python(LOAD_SAVE),
    "foldnorm": _foldnorm("--no-verify"),
    "foldnorm+verify": _foldnorm(),
    "onnxscript": _python(ONNXSCRIPT),
    "ort-basic": _python(ORT_BASIC),
}


@dataclass
class Runs:
    """Wall times, CPU times and peak RSS of one tool on one model."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    bn_left: int | None = None


def run_process(argv: list[str]) -> tuple[float, float, int]:
    """Run `argv`; return its wall time, CPU time (user + system) and peak RSS in bytes."""
    with tempfile.TemporaryFile() as err:  # (not a pipe: a child writing more than its buffer would block)
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{err.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


COUNT_BN = """
import sys, onnx
model = onnx.load(sys.argv[1], load_external_data=False)
print(sum(1 for n in model.graph.node if n.op_type == "BatchNormalization"))
"""


def batchnorms_in(path: Path) -> int:
    """BatchNormalization nodes of the model at `path`, counted in a child process (this one stays small:
    a child's peak RSS as wait4 reports it starts from its parent's at the fork)."""
    out = subprocess.run([sys.executable, "-c", COUNT_BN, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout)


def remove_outputs(dst: Path) -> None:
    for p in dst.parent.glob(dst.name + "*"):
        p.unlink()


def time_tools(src: Path, external: bool, repeats: int, tools: list[str]) -> dict[str, Runs]:
    """Every tool on `src`, round by round, the order rotated each round."""
    runs = {name: Runs() for name in tools}
    for r in range(repeats):
        order = tools[r % len(tools):] + tools[:r % len(tools)]
        for name in order:
            dst = src.parent / f"out-{name}.onnx"
            os.sync()  # no tool pays for the previous one's writes still on their way to the disk
            wall, cpu, rss = run_process(TOOLS[name](src, dst, external))
            runs[name].wall.append(wall)
            runs[name].cpu.append(cpu)
            runs[name].rss.append(rss)
            if runs[name].bn_left is None:
                runs[name].bn_left = batchnorms_in(dst)
            remove_outputs(dst)
    return runs


def startup(repeats: int) -> dict[str, float]:
    """Median wall time of `python -c "import onnx"` and `foldnorm --help`."""
    argvs = {"python -c 'import onnx'": [sys.executable, "-c", "import onnx"],
             "foldnorm --help": [str(BIN / "foldnorm"), "--help"]}
    times: dict[str, list[float]] = {k: [] for k in argvs}
    for _ in range(repeats):
        for name, argv in argvs.items():
            times[name].append(run_process(argv)[0])
    return {k: statistics.median(v) for k, v in times.items()}


def profile_fold(src: Path, verify: bool) -> str:
    """The profile of one `fold_file` in this process: its phases (cumulative time of foldnorm's functions) and
    the functions the time is spent in (internal time, any module)."""
    from foldnorm import fold_file

    dst = src.parent / "profiled.onnx"
    fold_file(src, dst, verify=verify)  # warm the imports and the page cache
    remove_outputs(dst)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(fold_file, src, dst, verify=verify)
    wall = time.perf_counter() - start
    remove_outputs(dst)
    lines = [f"fold_file(verify={verify}) in-process: {wall:.3f} s wall (under cProfile)"]
    for title, order, restrictions in (
            ("phases (cumulative time)", "cumulative", (r"foldnorm|SerializeToString|ParseFromString", 18)),
            ("where the time is spent (internal time)", "tottime", (12,))):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(*restrictions)
        lines += [f"{title}:", *(ln for ln in text.getvalue().splitlines() if ln.strip() and "function calls" not in
                                 ln and not ln.startswith(("   Ordered by", "   List reduced", "   Random")))]
    return "\n".join(lines)


def verify_floor(src: Path, repeats: int) -> str:
    """What a verification cannot go below, in this process: ONNX Runtime's own compute of both models (the
    input and its fold) at batch sizes 1 then 2 in a fresh session each (optimizations disabled, as the
    verification runs them): plain one after the other on every core, with the fold's record tensors exposed, and
    so exposed side by side (a thread each, on half the cores, as the verification runs small models); and the
    import of onnxruntime."""
    start = time.perf_counter()
    import onnxruntime  # noqa: F401  (numpy and onnx are imported already, as in foldnorm's CLI)

    imported = time.perf_counter() - start
    from foldnorm import fold_file
    from foldnorm.bench.backends.ort_cpu import OrtOptions, OrtSession
    from foldnorm.onnxgraph.inputs import make_feeds

    folded = src.parent / "floor.onnx"
    fold_file(src, folded, verify=False)
    models = [onnx.load(str(src)), onnx.load(str(folded))]
    remove_outputs(folded)
    records = [n.output[0] for n in models[0].graph.node if n.op_type == "BatchNormalization"]
    feeds = [make_feeds(models[0], b, seed=b) for b in (1, 2)]
    plain = [m.SerializeToString() for m in models]
    for m in models:
        m.graph.output.extend(onnx.ValueInfoProto(name=r) for r in records)
    exposed = [m.SerializeToString() for m in models]
    del models
    half = max(1, len(os.sched_getaffinity(0)) // 2)

    def run(model: bytes, threads: int, took: list[float]) -> None:
        with OrtSession(model, OrtOptions(threads=threads)) as session:
            opened = time.perf_counter()
            for feed in feeds:
                session.run(feed)
        took.append(time.perf_counter() - opened)

    modes = {"plain, one by one": (plain, 0), f"{len(records)} tensors exposed": (exposed, 0),
             f"... side by side ({half}+{half} threads)": (exposed, half)}
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in modes}
    for _ in range(repeats):
        for mode, (pair, threads) in modes.items():
            took: list[float] = []
            t0, c0 = time.perf_counter(), time.process_time()
            workers = [threading.Thread(target=run, args=(model, threads, took)) for model in pair]
            for worker in workers:
                worker.start()
                if not threads:
                    worker.join()
            for worker in workers:
                worker.join()
            wall = time.perf_counter() - t0
            runs = max(took) if threads else sum(took)
            times[mode].append((wall, runs, time.process_time() - c0))
    lines = [f"verification floor, in-process (median of {repeats}): import onnxruntime {imported:.3f} s; ONNX Runtime "
             "(optimizations disabled) on both models, a fresh session each (opened from bytes), batch 1 then 2:"]
    for mode, t in times.items():
        lines.append(f"  {mode:<32} {statistics.median(x[0] for x in t):.3f} s wall, of which runs "
                     f"{statistics.median(x[1] for x in t):.3f} s; CPU {statistics.median(x[2] for x in t):.3f} s")
    return "\n".join(lines)


def table(model: str, size: int, runs: dict[str, Runs], repeats: int) -> list[str]:
    base = statistics.median(runs["load+save"].wall) if "load+save" in runs else None
    lines = [f"{model}: {size / 1e6:.0f} MB; median of {repeats} interleaved runs",
             f"{'tool':<16} {'wall s':>7} {'min s':>7} {'x load+save':>12} {'cpu s':>7} {'peak RSS MB':>12} "
             f"{'BN left':>8}"]
    for name, r in runs.items():
        wall = statistics.median(r.wall)
        ratio = f"{wall / base:.2f}" if base else "-"
        lines.append(f"{name:<16} {wall:>7.3f} {min(r.wall):>7.3f} {ratio:>12} {statistics.median(r.cpu):>7.3f} "
                     f"{statistics.median(r.rss) / 2**20:>12.0f} {r.bn_left if r.bn_left is not None else '-':>8}")
    if "foldnorm" in runs and "foldnorm+verify" in runs:
        fold = statistics.median(runs["foldnorm"].wall)
        extra = statistics.median(w - f for w, f in zip(runs["foldnorm+verify"].wall, runs["foldnorm"].wall))
        head = f"verification: {extra:+.3f} s over the fold (median of the rounds' differences)"
        lines.append(f"{head}, {extra / fold:.2f}x foldnorm --no-verify" if extra > 0 else
                     f"{head}: the noise between runs is larger than its cost")
    return lines


def compile_foldnorm() -> None:
    """Write foldnorm's bytecode, as `pip install` does for the other tools' packages: under
    PYTHONDONTWRITEBYTECODE (set in some environments) an editable install would otherwise compile every one of
    its modules again in every timed process (about 0.09 s here), which no installed foldnorm does."""
    import foldnorm.cli

    dirs = [str(Path(p).parent) for p in (foldnorm.__file__, foldnorm.cli.__file__) if p is not None]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=True, stdout=subprocess.DEVNULL)


def build(model: str, path: Path, layers: int, channels: int) -> None:
    """Write `model` to `path` (in a child process: the timing parent stays small)."""
    if model == "resnet50":
        onnx.save(ResNet50Builder().build(), str(path))
    else:
        build_wide(path, layers, channels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="resnet50,wide-1gb")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--wide-layers", type=int, default=6)
    parser.add_argument("--wide-channels", type=int, default=2200)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the files go (default: /dev/shm for resnet50, /tmp for wide-1gb)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="append an in-process profile of foldnorm's fold on each model")
    parser.add_argument("--out", type=Path, default=RESULTS / "fold_speed.txt")
    parser.add_argument("--build", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-of", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_of:
        print(verify_floor(args.profile_of, args.repeats) + "\n\n" + profile_fold(args.profile_of, False) + "\n"
              + profile_fold(args.profile_of, True) + "\n")
        return
    if args.build:
        build(args.build[0], Path(args.build[1]), args.wide_layers, args.wide_channels)
        return
    tools = args.tools.split(",")
    compile_foldnorm()
    lines = [f"python {platform.python_version()}, onnx {onnx.__version__}, {platform.machine()}, "
             f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; foldnorm's bytecode "
             "compiled first, as an install does",
             "command: " + " ".join(["python", "benchmarks/fold_speed.py", *sys.argv[1:]]), ""]
    profiles: list[str] = []
    for model in args.models.split(","):
        shm = Path("/dev/shm") if model == "resnet50" and Path("/dev/shm").is_dir() else None
        work = Path(tempfile.mkdtemp(prefix="foldnorm-speed-", dir=args.workdir or shm))
        try:
            src = work / f"{model}.onnx"
            subprocess.run([sys.executable, __file__, "--build", model, str(src), "--wide-layers",
                            str(args.wide_layers), "--wide-channels", str(args.wide_channels)], check=True)
            size = sum(p.stat().st_size for p in work.glob(src.name + "*"))
            print(f"{model}: {size / 1e6:.0f} MB in {work}", file=sys.stderr)
            runs = time_tools(src, model != "resnet50", args.repeats, tools)
            lines += [*table(f"{model} in {work.parent}", size, runs, args.repeats), ""]
            if args.profile:
                profile = subprocess.run([sys.executable, __file__, "--profile-of", str(src), "--repeats",
                                          str(args.repeats)], check=True, capture_output=True, text=True).stdout
                profiles += [f"{model}:", profile]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print("\n".join(lines), file=sys.stderr)
    lines += ["process start-up (median wall s): " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                               startup(args.repeats).items()), "", *profiles]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"saved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
