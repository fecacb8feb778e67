"""The README's `$ foldnorm ...` examples run as written, in order, in a scratch directory."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ foldnorm ")]


def test_readme_has_examples() -> None:
    assert len(readme_commands()) >= 3


@pytest.mark.slow  # every README command in a fresh process, benches included
def test_readme_commands_run(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in readme_commands():
        args = shlex.split(command)
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command!r} failed ({done.returncode}): {done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr


def python_api_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API\n"):]
    section = section[: section.index("\n## ", 1)]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


@pytest.mark.slow  # exports, folds and benchmarks in a fresh process
def test_readme_python_api_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, "-c", python_api_example()], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1/1 BatchNorm folded" in done.stdout
    assert (tmp_path / "folded.onnx").is_file()
