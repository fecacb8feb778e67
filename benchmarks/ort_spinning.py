"""Why folded looked slower than unfolded at opt=disabled: ORT thread spinning vs interleaved sessions.

Times the built-in model, unfolded and folded, on ONNX Runtime CPU (opt=disabled) for every mix of
intra-op threads (default, 1), worker spinning (on = ORT's default, off) and loop order (interleaved:
both sessions alternate, as `foldnorm bench` does; blocked: one session after the other). Prints a
table and saves it to benchmarks/results/ort_spinning.md.

    .venv/bin/python benchmarks/ort_spinning.py [--min-time 1.0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import ExitStack
from functools import partial
from pathlib import Path

from foldnorm.bench.backends.ort_cpu import OrtOptions, OrtSession
from foldnorm.bench.environment import cpu_count, cpu_model
from foldnorm.bench.timing import LatencyStats, Timed, time_interleaved
from foldnorm.export.sources import resolve_source
from foldnorm.fold.engine import fold_model
from foldnorm.onnxgraph.inputs import make_feeds
from foldnorm.onnxgraph.modelio import load_model, save_model

RESULTS = Path(__file__).parent / "results" / "ort_spinning.md"


def measure(paths: dict[str, str], feeds: dict, threads: int, spin: bool, interleaved: bool,
            min_time: float) -> dict[str, LatencyStats]:
    options = OrtOptions(opt="disabled", threads=threads, spin=spin)
    with ExitStack() as opened:
        sessions = {v: opened.enter_context(OrtSession(p, options)) for v, p in paths.items()}
        timed = {v: Timed(partial(s.run_timed, s.prepare(feeds)), s.synchronize) for v, s in sessions.items()}
        if interleaved:
            stats, _ = time_interleaved(timed, warmup=5, min_time_s=min_time)
            return stats
        return {v: time_interleaved({v: t}, warmup=5, min_time_s=min_time)[0][v] for v, t in timed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = resolve_source("resnet-bn", Path(tmp))
        model = load_model(source.onnx_path)
        paths = {"unfolded": str(source.onnx_path),
                 "folded": str(save_model(fold_model(model).model, Path(tmp) / "folded.onnx"))}
        feeds = make_feeds(model, 1, 0)
        lines = ["| threads | spinning | order | unfolded p50 ms | unfolded p90 ms | folded p50 ms | folded p90 ms "
                 "| speed-up (p50) |", "|---|---|---|---|---|---|---|---|"]
        for threads in (0, 1):
            for spin in (True, False):
                for interleaved in (True, False):
                    s = measure(paths, feeds, threads, spin, interleaved, args.min_time)
                    u, f = s["unfolded"], s["folded"]
                    lines.append(f"| {threads or 'default'} | {'on' if spin else 'off'} | "
                                 f"{'interleaved' if interleaved else 'blocked'} | {u.p50_ms:.2f} | {u.p90_ms:.2f} | "
                                 f"{f.p50_ms:.2f} | {f.p90_ms:.2f} | {u.p50_ms / f.p50_ms:.2f} |")
                    print(lines[-1], flush=True)
    load = os.getloadavg()[0]
    header = (f"resnet-bn batch 1, ONNX Runtime CPU opt=disabled, {cpu_count()} CPUs ({cpu_model()}), "
              f"1-min load average at the end {load:.1f}, min time {args.min_time} s per variant\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(header + "\n" + "\n".join(lines) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
