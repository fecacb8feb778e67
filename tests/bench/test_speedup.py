"""The speed-up explains itself (issue 15 #5): the per-round method in the header, rows flagged where the p50 ratio
and the per-round ratio disagree; and the verdict at the end of every bench, in text, JSON and Markdown."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from foldnorm.cli.render.bench import bench_json, bench_markdown, bench_text

from foldnorm.bench.result import BenchResult
from foldnorm.bench.runner import benchmark
from foldnorm.bench.speedup import Verdict, ratios_disagree, speedup_stats, verdict_line
from foldnorm.bench.timing import LatencyStats

FAST = ["--warmup", "0", "--iterations", "3"]


def _verdict(speedup: float, lo: float, hi: float, where: str = "torch device=cpu") -> Verdict:
    return Verdict("torch", "device=cpu", "fp32", 1, where, speedup, (lo, hi))


def test_verdict_sentences() -> None:
    faster = _verdict(1.0912, 1.071, 1.124)
    same = _verdict(1.004, 0.962, 1.031, "ort-cpu opt=all")
    slower = _verdict(0.93, 0.91, 0.95, "ort-cpu opt=disabled")
    assert faster.significant and slower.significant and not same.significant
    assert verdict_line([faster, same, slower]) == (
        "folding: 1.09x faster on torch device=cpu (IQR 1.07-1.12, significant); no measurable difference on "
        "ort-cpu opt=all (IQR 0.96-1.03); slower on ort-cpu opt=disabled: 0.93x (IQR 0.91-0.95, significant)")
    assert _verdict(1.004, 1.001, 1.008).text() == "1.004x faster on torch device=cpu (IQR 1.001-1.01, significant)"
    assert _verdict(1.12, 1.003, 1.5).text() == "1.12x faster on torch device=cpu (IQR 1.003-1.50, significant)"
    assert not _verdict(1.2, 1.0, 1.3).significant  # an IQR that touches 1.0 does not exclude it
    assert faster.to_dict()["text"] == faster.text() and faster.to_dict()["significant"] is True


def test_per_round_ratio_against_p50_ratio() -> None:
    # the machine slowed down between rounds 3 and 4, while the unfolded run of round 4 was still fast
    unfolded = [1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0]
    folded = [0.9, 0.9, 0.9, 0.9, 2.7, 2.7, 2.7]
    speedup, iqr, p50_ratio = speedup_stats(unfolded, folded)
    assert speedup == pytest.approx(1 / 0.9) and p50_ratio == pytest.approx(3 / 0.9)
    assert iqr == pytest.approx((1 / 0.9, 1 / 0.9))
    assert ratios_disagree(p50_ratio, speedup)
    assert not ratios_disagree(1.09, 1.0)  # within 10%
    assert ratios_disagree(1.11, 1.0)


def _flagged(result: BenchResult) -> BenchResult:
    """`result` with its folded row's samples replaced by a run whose p50 ratio and per-round ratio disagree."""
    unfolded_ms, folded_ms = [1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0], [0.9, 0.9, 0.9, 0.9, 2.7, 2.7, 2.7]
    speedup, iqr, p50_ratio = speedup_stats(unfolded_ms, folded_ms)
    base, row = result.rows
    rows = [replace(base, samples_ms=unfolded_ms, latency=LatencyStats.from_samples([s / 1e3 for s in unfolded_ms])),
            replace(row, samples_ms=folded_ms, latency=LatencyStats.from_samples([s / 1e3 for s in folded_ms]),
                    speedup=speedup, speedup_iqr=iqr, p50_ratio=p50_ratio)]
    return replace(result, rows=rows)


def test_text_explains_the_speedup_flags_unstable_rows_and_ends_with_the_verdict(model_path: str) -> None:
    result = benchmark(model_path, ort_opt=["disabled"], warmup=0, iterations=3)
    text = bench_text(result).splitlines()
    assert text[2].startswith("speed-up: median over rounds of unfolded time / row time (each round runs both "
                              "back to back")
    assert text[-1] == result.verdict() and text[-1].startswith("folding: ")
    flagged = _flagged(result)
    assert flagged.rows[1].ratios_disagree and not flagged.rows[0].ratios_disagree
    lines = bench_text(flagged).splitlines()
    (folded,) = [line for line in lines if line.startswith("ort-cpu") and " folded " in line]
    assert "3.333 (!)" in folded
    (note,) = [line for line in lines if line.startswith("note: (!) on 1 row(s)")]
    assert "the machine's speed changed during the run" in note
    assert "3.333 (!)" in bench_markdown(flagged)
    data = json.loads(bench_json(flagged))
    assert [r["ratios_disagree"] for r in data["rows"]] == [False, True]
    assert data["rows"][1]["p50_ratio"] == pytest.approx(3 / 0.9)


def test_verdict_in_json_and_markdown(model_path: str) -> None:
    out = CliRunner().invoke(cli, ["bench", model_path, *FAST, "--format", "json"])
    data = json.loads(out.stdout)
    assert [(v["backend"], v["config"]) for v in data["verdicts"]] == [("ort-cpu", "opt=disabled"),
                                                                       ("ort-cpu", "opt=all")]
    assert data["verdict"] == "folding: " + "; ".join(v["text"] for v in data["verdicts"])
    for v in data["verdicts"]:
        assert v["significant"] == (v["iqr"][0] > 1 or v["iqr"][1] < 1)
    markdown = CliRunner().invoke(cli, ["bench", model_path, *FAST, "--format", "markdown"]).stdout
    assert markdown.rstrip().splitlines()[-1].startswith("- folding: ")
