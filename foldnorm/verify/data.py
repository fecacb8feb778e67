"""Verification data on disk: feeds (model inputs) and outputs as `.npz` or Polygraphy-compatible `.json`,
and feeds from a user's data-loader script.

`.npz`: one array per input name (what `numpy.savez(path, input=x)` writes) holds one feed; several feeds are
keyed `<i>/<name>` (`0/input`, `1/input`, ...). Saved outputs are keyed `<role>/<i>/<name>` with role
`reference` or `candidate`.

`.json`: Polygraphy's documented JSON format, written and read here without Polygraphy. Inputs are what
`polygraphy run --save-inputs` writes: a list of feed dicts, each array encoded as
`{"array": base64 of numpy.save bytes, "polygraphy_class": "ndarray"}`. Outputs are a Polygraphy `RunResults`
(`{"lst": [[runner, [IterationResult, ...]], ...], "polygraphy_class": "RunResults"}`) with the runners
`reference` and `candidate`, which `polygraphy run --load-outputs` reads.

A data-loader script `FILE.py:FUNC` follows Polygraphy's convention: `FUNC()` (default `load_data`) returns or
yields feed dicts, `{input name: numpy array}`.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import io
import json
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foldnorm.errors import InputSpecError, first_line
from foldnorm.onnxgraph.atomicfile import atomic_path

Feed = dict[str, np.ndarray]

_NDARRAY = "ndarray"
_MARKER = "polygraphy_class"
_LEGACY_MARKER = "polygraphy_serialized_json_type"
_FEED_KEY = re.compile(r"^(\d+)/(.+)$")


def read_feeds(path: str | os.PathLike) -> list[Feed]:
    """The feeds in an `.npz` or Polygraphy `.json` file (one feed per run, in order)."""
    where = Path(path)
    if not where.is_file():
        raise InputSpecError(f"{where}: no such file; give an .npz (numpy.savez, one array per input) or a "
                             "JSON file written by polygraphy run --save-inputs")
    if where.suffix.lower() == ".json":
        return _read_json_feeds(where)
    try:
        with np.load(where, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputSpecError(f"{where}: not a readable .npz file ({first_line(exc)}); write it with "
                             "numpy.savez(path, name=array, ...)") from None
    return _split_feeds(arrays)


def _split_feeds(arrays: Mapping[str, np.ndarray]) -> list[Feed]:
    """One feed from plain names; several from `<i>/<name>` keys."""
    matches = {key: _FEED_KEY.match(key) for key in arrays}
    if not arrays or not all(matches.values()):
        return [dict(arrays)]
    feeds: dict[int, Feed] = {}
    for key, match in matches.items():
        assert match is not None
        feeds.setdefault(int(match.group(1)), {})[match.group(2)] = arrays[key]
    return [feeds[i] for i in sorted(feeds)]


def _read_json_feeds(where: Path) -> list[Feed]:
    try:
        data = json.loads(where.read_text(), object_pairs_hook=_decode)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, binascii.Error) as exc:
        raise InputSpecError(f"{where}: not a Polygraphy JSON data file ({first_line(exc)}); write it with "
                             "polygraphy run --save-inputs FILE.json") from None
    items = data if isinstance(data, list) else [data]
    feeds = [item for item in items if isinstance(item, dict)
             and all(isinstance(v, np.ndarray) for v in item.values())]
    if not feeds or len(feeds) != len(items):
        raise InputSpecError(f"{where}: expected a list of feed dicts ({{input name: array}}), as polygraphy run "
                             "--save-inputs writes; got something else")
    return feeds


def _decode(pairs: list[tuple[str, Any]]) -> Any:
    """Polygraphy's JSON object hook: arrays (base64 `.npy` bytes) and lazy-array wrappers become numpy arrays."""
    obj = dict(pairs)
    kind = obj.get(_MARKER) or next((k.removeprefix("__polygraphy_encoded_") for k, v in obj.items()
                                     if isinstance(v, str) and v == _LEGACY_MARKER), None)
    if kind == _NDARRAY:
        return np.load(io.BytesIO(base64.b64decode(obj["array"].encode(), validate=True)), allow_pickle=False)
    if kind in ("LazyArray", "LazyNumpyArray"):
        return obj["values"]
    return obj


def _encode_array(array: np.ndarray) -> dict[str, str]:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode(), _MARKER: _NDARRAY}


def write_feeds(path: str | os.PathLike, feeds: Sequence[Mapping[str, np.ndarray]]) -> Path:
    """Write `feeds` to an `.npz` or Polygraphy `.json` file (by extension), atomically."""
    where = _data_path(path, "--save-inputs")
    if where.suffix.lower() == ".json":
        _write_json(where, [{name: _encode_array(a) for name, a in feed.items()} for feed in feeds])
    elif len(feeds) == 1:
        _write_npz(where, dict(feeds[0]))
    else:
        _write_npz(where, {f"{i}/{name}": a for i, feed in enumerate(feeds) for name, a in feed.items()})
    return where


def write_outputs(path: str | os.PathLike, names: Sequence[str], runs: Mapping[str, Sequence[Sequence[np.ndarray]]]
                  ) -> Path:
    """Write each role's outputs (`{role: [[array per name] per feed]}`) to `.npz` or a Polygraphy `.json`."""
    where = _data_path(path, "--save-outputs")
    if where.suffix.lower() == ".json":
        lst = [[role, [{"outputs": {n: {"values": _encode_array(a), _MARKER: "LazyArray"} for n, a in zip(names, run)},
                        "runtime": None, "runner_name": role, _MARKER: "IterationResult"} for run in results]]
               for role, results in runs.items()]
        _write_json(where, {"lst": lst, _MARKER: "RunResults"})
    else:
        _write_npz(where, {f"{role}/{i}/{n}": a for role, results in runs.items()
                           for i, run in enumerate(results) for n, a in zip(names, run)})
    return where


def _data_path(path: str | os.PathLike, option: str) -> Path:
    where = Path(path)
    if where.suffix.lower() not in (".npz", ".json"):
        raise InputSpecError(f"{option} {where}: give a file ending in .npz or .json")
    if not where.parent.is_dir():
        raise InputSpecError(f"{option} {where}: the directory {where.parent} does not exist; create it first")
    return where


def _write_json(where: Path, data: Any) -> None:
    with atomic_path(where) as tmp:
        tmp.write_text(json.dumps(data))


def _write_npz(where: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(where) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types allow_pickle as a kwarg


def load_data_loader(spec: str) -> list[Feed]:
    """The feeds of a data-loader script `FILE.py:FUNC` (FUNC defaults to `load_data`), Polygraphy's convention:
    FUNC() returns or yields dicts `{input name: array}`."""
    file, sep, func = spec.rpartition(":")
    if not sep or not file.endswith(".py"):
        file, func = spec, "load_data"
    where = Path(file)
    if not where.is_file():
        raise InputSpecError(f"--data-loader-script {spec}: no file {where}; give FILE.py or FILE.py:FUNC")
    module_spec = importlib.util.spec_from_file_location(f"foldnorm_data_loader_{where.stem}", where)
    if module_spec is None or module_spec.loader is None:
        raise InputSpecError(f"--data-loader-script {spec}: {where} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    loader = getattr(module, func, None)
    if not callable(loader):
        raise InputSpecError(f"--data-loader-script {spec}: {where} defines no function {func!r}; "
                             f"define {func}() yielding {{input name: numpy array}} dicts")
    feeds = [{name: np.asarray(value) for name, value in dict(feed).items()} for feed in loader()]
    if not feeds:
        raise InputSpecError(f"--data-loader-script {spec}: {func}() gave no feeds; yield at least one dict")
    return feeds
