"""Reading and writing ONNX files: clear errors on bad input, atomic writes, external data kept working."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

import onnx
import onnx.checker
import onnx.shape_inference
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from foldnorm.errors import FoldnormError, InvalidModelError, ModelLoadError, OutputPathError, first_line
from foldnorm.onnxgraph.atomicfile import refuse_non_regular, remove_tree, sweep_stale, temp_name
from foldnorm.onnxgraph.consistency import check_consistency
from foldnorm.onnxgraph.external import (
    SIZE_THRESHOLD,
    data_files,
    has_data_files,
    in_memory_bytes,
    load_weights,
    locate_weights,
    mark_inline,
    rename_data_file,
    write_inline,
    write_with_external_data,
)
from foldnorm.onnxgraph.inline import read_skeleton
from foldnorm.onnxgraph.memory import release_freed_memory
from foldnorm.onnxgraph.outputs import check_output_path
from foldnorm.onnxgraph.shapes import weightless_bytes
from foldnorm.onnxgraph.tensors import all_tensors, check_tensors

log = logging.getLogger(__name__)

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
    _check_model_file(path)
    model, inline = _parse(path, keep_weights_on_disk)
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: parsed, but holds no graph; give an .onnx model file.")
    check_opset(model, path)
    check_tensors(model, str(path))
    locate_weights(model, path)
    mark_inline(inline)
    del inline
    if check:
        light = weightless_bytes(model)
        # The C++ checks hold up to ~35x the skeleton in C++ messages on a graph of many small tensors: a model
        # whose message holds no big weights (its bytes at most twice the skeleton's) waits for them as its bytes
        # (a tenth of its Python messages) and is parsed back after.
        whole = model.SerializeToString() if model.ByteSize() <= 2 * len(light) else None
        if whole is not None:
            del model
        _check_skeleton(light, path)
        del light
        if whole is not None:
            model = onnx.ModelProto.FromString(whole)
            del whole
    check_consistency(model, str(path))
    if not keep_weights_on_disk:
        read_weights(model, path)
    return model


def read_weights(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Read the weights that `load_model(path, keep_weights_on_disk=True)` left on disk into `model`'s message."""
    try:
        load_weights(model)
    except OSError as exc:
        raise ModelLoadError(f"{path}: its external data could not be read ({first_line(exc)}); keep the "
                             ".data file next to the model.") from exc


def _parse(path: Path, skip_weights: bool) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """The model at `path`, and the initializers left in the file: with `skip_weights` the raw data of big
    inline initializers is not parsed (`inline.read_skeleton`), they point into the file itself."""
    try:
        skeleton = read_skeleton(path, SIZE_THRESHOLD) if skip_weights else None
        if skeleton is not None:
            model, spans = skeleton
            return model, [model.graph.initializer[k] for k, _, _ in spans]
        return onnx.load(str(path), load_external_data=False), []
    except PermissionError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({first_line(exc)}); check its permissions.") from exc
    except (DecodeError, json_format.Error, ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(
            f"{path}: not a valid ONNX model ({first_line(exc)}); give an .onnx file written by an exporter."
        ) from exc


def model_files(path: str | os.PathLike) -> list[Path]:
    """The model file at `path` and the data files it names (resolved), read without its weights.

    For checking outputs against inputs before any work; a file that is not a readable model is just
    itself (loading it reports the problem).
    """
    files = [Path(path)]
    with contextlib.suppress(FoldnormError, OSError):
        model, _ = _parse(Path(path), True)  # (its inline weights point at the file itself: not a data file)
        locations = {e.value for t in all_tensors(model) for e in t.external_data if e.key == "location"}
        found = [(Path(path).parent / loc).resolve() for loc in sorted(locations) if "\0" not in loc]
        files.extend(f for f in found if f != Path(path).resolve())
    return files


def validate_model(model: onnx.ModelProto, label: str) -> None:
    """The checks of a loaded `ModelProto` that need no file: opset, tensor sizes, convolution shapes.

    Raises `InvalidModelError` naming `label`; nothing is read from disk. (The length of raw data held in the
    message is checked when a tensor is read: `load_model` checked it for a file already.)
    """
    check_opset(model, label)
    check_tensors(model, label, inline_bytes=False)
    check_consistency(model, label)


def _check_model_file(path: Path) -> None:
    """Refuse a model path that is missing, unreadable, not a regular file or empty, before opening it."""
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ModelLoadError(f"{path}: no such file; check the path.") from None
        raise ModelLoadError(f"{path}: cannot be read ({first_line(exc)}); check the path.") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"{path}: is a directory; give the path of an .onnx file.")
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{path}: is not a regular file (a device or a pipe); give the path of an .onnx file.")
    if info.st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty; re-export the model.")


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


def _check_skeleton(light: bytes, path: Path) -> None:
    """Run onnx.checker and strict shape inference on the model's weightless skeleton (`shapes.weightless_bytes`:
    on the model itself both would serialize every weight, the cost of a second load)."""
    try:
        onnx.checker.check_model(light)
        onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        # (onnx raises a bare ValueError for, e.g., a graph input of element type 0)
        raise InvalidModelError(
            f"{path}: the model is invalid ({_brief(exc)}); fix or re-export it (onnx.checker and shape "
            "inference must pass)."
        ) from exc
    finally:
        release_freed_memory()  # what the C++ checks freed: the graph index built next would stack on it


def model_label(source: ModelLike) -> str:
    """A short human name for a model source, for reports."""
    if isinstance(source, onnx.ModelProto):
        return source.graph.name or "<in-memory model>"
    return str(source)


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether `model` is too big to serialize as one protobuf (over 2 GiB, with a margin)."""
    return in_memory_bytes(model) > EXTERNAL_DATA_THRESHOLD


class StagedModel:
    """A model written to a temporary folder beside its destination, not yet moved into place.

    `commit()` moves it so that a crash at any point leaves either the old (model, data) pair or the new
    one, both consistent. With no data file, or none yet at `<output>.data`, that is two renames: the data
    file, then the model. When an older data file holds the name, the new data first goes in place under
    an interim name `<output>.<8 hex digits>.data` with a model that refers to it; then the data file is
    linked (copied where links are not supported) to `<output>.data` and the model that refers to that name
    replaces the interim one. Interim files left by a crash are removed by the next commit of `output`
    (except those in `keep`: files still in use).
    """

    def __init__(self, output: Path, tmpdir: Path, data_name: str | None, keep: frozenset[Path] = frozenset()) -> None:
        self.output = output
        self.tmpdir = tmpdir
        self.data_name = data_name
        self.keep = keep
        self.path = tmpdir / output.name
        self.interim = _interim_name(output) if data_name and (output.parent / data_name).exists() else None

    def commit(self) -> Path:
        """Move the staged files into place and return the output path."""
        placed: Path | None = None
        try:
            if self.data_name is not None:
                placed = self.output.parent / (self.interim or self.data_name)
                os.replace(self.tmpdir / (self.interim or self.data_name), placed)
            refuse_non_regular(self.output)
            os.replace(self.path, self.output)
        except BaseException as exc:
            if placed is not None:  # the old pair stays in place, untouched
                with contextlib.suppress(OSError):
                    placed.unlink()
            if isinstance(exc, OSError):
                raise OutputPathError(f"{self.output}: cannot write ({first_line(exc)}); choose a writable "
                                      "path.") from exc
            raise
        in_use = placed if self.interim is not None else None  # the data file the model in place refers to
        try:
            if in_use is not None and self.data_name is not None:
                self._rename_interim(in_use, self.data_name)
                in_use = None
        except OSError as exc:  # the new pair is in place under the interim name: consistent, usable
            log.warning("%s: its data file keeps the name %s (%s)", self.output, self.interim, first_line(exc))
        finally:
            self.discard()
            self._remove_interim_files(in_use)
        return self.output

    def _rename_interim(self, interim: Path, data_name: str) -> None:
        """Give the data file its own name: a second name for it, then the model that refers to that name."""
        linked = self.tmpdir / "linked.data"
        try:
            os.link(interim, linked)
        except OSError:
            shutil.copyfile(interim, linked)
        os.replace(linked, self.output.parent / data_name)
        os.replace(self.tmpdir / "final.onnx", self.output)

    def _remove_interim_files(self, in_use: Path | None) -> None:
        """Remove interim data files of `output` (left by this commit or a crashed one), except `in_use`."""
        pattern = re.compile(re.escape(self.output.name) + r"\.[0-9a-f]{8}\.data")
        keep = {p.resolve() for p in [*self.keep, *([in_use] if in_use else [])]}
        for old in self.output.parent.iterdir():
            if pattern.fullmatch(old.name) and old.resolve() not in keep:
                with contextlib.suppress(OSError):
                    old.unlink()

    def discard(self) -> None:
        """Remove whatever is still staged."""
        remove_tree(self.tmpdir)


def _fsync(path: Path) -> None:
    """Flush the file at `path` to its storage device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _interim_name(out: Path) -> str:
    while True:
        name = f"{out.name}.{secrets.token_hex(4)}.data"
        if not (out.parent / name).exists():
            return name


def stage_model(model: onnx.ModelProto, output: str | os.PathLike, *, external_data: bool | None = None,
                in_place: bool = False, inputs: tuple[str | os.PathLike, ...] = (),
                keep_in_memory: bool = True) -> StagedModel:
    """Write `model` next to `output` under a temporary name; `commit()` moves it into place atomically.

    `external_data=None` stores tensors externally when the model would exceed protobuf's 2 GiB limit or
    has tensors in external data files; they go to `<output name>.data` (see `StagedModel` for how an old pair is
    replaced). `keep_in_memory=False` is for a caller that drops `model` right after: its written tensors
    are then not read back (see `foldnorm.onnxgraph.external.write_with_external_data`). On any error or
    interrupt nothing is left behind.
    """
    out = check_output_path(output, *inputs, in_place=in_place)
    if external_data is None:
        external_data = has_data_files(model) or needs_external_data(model)
    sweep_stale(out.parent)
    tmpdir = temp_name(out.parent)
    try:
        tmpdir.mkdir(mode=0o700)
        keep = frozenset() if in_place else frozenset(data_files(model))
        staged = StagedModel(out, tmpdir, out.name + ".data" if external_data else None, keep)
        if staged.data_name is not None:
            name = staged.interim or staged.data_name
            if not write_with_external_data(model, staged.path, name, keep_in_memory=keep_in_memory):
                staged.data_name = staged.interim = None
            elif staged.interim is not None:
                rename_data_file(staged.path, staged.interim, staged.data_name, tmpdir / "final.onnx")
        else:
            write_inline(model, staged.path)
        for written in tmpdir.iterdir():  # on disk before any rename makes them the output
            _fsync(written)
    except OSError as exc:
        remove_tree(tmpdir)
        raise OutputPathError(f"{out}: cannot write ({first_line(exc)}); choose a writable path with free "
                              "space.") from exc
    except BaseException:
        remove_tree(tmpdir)
        raise
    return staged


def save_model(model: onnx.ModelProto, output: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write `model` to `output` atomically (temp files, then rename); never leave a partial file.

    `external_data=None` stores tensors externally only when the model would exceed protobuf's 2 GiB limit
    (or has tensors in external data files); they go to `<output name>.data` beside the model. `model`
    itself is left as it was. An interrupt (Ctrl-C) or a write error leaves the previous file, if any,
    untouched and no temporary file behind.
    """
    staged = stage_model(model, output, external_data=external_data)
    try:  # (an interrupt before commit() starts must not leave the staged files either)
        return staged.commit()
    finally:
        staged.discard()


def _brief(exc: BaseException) -> str:
    """The gist of an onnx checker/inference message (they run to many lines of context)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."
