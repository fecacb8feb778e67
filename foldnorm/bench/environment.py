"""The environment a benchmark ran in: package versions, CPU, GPU, and how busy the machine was."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from foldnorm.errors import InputSpecError


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


def cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_threads(threads: int) -> None:
    """Raise `InputSpecError` unless `threads` is 0 (the runtime's default) up to 4x the CPUs this process
    may use (ONNX Runtime crashes on absurd thread counts instead of refusing them)."""
    limit = 4 * cpu_count()
    if not 0 <= threads <= limit:
        raise InputSpecError(f"threads={threads}: give 0 (the runtime's default) up to {limit} (4x the {cpu_count()} "
                             "CPUs this process may use)")


def gpu_name() -> str | None:
    """The first GPU's name: from torch when it is already loaded, else from nvidia-smi; None without one."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = done.stdout.strip().splitlines()
    return names[0].strip() if done.returncode == 0 and names else None


def load_note() -> str | None:
    """A warning when other processes compete for the CPUs (1-minute load average above the CPU count)."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cpus = os.getloadavg()[0], cpu_count()
    if load <= cpus:
        return None
    return (f"load average {load:.1f} on {cpus} CPUs: other processes compete for the CPU, so CPU timings are "
            "noisy (read the speed-up IQR); --threads 1 avoids thread-pool stalls on a busy machine")


def _peak_rss_mb() -> str | None:
    """This process's peak resident memory so far (all sessions together), in MiB."""
    try:
        import resource
    except ImportError:
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return f"{kib / 1024:.0f}"


def environment() -> dict[str, str | None]:
    """Versions of foldnorm and the runtimes, the CPU and GPU; packages not installed are None."""
    env: dict[str, str | None] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": str(cpu_count()),
        "load_average": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else None,
        "gpu": gpu_name(),
        "peak_rss_mb": _peak_rss_mb(),
    }
    for pkg in ("foldnorm", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "tensorrt"):
        env[pkg] = _version(pkg)
    return env
