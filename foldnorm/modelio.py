"""Reading and writing ONNX files: clear errors on bad input, atomic writes, external data kept working."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from foldnorm.errors import ModelLoadError, OutputPathError

ModelLike = str | os.PathLike | onnx.ModelProto

# Protobuf cannot serialize a message over 2 GiB; stay clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(source: ModelLike) -> onnx.ModelProto:
    """Return the model at `source` (a path or an already loaded `ModelProto`), external data included."""
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
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(
            f"{path}: not a valid ONNX model ({_first_line(exc)}); give an .onnx file written by an exporter."
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: parsed, but holds no graph; give an .onnx model file.")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{path}: its external data could not be read ({_first_line(exc)}); "
            "keep the .data file next to the model."
        ) from exc
    return model


def model_label(source: ModelLike) -> str:
    """A short human name for a model source, for reports."""
    if isinstance(source, onnx.ModelProto):
        return source.graph.name or "<in-memory model>"
    return str(source)


def check_output_path(output: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """Validate an output path before any work is done; refuse to overwrite an input."""
    out = Path(output)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{out}: directory {parent} does not exist; create it first.")
    if out.is_dir():
        raise OutputPathError(f"{out}: is a directory; give a file name such as {out / 'model.onnx'}.")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"{out}: directory {parent} is not writable; choose another output path.")
    for inp in inputs:
        if Path(inp).exists() and out.exists() and out.resolve() == Path(inp).resolve():
            raise OutputPathError(f"{out}: output is the input file; choose another output path.")
    return out


def save_model(model: onnx.ModelProto, output: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write `model` to `output` atomically (temp files, then rename); never leave a partial file.

    `external_data=None` stores tensors externally only when the model would exceed protobuf's 2 GiB limit.
    External tensors go to `<output name>.data` beside the model.
    """
    out = check_output_path(output)
    if external_data is None:
        external_data = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    tmpdir = Path(tempfile.mkdtemp(prefix=".foldnorm-", dir=out.parent))
    try:
        tmp_model = tmpdir / out.name
        data_name = out.name + ".data"
        if external_data:
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            # convert_model_to_external_data marks the tensors in place; load them back into memory so the
            # caller's object stays self-contained.
            onnx.load_external_data_for_model(model, str(tmpdir))
            if (tmpdir / data_name).exists():  # absent when every tensor is under the size threshold
                os.replace(tmpdir / data_name, out.parent / data_name)
        else:
            onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, out)
    except PermissionError as exc:
        raise OutputPathError(f"{out}: cannot write ({_first_line(exc)}); choose a writable path.") from exc
    finally:
        for leftover in tmpdir.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            tmpdir.rmdir()
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
