"""Every zoo model x exporter x opset x dtype: export unfolded, fold, check, compare with ONNX Runtime.

For each combination that exports: `foldnorm.export_onnx` (BN kept), `fold_model`, `onnx.checker` (full
check) on the folded model, then `compare_models` (ONNX Runtime, optimizations disabled, seeded inputs at
batch sizes 1 and 3, per-dtype tolerances, GN/LN/IN intact). A row says how many BNs the export had, how many
records were folded, and `ok` or what went wrong. An export failure is recorded as `no export` (not a fold bug).

Usage:  .venv/bin/python benchmarks/zoo_export_sweep.py [--models a,b] [--opsets 17,18,19,20,21]
            [--exporters legacy,dynamo] [--dtypes float32,float16] [--out benchmarks/results/zoo_export_sweep.txt]
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import onnx
import torch
from foldnorm.models import REGISTRY, get_spec

from foldnorm import FoldnormError, compare_models, export_onnx, fold_model
from foldnorm.export import ExportDtype, Exporter
from foldnorm.fold.normalizations import survey


def one_case(name: str, exporter: Exporter, opset: int, dtype: ExportDtype, workdir: Path) -> tuple[str, str, str]:
    """(BN count, folded count, verdict) for one export of one zoo model."""
    spec = get_spec(name)
    module = spec.build()
    path = workdir / f"{name}-{exporter}-{opset}-{dtype}.onnx"
    shapes = [(2, *s[1:]) if exporter == "legacy" and name == "stylenet-in" else s for s in spec.input_shapes]
    try:
        export_onnx(module, [torch.randn(shape) for shape in shapes], path, exporter=exporter, opset=opset,
                    dtype=dtype, dynamic_batch=not (exporter == "legacy" and name == "stylenet-in"))
    except Exception as exc:
        return "-", "-", f"no export: {str(exc).splitlines()[0][:70]}"
    original = onnx.load(str(path))
    bn_count = survey(original).batchnorm
    try:
        result = fold_model(original)
    except FoldnormError as exc:
        return str(bn_count), "-", f"FOLD ERROR: {exc}"
    except Exception:
        return str(bn_count), "-", "CRASH: " + traceback.format_exc().splitlines()[-1][:90]
    folded = result.report.folded
    try:
        onnx.checker.check_model(result.model, full_check=True)
    except Exception as exc:
        return str(bn_count), str(folded), f"INVALID: {str(exc).splitlines()[0][:80]}"
    batches = (2,) if exporter == "legacy" and name == "stylenet-in" else (1, 3)
    try:
        verdict = compare_models(path, result.model, batch_sizes=batches)
    except Exception as exc:
        return str(bn_count), str(folded), f"COMPARE FAILED: {str(exc).splitlines()[0][:80]}"
    if not verdict.ok:
        return str(bn_count), str(folded), f"WRONG: {verdict.summary()[:90]}"
    return str(bn_count), str(folded), f"ok (max rel {verdict.max_rel:.2g})"


def main() -> int:
    """Run the sweep and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(REGISTRY))
    parser.add_argument("--exporters", default="legacy,dynamo")
    parser.add_argument("--opsets", default="17,18,19,20,21")
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--out", default="benchmarks/results/zoo_export_sweep.txt")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for exporter in args.exporters.split(","):
                for opset in (int(o) for o in args.opsets.split(",")):
                    for dtype in args.dtypes.split(","):
                        row = (name, exporter, str(opset), dtype, *one_case(name, exporter, opset, dtype, Path(tmp)))
                        print("  ".join(row), flush=True)
                        rows.append(row)
    header = ("model", "exporter", "opset", "dtype", "BN", "folded", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    bad = [r for r in rows if not (r[-1].startswith("ok") or r[-1].startswith("no export"))]
    lines.append(f"{len(rows)} cases, {sum(r[-1].startswith('ok') for r in rows)} ok, "
                 f"{sum(r[-1].startswith('no export') for r in rows)} not exported, {len(bad)} bad; "
                 f"{time.perf_counter() - start:.0f} s; torch {torch.__version__}, onnx {onnx.__version__}, "
                 f"python {platform.python_version()}")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
