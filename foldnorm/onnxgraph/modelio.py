"""Reading and writing ONNX files: clear errors on bad input, atomic writes, external data kept working."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import onnx
import onnx.checker
import onnx.shape_inference
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from foldnorm.errors import InvalidModelError, ModelLoadError, OutputPathError, first_line
from foldnorm.onnxgraph.external import (
    all_tensors,
    has_weights_on_disk,
    in_memory_bytes,
    point_to_files,
    write_with_external_data,
)
from foldnorm.onnxgraph.shapes import weightless_copy

ModelLike = str | os.PathLike | onnx.ModelProto

# Protobuf cannot serialize a message over 2 GiB; stay clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000



def load_model(source: ModelLike, *, check: bool = True, keep_weights_on_disk: bool = False) -> onnx.ModelProto:
    """Return the model at `source` (a path or an already loaded `ModelProto`), external data included.

    A path is checked before its weights are read: it must parse as ONNX, use a supported opset, pass
    `onnx.checker` and strict shape inference (`check=False` skips these two), and have its external data
    files in place. Every problem raises `ModelLoadError` or `InvalidModelError` naming the file and the fix.
    With `keep_weights_on_disk` external tensors are not read into memory: they point at their file (see
    `foldnorm.onnxgraph.external`); such a model is for folding and `save_model`, not for `SerializeToString`.
    A `ModelProto` is returned as it is.
    """
    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; check the path.")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory; give the path of an .onnx file.")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty; re-export the model.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except PermissionError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({first_line(exc)}); check its permissions.") from exc
    except (DecodeError, json_format.Error, ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(
            f"{path}: not a valid ONNX model ({first_line(exc)}); give an .onnx file written by an exporter."
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: parsed, but holds no graph; give an .onnx model file.")
    check_opset(model, path)
    _check_external_files(model, path)
    if check:
        _check_model(model, path)
    if keep_weights_on_disk:
        point_to_files(model, path.parent)
        return model
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{path}: its external data could not be read ({first_line(exc)}); "
            "keep the .data file next to the model."
        ) from exc
    return model


def check_opset(model: onnx.ModelProto, path: Path | str) -> None:
    """Raise `InvalidModelError` when the default-domain opset is one this onnx does not know (`path` names the
    model). Old opsets are read: the fold refuses, node by node, the old operator versions it has no rule for."""
    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not 1 <= entry.version <= newest:
            raise InvalidModelError(
                f"{path}: opset {entry.version} is not one this onnx {onnx.__version__} knows (1-{newest}); "
                f"re-export with opset {newest} or lower, or upgrade onnx."
            )


def default_opset(imports: Iterable[onnx.OperatorSetIdProto]) -> int:
    """The version of the default ONNX domain among `imports` (a model's or a function's; the newest if absent)."""
    versions = [entry.version for entry in imports if entry.domain in ("", "ai.onnx")]
    return versions[0] if versions else onnx.defs.onnx_opset_version()


def _check_external_files(model: onnx.ModelProto, path: Path) -> None:
    sizes: dict[Path, int] = {}
    for tensor in all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        data = path.parent / info.location
        if data not in sizes:
            if not data.is_file():
                raise ModelLoadError(
                    f"{path}: its external data file {data} is missing; copy it next to the model "
                    "(it is written beside the .onnx at export)."
                )
            sizes[data] = data.stat().st_size
        end = (info.offset or 0) + (info.length or 0)
        if end > sizes[data]:
            raise ModelLoadError(
                f"{path}: its external data file {data} is truncated ({sizes[data]} bytes, tensor "
                f"{tensor.name!r} needs {end}); copy the complete file next to the model."
            )


def _check_model(model: onnx.ModelProto, path: Path) -> None:
    """Run onnx.checker and strict shape inference on the model's weightless skeleton (both would otherwise
    serialize every weight: the cost of a second load)."""
    try:
        light = weightless_copy(model)
        onnx.checker.check_model(light)
        onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InvalidModelError(
            f"{path}: the model is invalid ({_brief(exc)}); fix or re-export it (onnx.checker and shape "
            "inference must pass)."
        ) from exc


def model_label(source: ModelLike) -> str:
    """A short human name for a model source, for reports."""
    if isinstance(source, onnx.ModelProto):
        return source.graph.name or "<in-memory model>"
    return str(source)


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether `model` is too big to serialize as one protobuf (over 2 GiB, with a margin)."""
    return in_memory_bytes(model) > EXTERNAL_DATA_THRESHOLD


def check_output_path(output: str | os.PathLike, *inputs: str | os.PathLike, in_place: bool = False) -> Path:
    """Validate an output path before any work is done; refuse to overwrite an input unless `in_place`."""
    out = Path(output)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{out}: directory {parent} does not exist; create it first.")
    if out.is_dir():
        raise OutputPathError(f"{out}: is a directory; give a file name such as {out / 'model.onnx'}.")
    if out.exists() and not out.stat().st_mode & 0o222:
        raise OutputPathError(f"{out}: the file is read-only; make it writable or choose another output path.")
    try:
        probe, probe_name = tempfile.mkstemp(prefix=".foldnorm-probe-", dir=parent)
        os.close(probe)
        os.unlink(probe_name)
    except OSError as exc:
        raise OutputPathError(
            f"{out}: directory {parent} is not writable ({first_line(exc)}); choose another output path."
        ) from None
    for inp in inputs:
        if not in_place and out.exists() and Path(inp).exists() and out.resolve() == Path(inp).resolve():
            raise OutputPathError(
                f"{out}: output is the input file; choose another output path (or pass --in-place)."
            )
    return out


class StagedModel:
    """A model written to a hidden temporary folder beside its destination, not yet moved into place."""

    def __init__(self, output: Path, tmpdir: Path, data_name: str | None) -> None:
        self.output = output
        self.tmpdir = tmpdir
        self.data_name = data_name
        self.path = tmpdir / output.name

    def commit(self) -> Path:
        """Move the staged files into place (data file first, then the model) and return the output path."""
        try:
            if self.data_name is not None:
                os.replace(self.tmpdir / self.data_name, self.output.parent / self.data_name)
            os.replace(self.path, self.output)
        except OSError as exc:
            raise OutputPathError(f"{self.output}: cannot write ({first_line(exc)}); choose a writable path.") \
                from exc
        finally:
            self.discard()
        return self.output

    def discard(self) -> None:
        """Remove whatever is still staged."""
        for leftover in self.tmpdir.iterdir() if self.tmpdir.is_dir() else ():
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            self.tmpdir.rmdir()


def stage_model(model: onnx.ModelProto, output: str | os.PathLike, *, external_data: bool | None = None,
                in_place: bool = False, inputs: tuple[str | os.PathLike, ...] = (),
                keep_in_memory: bool = True) -> StagedModel:
    """Write `model` next to `output` under a temporary name; `commit()` moves it into place atomically.

    `external_data=None` stores tensors externally when the model would exceed protobuf's 2 GiB limit or
    keeps weights on disk; they go to `<output name>.data`. `keep_in_memory=False` is for a caller that
    drops `model` right after: its written tensors are then not read back (see
    `foldnorm.onnxgraph.external.write_with_external_data`). On any error or interrupt nothing is left behind.
    """
    out = check_output_path(output, *inputs, in_place=in_place)
    if external_data is None:
        external_data = has_weights_on_disk(model) or needs_external_data(model)
    tmpdir = Path(tempfile.mkdtemp(prefix=".foldnorm-", dir=out.parent))
    staged = StagedModel(out, tmpdir, out.name + ".data" if external_data else None)
    try:
        if staged.data_name is not None:
            if not write_with_external_data(model, staged.path, staged.data_name, keep_in_memory=keep_in_memory):
                staged.data_name = None
        else:
            onnx.save_model(model, str(staged.path))
    except OSError as exc:
        staged.discard()
        raise OutputPathError(f"{out}: cannot write ({first_line(exc)}); choose a writable path with free "
                              "space.") from exc
    except BaseException:
        staged.discard()
        raise
    return staged


def save_model(model: onnx.ModelProto, output: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write `model` to `output` atomically (temp files, then rename); never leave a partial file.

    `external_data=None` stores tensors externally only when the model would exceed protobuf's 2 GiB limit
    (or was loaded with its weights kept on disk); they go to `<output name>.data` beside the model. `model`
    itself is left as it was. An interrupt (Ctrl-C) or a write error leaves the previous file, if any,
    untouched and no temporary file behind.
    """
    return stage_model(model, output, external_data=external_data).commit()


def _brief(exc: BaseException) -> str:
    """The gist of an onnx checker/inference message (they run to many lines of context)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."
