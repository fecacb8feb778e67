"""The README's CI recipe runs for real: its shell step (which runs its pytest example) in a scratch dir."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def recipe() -> tuple[str, str]:
    text = README.read_text()
    section = text[text.index("## CI recipe\n"):]
    section = section[: section.index("\n## ")]
    (python,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (shell,) = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return python, shell


def test_recipe_has_both_examples() -> None:
    python, shell = recipe()
    assert "assert_equivalent" in python and "foldnorm verify" in shell and "pytest" in shell


@pytest.mark.slow  # exports, folds and runs pytest in fresh processes
def test_recipe_runs(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    python, shell = recipe()
    (tmp_path / "test_deployed_model.py").write_text(python)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(["bash", "-c", shell], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
    assert '"ok": true' in (tmp_path / "verify.json").read_text()
