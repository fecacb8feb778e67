"""`foldnorm fold` (verification on, the default) as a process on every third-party export: a regression sweep.

For each `.onnx` file in the directories given (the zoo written by `export_zoo.py`: timm, torchvision and
transformers models, random init, calibrated BN), runs `foldnorm fold FILE -o OUT --report OUT.json` with this
interpreter's foldnorm and records its exit code, wall time, the BatchNormalization nodes before and after, the
protected normalizations the report counts, and the verification's line. A row that is not exit 0 with an
`equivalent` verification is a finding. Prints a markdown table and saves it to `--out`.

    .venv/bin/python benchmarks/zoo/fold_zoo.py /work/zoo /work/zoo2 [--out benchmarks/results/zoo_fold.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent.parent / "results"
FOLDNORM = Path(sys.executable).parent / "foldnorm"


def fold_one(model: Path, work: Path) -> dict[str, object]:
    """Fold `model` with the CLI into `work`; what it printed, reported and took."""
    out, report = work / model.name, work / (model.stem + ".json")
    start = time.perf_counter()
    proc = subprocess.run([str(FOLDNORM), "fold", str(model), "-o", str(out), "--report", str(report)],
                          capture_output=True, text=True)
    row: dict[str, object] = {"model": model.name, "rc": proc.returncode, "seconds": time.perf_counter() - start}
    lines = (proc.stdout + proc.stderr).splitlines()
    row["verify"] = next((ln.removeprefix("verify: ") for ln in lines if ln.startswith("verify: ")), "")
    if report.is_file():
        data = json.loads(report.read_text())
        row["bn_before"] = data["before"]["nodes"].get("BatchNormalization", 0)
        row["bn_after"] = data["after"]["nodes"].get("BatchNormalization", 0)
        row["summary"] = data["summary"]
    else:
        row["summary"] = lines[-1] if lines else ""
    for path in work.iterdir():
        path.unlink()
    return row


def table(rows: list[dict[str, object]]) -> list[str]:
    """The markdown table of the sweep."""
    lines = ["| model | exit | s | BN in file -> left | verification | report |", "|---|---|---|---|---|---|"]
    for r in rows:
        bn = f"{r['bn_before']} -> {r['bn_after']}" if "bn_after" in r else "-"
        verdict = str(r["verify"]).split(" over ")[0]
        summary = str(r["summary"]).split("; ")[-1] if r["rc"] == 0 else str(r["summary"])[:160]
        lines.append(f"| {r['model']} | {r['rc']} | {float(str(r['seconds'])):.1f} | {bn} | {verdict} | {summary} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "zoo_fold.md")
    args = parser.parse_args()
    models = sorted(p for d in args.dirs for p in d.glob("*.onnx"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="foldnorm-zoo-") as tmp:
        for model in models:
            rows.append(fold_one(model, Path(tmp)))
            print(table(rows)[-1], file=sys.stderr, flush=True)
    bad = [r for r in rows if r["rc"] != 0 or not str(r["verify"]).startswith("equivalent")]
    head = [f"`foldnorm fold` (verification on) on {len(rows)} third-party exports; {len(bad)} not exit 0 with an "
            f"equivalent verification. python {platform.python_version()}, {os.cpu_count()} CPUs.",
            "command: " + " ".join(["python", "benchmarks/zoo/fold_zoo.py", *sys.argv[1:]]), ""]
    text = "\n".join([*head, *table(rows)])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
