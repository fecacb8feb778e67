"""The environment a benchmark ran in: package versions, CPU, GPU."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux)."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment() -> dict[str, str | None]:
    """Versions of foldnorm and the runtimes, plus the CPU; packages not installed are None."""
    env: dict[str, str | None] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
    }
    for pkg in ("foldnorm", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt"):
        env[pkg] = _version(pkg)
    return env
