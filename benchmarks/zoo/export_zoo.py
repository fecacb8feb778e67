"""Export third-party architectures (timm, transformers) to ONNX with BatchNorm kept, to measure foldnorm on them.

The models are ones nobody on the team wrote: RepVGG, MobileOne, FastViT, RepGhostNet, RepViT, LeViT, MixNet,
EfficientViT, ResNetV2-BiT, ResNet-18, MobileNetV3, DPN-68 (timm) and LeViT, BiT (transformers) by default;
`--only NAME ...` takes any timm model name, `tv_<name>` for a torchvision model and the transformers models of
`HF_CLASSES`. timm, torchvision and transformers are not dependencies of foldnorm, so this script runs in a venv of
its own, and nothing in the package or the tests imports it:

    python3 -m venv /tmp/bv && /tmp/bv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm transformers \
        onnx onnxruntime onnxscript

It never downloads weights: every model is randomly initialised (timm `pretrained=False`, a default
transformers config; `torch.manual_seed` fixed), and its BatchNorm running statistics are calibrated with
train-mode forward passes on random input (statistics reset, cumulative average over the passes). BN gamma and
beta are perturbed (gamma ~ U(0.75, 1.25), beta ~ N(0, 0.1)) unless `--no-perturb-bn`, so that timm's
zero-initialised gammas do not make folding trivially exact (U(0.5, 1.5) made hf_levit chaotic: 1e-7 input
noise changed a logit by 3e-2).

What it writes under `--out DIR` (default benchmarks/zoo/out, git-ignored), per step:

  export    per model: <name>.io.npz ({input, output}: batch 1, torch eval output),
            <name>.legacy.onnx (TorchScript exporter, opset 17, TrainingMode.PRESERVE, no constant folding,
            dynamic batch), <name>.dynamo.onnx (dynamo exporter, opset 18, optimize=False, dynamic batch where
            it exports, else static batch 1); for re-parameterisable models also <name>.reparam.legacy.onnx,
            <name>.reparam.dynamo.onnx and <name>.reparam.io.npz (timm `reparameterize_model` on a copy).
            Every ONNX file is run with ONNX Runtime on the io input and its max |diff| to torch recorded; a
            failed export leaves <file>.error.txt with the traceback and the exporter's output.
  light     onnx_light/*.onnx: the IR-3 "light" models of onnx's backend test data, with how their BN
            parameters and Conv weights are produced.
  opset6    (nothing written but results) the opset-6 models of onnx's backend test data holding BN/Conv/Gemm.
  bench     ONNX Runtime CPU latency of <name>.legacy.onnx vs <name>.reparam.legacy.onnx (1 thread,
            ORT_ENABLE_ALL, interleaved, median of 50 after 5 warm-up runs).
  manifest  MANIFEST.md: the tables of all of the above.

results.json keeps every step's numbers and is merged across runs, so `--only` refreshes some models and keeps
the others.

Usage:  /tmp/bv/bin/python benchmarks/zoo/export_zoo.py [--out DIR] [--only resnet18 repvgg_a0 ...]
            [--steps export light opset6 bench manifest] [--no-perturb-bn] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

Results = dict[str, dict[str, Any]]

DEFAULT_OUT = Path("benchmarks/zoo/out")
STEPS = ("export", "light", "opset6", "bench", "manifest")
SEED = 0
CALIB_PASSES = 5
CALIB_BATCH = 8

TIMM_MODELS = [
    "repvgg_a0", "mobileone_s0", "fastvit_t8", "repghostnet_050", "repvit_m0_9",
    "levit_128s", "mixnet_s", "efficientvit_m0", "resnetv2_50x1_bit", "resnet18",
    "mobilenetv3_small_100", "dpn68",
]
HF_MODELS = ["hf_levit", "hf_bit"]
REP_MODELS = ["repvgg_a0", "mobileone_s0", "fastvit_t8", "repghostnet_050", "repvit_m0_9"]
# models whose attention biases / positional tables are tied to the training resolution
IMG_SIZE = {"levit_128s": 224, "efficientvit_m0": 224, "hf_levit": 224, "coatnet_nano_rw_224": 224,
            "sebotnet33ts_256": 256}
DEFAULT_SIZE = 128


class LogitsOnly(torch.nn.Module):
    """A transformers image classifier returning only its logits tensor (not a ModelOutput)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the wrapped model for pixel values `x`."""
        logits: torch.Tensor = self.model(pixel_values=x, return_dict=False)[0]
        return logits


# transformers models by short name: (config class, model class), default config
HF_CLASSES = {
    "hf_levit": ("LevitConfig", "LevitForImageClassification"),
    "hf_bit": ("BitConfig", "BitForImageClassification"),
    "hf_mobilevit": ("MobileViTConfig", "MobileViTForImageClassification"),
    "hf_mobilenet_v2": ("MobileNetV2Config", "MobileNetV2ForImageClassification"),
    "hf_segformer": ("SegformerConfig", "SegformerForSemanticSegmentation"),
    "hf_convnext": ("ConvNextConfig", "ConvNextForImageClassification"),
    "hf_regnet": ("RegNetConfig", "RegNetForImageClassification"),
    "hf_efficientnet": ("EfficientNetConfig", "EfficientNetForImageClassification"),
    "hf_upernet": ("UperNetConfig", "UperNetForSemanticSegmentation"),
}


def build(name: str) -> torch.nn.Module:
    """A randomly initialised model: `hf_*` (`HF_CLASSES`) from transformers, `tv_<name>` from torchvision, any
    other name from timm."""
    if name in HF_CLASSES:
        import transformers

        config, model_class = (getattr(transformers, n) for n in HF_CLASSES[name])
        return LogitsOnly(model_class(config()))
    if name.startswith("tv_"):
        import torchvision

        return torchvision.models.get_model(name[3:], weights=None)
    import timm

    model: torch.nn.Module = timm.create_model(name, pretrained=False)
    return model


def bn_modules(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm module of `model`."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def calibrate(model: torch.nn.Module, size: int, perturb: bool) -> int:
    """Perturb BN affine params (if `perturb`), set BN running stats from train-mode passes; leaves eval mode.

    Returns the number of BN modules.
    """
    bns = bn_modules(model)
    gen = torch.Generator().manual_seed(SEED + 1)
    saved: list[tuple[torch.nn.modules.batchnorm._BatchNorm, float | None]] = []
    for bn in bns:
        weight, bias = bn.weight, bn.bias
        if perturb and isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor):
            weight.copy_(torch.rand(weight.shape, generator=gen) * 0.5 + 0.75)
            bias.copy_(torch.randn(bias.shape, generator=gen) * 0.1)
        if bn.track_running_stats:
            bn.reset_running_stats()
            saved.append((bn, bn.momentum))
            bn.momentum = None  # cumulative moving average
    model.train()
    for _ in range(CALIB_PASSES):
        model(torch.randn(CALIB_BATCH, 3, size, size, generator=gen))
    for bn, momentum in saved:
        bn.momentum = momentum
    model.eval()
    return len(bns)


# ---------------------------------------------------------------- ONNX inspection
def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and all its nested subgraphs."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def count_ops(model: onnx.ModelProto) -> tuple[dict[str, int], int, int]:
    """Op type counts over the main graph, nested subgraphs and local functions; subgraph and function counts."""
    counts: dict[str, int] = {}
    graphs = list(iter_graphs(model.graph))
    for nodes in [g.node for g in graphs] + [f.node for f in model.functions]:
        for node in nodes:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts, len(graphs) - 1, len(model.functions)


def ai_onnx_opset(model: onnx.ModelProto) -> int | None:
    """The model's default-domain opset version."""
    return {o.domain or "ai.onnx": o.version for o in model.opset_import}.get("ai.onnx")


def bn_kinds(graph: onnx.GraphProto) -> dict[str, int]:
    """How many main-graph BNs follow a sole-consumer Conv, run in training mode, have non-constant params."""
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    kinds = {"bn_after_conv": 0, "bn_train_mode": 0, "bn_nonconst_params": 0}
    for node in graph.node:
        if node.op_type != "BatchNormalization":
            continue
        src = producer.get(node.input[0])
        if src is not None and src.op_type == "Conv" and consumers.get(node.input[0]) == 1:
            kinds["bn_after_conv"] += 1
        if any(a.name == "training_mode" and a.i for a in node.attribute):
            kinds["bn_train_mode"] += 1
        constant = (i in inits or (i in producer and producer[i].op_type == "Constant") for i in node.input[1:5])
        if not all(constant):
            kinds["bn_nonconst_params"] += 1
    return kinds


def inspect_onnx(path: Path) -> dict[str, Any]:
    """Op counts, BN kinds, opset, input shape and size of the ONNX file at `path`."""
    model = onnx.load(path, load_external_data=False)
    counts, nsub, nfun = count_ops(model)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {
        "bn": counts.get("BatchNormalization", 0), "conv": counts.get("Conv", 0), **bn_kinds(model.graph),
        "gemm": counts.get("Gemm", 0), "matmul": counts.get("MatMul", 0),
        "nodes": sum(counts.values()), "subgraphs": nsub, "functions": nfun,
        "ir": model.ir_version, "opset": ai_onnx_opset(model), "input_shape": dims,
        "size_mb": round(path.stat().st_size / 2**20, 2),
    }


def ort_session(path: Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session (ORT_ENABLE_ALL, sequential, `threads` intra-op threads)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_diff(path: Path, x: np.ndarray, ref: np.ndarray) -> float:
    """Max |ONNX Runtime output - `ref`| of the model at `path` on input `x`."""
    session = ort_session(path, threads=2)
    y = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.abs(y - ref).max())


# ---------------------------------------------------------------- export
@contextlib.contextmanager
def quiet(buf: io.StringIO) -> Iterator[None]:
    """Send stdout, stderr and warnings of the chatty exporters to `buf` (kept for the failure message)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield


def export_legacy(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    """TorchScript export: opset 17, BN mode preserved, no constant folding, dynamic batch."""
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False, opset_version=17, input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


def export_dynamo(model: torch.nn.Module, x: torch.Tensor, path: Path) -> tuple[str, list[str]]:
    """Dynamo export, opset 18: dynamic batch (traced with batch 2 against 0/1 specialisation), else static.

    Returns the batch kind that exported and the errors of the attempts before it.
    """
    errors: list[str] = []
    attempts: list[tuple[str, torch.Tensor, tuple[dict[int, Any]] | None]] = [
        ("dynamic", torch.cat([x, x]), ({0: torch.export.Dim("batch", min=1, max=1024)},)),
        ("static", x, None),
    ]
    for kind, example, dynamic_shapes in attempts:
        try:
            path.unlink(missing_ok=True)
            torch.onnx.export(model, (example,), str(path), dynamo=True, optimize=False, opset_version=18,
                              external_data=False, dynamic_shapes=dynamic_shapes,
                              input_names=["input"], output_names=["output"])
            return kind, errors
        except Exception as e:
            errors.append(f"{kind}: {type(e).__name__}: {first_line(e)}")
    raise RuntimeError(" | ".join(errors))


def first_line(e: BaseException) -> str:
    """The first line of the message of `e` (its repr if empty), at most 300 characters."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else repr(e))[:300]


def failure(e: BaseException, prefix: str = "FAIL") -> str:
    """The status text of a failed step."""
    return f"{prefix}: {type(e).__name__}: {first_line(e)}"


def record(results: Results, key: str, **fields: Any) -> None:
    """Store `fields` as `results[key]` and print a one-line summary."""
    results[key] = fields
    print(f"  {key}: {fields.get('status')} ({fields.get('seconds', 0):.1f}s)"
          f" bn={fields.get('bn')} conv={fields.get('conv')} diff={fields.get('ort_maxdiff')}", flush=True)


def do_export(results: Results, key: str, export: Callable[[], object], path: Path, x: np.ndarray,
              ref: np.ndarray, extra: dict[str, Any] | None = None) -> None:
    """Run `export` (writes `path`), inspect and check the file against `ref`, record the outcome under `key`."""
    t0 = time.perf_counter()
    buf = io.StringIO()
    try:
        with quiet(buf):
            out = export()
        info = inspect_onnx(path)
        info["ort_maxdiff"] = ort_diff(path, x, ref)
        info.update(extra or {})
        if isinstance(out, tuple):
            info["batch"], notes = out
            if notes:
                info["note"] = "; ".join(notes)
        record(results, key, status="ok", file=path.name, seconds=time.perf_counter() - t0, **info)
    except Exception as e:
        error_path = path.with_name(path.name + ".error.txt")
        error_path.write_text(traceback.format_exc() + "\n---- exporter output ----\n" + buf.getvalue())
        record(results, key, status=failure(e), file=path.name, seconds=time.perf_counter() - t0)


def export_model(name: str, results: Results, perturb: bool, out: Path) -> None:
    """Build, calibrate and export model `name` (and its re-parameterised form) into `out`."""
    print(f"== {name}", flush=True)
    size = IMG_SIZE.get(name, DEFAULT_SIZE)
    torch.manual_seed(SEED)
    try:
        t0 = time.perf_counter()
        model = build(name)
        nbn = calibrate(model, size, perturb)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(SEED + 2))
        with torch.no_grad():
            y = model(x)
        xn, yn = x.numpy(), y.numpy()
        np.savez(out / f"{name}.io.npz", input=xn, output=yn)
        results[f"{name}|build"] = dict(status="ok", torch_bn_modules=nbn, size=size,
                                        params=sum(p.numel() for p in model.parameters()),
                                        seconds=time.perf_counter() - t0)
    except Exception as e:
        record(results, f"{name}|build", status=failure(e))
        traceback.print_exc()
        return

    legacy = out / f"{name}.legacy.onnx"
    do_export(results, f"{name}|legacy", lambda: export_legacy(model, x, legacy), legacy, xn, yn)
    dynamo = out / f"{name}.dynamo.onnx"
    do_export(results, f"{name}|dynamo", lambda: export_dynamo(model, x, dynamo), dynamo, xn, yn)
    if name in REP_MODELS:
        export_reparam(name, model, x, yn, results, out)


def export_reparam(name: str, model: torch.nn.Module, x: torch.Tensor, y: np.ndarray, results: Results,
                   out: Path) -> None:
    """Export timm's re-parameterised copy of `model` with both exporters (`<name>.reparam.legacy.onnx`,
    `<name>.reparam.dynamo.onnx`) and its io pair into `out`.

    `y` is the output of `model` on `x`, to which the copy's output is compared.
    """
    from timm.utils.model import reparameterize_model

    key = f"{name}|reparam.legacy"
    try:
        reparam = reparameterize_model(copy.deepcopy(model)).eval()
        with torch.no_grad():
            yr = reparam(x).numpy()
        np.savez(out / f"{name}.reparam.io.npz", input=x.numpy(), output=yr)
        extra = {"torch_reparam_vs_orig": float(np.abs(yr - y).max()),
                 "torch_bn_modules": len(bn_modules(reparam))}
    except Exception as e:
        record(results, key, status=failure(e, "FAIL (reparameterize)"))
        return
    legacy = out / f"{name}.reparam.legacy.onnx"
    do_export(results, key, lambda: export_legacy(reparam, x, legacy), legacy, x.numpy(), yr, extra)
    dynamo = out / f"{name}.reparam.dynamo.onnx"
    do_export(results, f"{name}|reparam.dynamo", lambda: export_dynamo(reparam, x, dynamo), dynamo, x.numpy(), yr,
              extra)


# ---------------------------------------------------------------- onnx package test data
def onnx_data_dir() -> Path:
    """The backend test data shipped in the onnx package."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def source_kinds(names: Iterable[str], inits: set[str], produced: set[str]) -> str:
    """Where the tensors `names` come from: `init`, `node` or `input`, comma-separated and sorted."""
    return ",".join(sorted({"init" if n in inits else "node" if n in produced else "input" for n in names}))


def light_models(results: Results, out: Path) -> None:
    """Copy the onnx package's light models into `out`/onnx_light and record how their BN/Conv params arise."""
    data = onnx_data_dir()
    light_dir = out / "onnx_light"
    light_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted((data / "light").rglob("*.onnx")):
        name = src.parent.name if src.name == "model.onnx" else src.stem
        dst = light_dir / f"{name}.onnx"
        dst.write_bytes(src.read_bytes())
        model = onnx.load(dst)
        counts, _, _ = count_ops(model)
        graph = model.graph
        inits = {i.name for i in graph.initializer}
        produced = {o for n in graph.node for o in n.output}
        bn_params = (i for n in graph.node if n.op_type == "BatchNormalization" for i in n.input[1:])
        conv_weights = (n.input[1] for n in graph.node if n.op_type == "Conv")
        results[f"light|{name}"] = dict(
            status="ok", file=dst.relative_to(out).as_posix(), src=src.relative_to(data).as_posix(),
            ir=model.ir_version, opset=ai_onnx_opset(model),
            bn=counts.get("BatchNormalization", 0), conv=counts.get("Conv", 0),
            gemm=counts.get("Gemm", 0), cos=counts.get("ConstantOfShape", 0),
            bn_params=source_kinds(bn_params, inits, produced),
            conv_w=source_kinds(conv_weights, inits, produced),
            init_as_input=sum(i.name in inits for i in graph.input))
        print("  light", name, results[f"light|{name}"]["bn"], flush=True)


def opset6_models(results: Results) -> None:
    """Record the opset-6 models of the onnx package's test data that hold BN, Conv or Gemm."""
    data = onnx_data_dir()
    for sub in ("pytorch-converted", "pytorch-operator"):
        for path in sorted((data / sub).glob("*/model.onnx")):
            model = onnx.load(path)
            opset = ai_onnx_opset(model)
            counts, _, _ = count_ops(model)
            wanted = {k: counts.get(k, 0) for k in ("BatchNormalization", "Conv", "Gemm")}
            if opset == 6 and any(wanted.values()):
                results[f"opset6|{path.relative_to(data).as_posix()}"] = dict(
                    status="ok", ir=model.ir_version, opset=opset, bn=wanted["BatchNormalization"],
                    conv=wanted["Conv"], gemm=wanted["Gemm"], ops=",".join(sorted(counts)))


# ---------------------------------------------------------------- latency
def time_pair(a: Path, b: Path, x: np.ndarray, runs: int, warmup: int) -> tuple[list[float], list[float]]:
    """Latencies in ms of the models `a` and `b` on `x`, run interleaved (order reversed every round)."""
    sa, sb = ort_session(a), ort_session(b)
    fa = {sa.get_inputs()[0].name: x}
    fb = {sb.get_inputs()[0].name: x}
    for _ in range(warmup):
        sa.run(None, fa)
        sb.run(None, fb)
    ta: list[float] = []
    tb: list[float] = []
    for i in range(runs):
        order = [(sa, fa, ta), (sb, fb, tb)]
        if i % 2:
            order.reverse()
        for session, feed, acc in order:
            t0 = time.perf_counter()
            session.run(None, feed)
            acc.append((time.perf_counter() - t0) * 1e3)
    return ta, tb


def bench(results: Results, out: Path, runs: int = 50, warmup: int = 5) -> None:
    """Time each rep model's legacy export against its re-parameterised export."""
    for name in REP_MODELS:
        a = out / f"{name}.legacy.onnx"
        b = out / f"{name}.reparam.legacy.onnx"
        key = f"bench|{name}"
        if not (a.exists() and b.exists()):
            results[key] = dict(status="skipped: missing onnx")
            continue
        try:
            x = np.load(out / f"{name}.io.npz")["input"]
            ta, tb = time_pair(a, b, x, runs, warmup)
            ma, mb = statistics.median(ta), statistics.median(tb)
            results[key] = dict(status="ok", legacy_ms=ma, reparam_ms=mb, speedup=ma / mb,
                                legacy_p10=np.percentile(ta, 10), legacy_p90=np.percentile(ta, 90),
                                reparam_p10=np.percentile(tb, 10), reparam_p90=np.percentile(tb, 90),
                                runs=runs, size=int(x.shape[-1]))
            print(f"  bench {name}: {ma:.2f} ms vs {mb:.2f} ms", flush=True)
        except Exception as e:
            results[key] = dict(status=failure(e))


# ---------------------------------------------------------------- manifest
def fmt(v: object, nd: int = 1) -> str:
    """A table cell: empty for None, small floats in scientific notation."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.2e}" if (v != 0 and abs(v) < 1e-2) else f"{v:.{nd}f}"
    return str(v)


def esc(s: object) -> str:
    """`s` safe inside a Markdown table cell."""
    return str(s).replace("|", "\\|").replace("\n", " ")


def row(*cells: object) -> str:
    """A Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table_head(*names: str) -> list[str]:
    """A Markdown table header and its separator line."""
    return [row(*names), "|" + "---|" * len(names)]


def manifest_intro() -> list[str]:
    """The MANIFEST.md title and the paragraphs on how the zoo was made and how to read the tables."""
    import onnxruntime
    import timm
    import transformers

    return [
        "# foldnorm ONNX zoo", "",
        f"Generated by `benchmarks/zoo/export_zoo.py` with torch {torch.__version__}, timm {timm.__version__}, "
        f"transformers {transformers.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}. Random init (no downloaded weights), seed {SEED}; "
        f"BN running stats calibrated with {CALIB_PASSES} train-mode passes (batch {CALIB_BATCH}, "
        "cumulative average); BN gamma~U(0.75,1.25), beta~N(0,0.1) so no BN is an identity/zero. "
        "`<name>.io.npz` holds input (batch 1) and torch eval output; "
        "rep models also have `<name>.reparam.io.npz`.", "",
        "BN/Conv counts include nested subgraphs and local functions. "
        "`ORT maxdiff` = max |ORT(CPU, ORT_ENABLE_ALL) - torch| on the io.npz input. "
        "`batch` = dynamic/static batch of the dynamo file (legacy files all have dim_param `batch`). "
        "BN column: BN whose X is the sole-consumer output of a Conv / BN with training_mode=1 "
        "(3 outputs) / BN whose scale,B,mean,var are not all initializers or Constant nodes "
        "(legacy: the non-const ones are `Identity(initializer)` from the exporter's dedup of equal "
        "tensors; weight-std BN: ReduceMean outputs). repghostnet_050 also has 16 BN->BN chains "
        "(BN fed by another BN) and 16 BN after Relu; fastvit_t8/repghostnet_050 reparam forms still keep BN. "
        "resnetv2_50x1_bit and hf_bit have no real BN layers (GroupNorm): every BN node there is "
        "weight standardisation (StdConv2d/WeightStandardizedConv2d = F.batch_norm(weight, training=True)) "
        "on a Reshape of a Conv weight -- must NOT be folded.", "",
    ]


def export_notes(build_info: dict[str, Any], exporter: str, r: dict[str, Any]) -> str:
    """The notes cell of one exported file."""
    notes = [f"{build_info['size']}px"]
    if exporter == "dynamo" and r.get("batch"):
        notes.append(f"batch {r['batch']}")
    if r.get("note"):
        notes.append(esc(r["note"])[:200])
    if "torch_reparam_vs_orig" in r:
        notes.append(f"torch reparam-vs-orig {fmt(r['torch_reparam_vs_orig'])}")
    if r.get("functions"):
        notes.append(f"{r['functions']} local functions")
    if r.get("subgraphs"):
        notes.append(f"{r['subgraphs']} subgraphs")
    return "; ".join(notes)


def export_table(results: Results) -> list[str]:
    """The table of exported files."""
    lines = ["## Exported models", "", *table_head(
        "name", "exporter", "file", "BN count", "Conv count", "status", "export s", "ORT maxdiff", "opset",
        "BN: after sole-use Conv / training_mode=1 / non-const params", "notes")]
    for name in TIMM_MODELS + HF_MODELS:
        b = results.get(f"{name}|build")
        if b is None:
            continue
        if not b["status"].startswith("ok"):
            lines.append(row(name, "build", "", "", "", esc(b["status"]), "", "", "", "", ""))
            continue
        for exporter in ("legacy", "dynamo", "reparam.legacy", "reparam.dynamo"):
            r = results.get(f"{name}|{exporter}")
            if r is None:
                continue
            kinds = (f"{r['bn_after_conv']} / {r['bn_train_mode']} / {r['bn_nonconst_params']}"
                     if "bn_after_conv" in r else "")
            lines.append(row(name, exporter, r.get("file", ""), r.get("bn", ""), r.get("conv", ""),
                             esc(r["status"]), fmt(r.get("seconds")), fmt(r.get("ort_maxdiff")),
                             r.get("opset", ""), kinds, export_notes(b, exporter, r)))
    return lines


def latency_table(results: Results) -> list[str]:
    """The table of legacy vs reparam latencies."""
    lines = ["", "## Latency: legacy vs reparam (onnxruntime CPU, 1 thread, ORT_ENABLE_ALL, batch 1, "
             "interleaved, median of 50 after 5 warm-up)", "",
             "Note: ORT_ENABLE_ALL itself fuses Conv+BN, so the gap is mostly branch merging.", "",
             *table_head("name", "input", "legacy ms (p10-p90)", "reparam ms (p10-p90)", "speedup")]
    for name in REP_MODELS:
        r = results.get(f"bench|{name}")
        if r is None:
            continue
        if r["status"] != "ok":
            lines.append(row(name, "", esc(r["status"]), "", ""))
            continue
        lines.append(row(name, f"{r['size']}px",
                         f"{r['legacy_ms']:.2f} ({r['legacy_p10']:.2f}-{r['legacy_p90']:.2f})",
                         f"{r['reparam_ms']:.2f} ({r['reparam_p10']:.2f}-{r['reparam_p90']:.2f})",
                         f"{r['speedup']:.2f}x"))
    return lines


def onnx_data_tables(results: Results) -> list[str]:
    """The tables of the onnx package's light models and opset-6 models."""
    lines = ["", "## ONNX backend-test light models (copied to onnx_light/)", "",
             "These are caffe2-era IR-3 graphs: Conv weights and most BN params are *computed* by "
             "`ConstantOfShape` nodes (filled with a constant, not initializers); the remaining BN params "
             "are initializers that are also graph inputs (IR<4 style, i.e. overridable). "
             "e.g. light_resnet50 BN params: 28 init, 184 ConstantOfShape.", "",
             *table_head("name", "file", "IR", "opset", "BN count", "Conv count", "Gemm", "ConstantOfShape",
                         "BN params from", "Conv W from", "inits also inputs")]
    for k in sorted(k for k in results if k.startswith("light|")):
        r = results[k]
        lines.append(row(k.removeprefix("light|"), r["file"], r["ir"], r["opset"], r["bn"], r["conv"], r["gemm"],
                         r["cos"], r["bn_params"], r["conv_w"], r["init_as_input"]))
    lines += ["", "## Opset-6 models with BatchNormalization/Conv/Gemm in onnx's backend test data "
              "(not copied; paths relative to `site-packages/onnx/backend/test/data/`)", "",
              *table_head("path", "IR", "BN", "Conv", "Gemm", "ops")]
    for k in sorted(k for k in results if k.startswith("opset6|")):
        r = results[k]
        lines.append(row(k.removeprefix("opset6|"), r["ir"], r["bn"], r["conv"], r["gemm"], r["ops"]))
    return lines


def manifest(results: Results, out: Path) -> None:
    """Write `out`/MANIFEST.md from `results`."""
    lines = manifest_intro() + export_table(results) + latency_table(results) + onnx_data_tables(results)
    (out / "MANIFEST.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Run the steps named by the command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"output directory (default: {DEFAULT_OUT}; results.json there is merged)")
    ap.add_argument("--only", nargs="*", help="model names (default: all)")
    ap.add_argument("--steps", nargs="*", choices=STEPS, default=list(STEPS))
    ap.add_argument("--no-perturb-bn", action="store_true", help="keep the BN gamma/beta of the random init")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    results_path = out / "results.json"
    results: Results = json.loads(results_path.read_text()) if results_path.exists() else {}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1, default=float))

    if "export" in args.steps:
        for name in args.only or TIMM_MODELS + HF_MODELS:
            export_model(name, results, not args.no_perturb_bn, out)
            save()
    if "light" in args.steps:
        light_models(results, out)
    if "opset6" in args.steps:
        opset6_models(results)
    save()
    if "bench" in args.steps:
        bench(results, out)
        save()
    if "manifest" in args.steps:
        manifest(results, out)


if __name__ == "__main__":
    main()
