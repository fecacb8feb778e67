"""The backend registry: one entry per runtime; adding one is a module, its tests and one line here."""

from __future__ import annotations

from foldnorm.backends.base import Availability, Backend, Session
from foldnorm.backends.ort_cpu import OrtCpuBackend
from foldnorm.errors import InputSpecError

BACKENDS: dict[str, Backend] = {b.name: b for b in (OrtCpuBackend(),)}


def get_backend(name: str) -> Backend:
    """The backend registered as `name`."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise InputSpecError(f"unknown backend {name!r}; choose from: {', '.join(BACKENDS)}") from None


__all__ = ["BACKENDS", "Availability", "Backend", "Session", "get_backend"]
