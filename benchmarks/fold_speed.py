"""Fold speed on a ResNet-50-sized model: foldnorm vs onnxscript's BatchNorm rules vs plain load + save.

Builds an unfolded ResNet-50 (25.6M parameters, 53 BatchNormalization, random weights and BN statistics)
directly as ONNX, writes it once, then times in one run, interleaved, `--repeats` times each:

  load+save      onnx.load + onnx.save (the floor: any tool must at least read and write the file)
  foldnorm       foldnorm.fold_file(verify=False), i.e. `foldnorm fold --no-verify`: checked load, fold,
                 atomic save
  onnxscript     onnx_ir.load + onnxscript's fuse_batchnorm_into_{conv,conv_transpose,gemm} rules + save

Usage:  .venv/bin/python benchmarks/fold_speed.py [--repeats 5] [--out benchmarks/results/fold_speed.txt]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


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


def plain(src: Path, dst: Path) -> int:
    onnx.save(onnx.load(str(src)), str(dst))
    return -1


def with_foldnorm(src: Path, dst: Path) -> int:
    from foldnorm import fold_file

    result = fold_file(src, dst, verify=False)  # what `foldnorm fold --no-verify` runs
    return sum(1 for r in result.report.by_kind("batchnorm") if r.outcome != "folded")


def with_onnxscript(src: Path, dst: Path) -> int:
    import onnx_ir as ir
    from onnxscript.rewriter import RewriteRuleSet, rewrite
    from onnxscript.rewriter.rules.common import (
        fuse_batchnorm_into_conv_rule,
        fuse_batchnorm_into_conv_transpose_rule,
        fuse_batchnorm_into_gemm_rule,
    )

    rules = RewriteRuleSet([fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule,
                            fuse_batchnorm_into_gemm_rule])
    model = rewrite(ir.load(str(src)), pattern_rewrite_rules=rules)
    ir.save(model, str(dst))
    return sum(1 for n in model.graph if n.op_type == "BatchNormalization")


TOOLS: dict[str, Callable[[Path, Path], int]] = {
    "load+save": plain, "foldnorm": with_foldnorm, "onnxscript": with_onnxscript,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fold_speed.txt")
    parser.add_argument("--workdir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                        help="where the model files go (default: /dev/shm, so disk noise does not dominate)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        src = Path(tmp) / "resnet50_unfolded.onnx"
        model = ResNet50Builder().build()
        onnx.save(model, str(src))
        params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        n_bn = sum(1 for n in model.graph.node if n.op_type == "BatchNormalization")
        del model
        times: dict[str, list[float]] = {name: [] for name in TOOLS}
        cpu: dict[str, list[float]] = {name: [] for name in TOOLS}
        left: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, tool in TOOLS.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                left[name] = tool(src, Path(tmp) / f"{name}.onnx")
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        size_mb = src.stat().st_size / 1e6
    base = statistics.median(times["load+save"])
    base_cpu = statistics.median(cpu["load+save"])
    lines = [
        f"fold speed: ResNet-50-shaped model, {params / 1e6:.1f}M params, {n_bn} BatchNormalization, "
        f"{size_mb:.0f} MB in {args.workdir or tempfile.gettempdir()}; median of {args.repeats} interleaved runs",
        f"python {platform.python_version()}, onnx {onnx.__version__}, {platform.machine()}",
        "command: " + " ".join(["python", "benchmarks/fold_speed.py", *sys.argv[1:]]),
        "",
        f"{'tool':<12} {'wall s':>7} {'min s':>7} {'x load+save':>12} {'cpu s':>7} {'cpu x':>6} {'BN left':>8}",
    ]
    for name, ts in times.items():
        bn_left = "-" if left[name] < 0 else str(left[name])
        wall, used = statistics.median(ts), statistics.median(cpu[name])
        lines.append(f"{name:<12} {wall:>7.3f} {min(ts):>7.3f} {wall / base:>12.2f} {used:>7.3f} "
                     f"{used / base_cpu:>6.2f} {bn_left:>8}")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"saved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
