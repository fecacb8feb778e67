"""Item 5: signals clean up like Ctrl-C, stale temporary files are swept, a directory fold stops in one line,
and an (onnx, data) pair is replaced so that a crash at any step leaves the old or the new pair."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse
from support.cli import run
from support.hostile import save_external

import foldnorm
from foldnorm import interrupts
from foldnorm.onnxgraph import atomicfile, modelio
from foldnorm.onnxgraph.atomicfile import TEMP_PREFIX

FOLDNORM = str(Path(sys.executable).parent / "foldnorm")


def wide_conv_bn(rng: np.random.Generator, channels: int = 128) -> onnx.ModelProto:
    """Conv-BN-Conv big enough (0.6 MB of weights, 96x96 input) that verifying it takes a moment; the second
    Conv's weight is not folded, so an external-data model stays one after folding."""
    inits = {"W": rng.normal(0, 0.05, (channels, channels, 3, 3)).astype(np.float32),
             "V": rng.normal(0, 0.05, (channels, channels, 1, 1)).astype(np.float32),
             **bn_params("bn", channels, rng)}
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, {channels}, 96, 96] x) => (float[N, {channels}, 96, 96] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        b = BatchNormalization (c, {bn_inputs("bn")})
        y = Conv (b, V)
    }}
    """, inits)


def temp_entries(*dirs: Path) -> list[str]:
    return [p.name for d in dirs for p in d.iterdir() if p.name.startswith(TEMP_PREFIX)]


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_signal_during_a_fold_cleans_up(signum: int, code: int, tmp_path: Path, rng: np.random.Generator) -> None:
    """The signal arrives while the staged output exists (during verification): it is removed, exit 128+N."""
    src = save_external(wide_conv_bn(rng), tmp_path / "m.onnx")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    proc = subprocess.Popen([FOLDNORM, "fold", str(src), "-o", str(tmp_path / "out.onnx")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: bool(temp_entries(tmp_path)), proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"interrupted ({signal.Signals(signum).name})")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no leftovers, input untouched


def test_a_later_run_sweeps_what_a_killed_run_left(tmp_path: Path, rng: np.random.Generator) -> None:
    src = save_external(wide_conv_bn(rng), tmp_path / "m.onnx")
    proc = subprocess.Popen([FOLDNORM, "fold", str(src), "-o", str(tmp_path / "out.onnx")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any((tmp_path / name).is_dir() for name in temp_entries(tmp_path)), proc)  # staged, verifying
    proc.kill()
    proc.wait()
    left = temp_entries(tmp_path)
    assert left and all(name.startswith(f"{TEMP_PREFIX}{proc.pid}-") for name in left)
    alive = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-in-use"  # a live process's file is never touched
    alive.write_bytes(b"busy")
    result = foldnorm.fold_file(src, tmp_path / "out.onnx", verify=False)
    assert result.output is not None
    assert temp_entries(tmp_path) == [alive.name]


def _directory(tmp_path: Path, rng: np.random.Generator, count: int = 6) -> tuple[Path, Path]:
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    for k in range(count):
        save_external(wide_conv_bn(rng), src / f"m{k}.onnx")
    return src, dst


def test_ctrl_c_to_the_process_group_in_directory_mode_is_one_line(tmp_path: Path,
                                                                   rng: np.random.Generator) -> None:
    src, dst = _directory(tmp_path, rng)
    proc = subprocess.Popen([FOLDNORM, "fold", str(src), "-o", str(dst), "--jobs", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: len(temp_entries(dst)) >= 1, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [ln for ln in lines if not ln.startswith(("ok ", "FAILED "))] == \
        ["interrupted (SIGINT); no partially written file was left behind"]
    assert temp_entries(dst, src) == []
    assert all(p.name.startswith("m") for p in dst.iterdir())  # only complete models
    for model in dst.glob("*.onnx"):
        foldnorm.load_model(model)


def test_sigterm_in_directory_mode_stops_the_workers(tmp_path: Path, rng: np.random.Generator) -> None:
    src, dst = _directory(tmp_path, rng)
    proc = subprocess.Popen([FOLDNORM, "fold", str(src), "-o", str(dst), "--jobs", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(temp_entries(dst)) >= 1, proc)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert temp_entries(dst, src) == []
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
    assert children == ""


STEPS = ("replace", "link", "unlink", "copyfile")


class FailingCommit:
    """Makes the `fail_at`-th file operation of `StagedModel.commit` fail, after copying the directory as a
    crash at that point would have left it."""

    def __init__(self, directory: Path, fail_at: int, crashed: Path) -> None:
        self.directory, self.fail_at, self.crashed = directory, fail_at, crashed
        self.calls = 0
        self.committing = False
        self.real = {name: getattr(self._module(name), name) for name in STEPS}
        self.real_commit = modelio.StagedModel.commit

    @staticmethod
    def _module(name: str) -> Any:
        return modelio.shutil if name == "copyfile" else modelio.os

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(modelio.StagedModel, "commit", lambda staged: self.commit(staged))
        for name in STEPS:  # the os module itself: the commit's renames and links, and the cleanup's unlinks
            monkeypatch.setattr(self._module(name), name, lambda *a, _n=name, **k: self.step(_n, *a, **k))

    def commit(self, staged: modelio.StagedModel) -> Path:
        self.committing = True
        try:
            return self.real_commit(staged)
        finally:
            self.committing = False

    def step(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls += self.committing
        if self.committing and self.calls == self.fail_at:
            shutil.copytree(self.directory, self.crashed, ignore=shutil.ignore_patterns(f"{TEMP_PREFIX}*"))
            raise OSError(5, "injected failure")
        return self.real[name](*args, **kwargs)


def _pair_state(directory: Path, name: str) -> tuple[int, bytes]:
    """(BatchNorm count, W bytes) of the model `name` in `directory`, read with its data as a user would."""
    model = foldnorm.load_model(directory / name)
    weight = next(t for t in model.graph.initializer if list(t.dims) == [128, 128, 3, 3])
    return sum(n.op_type == "BatchNormalization" for n in model.graph.node), weight.raw_data


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "over an older output pair"])
def test_every_crash_point_of_a_commit_leaves_a_consistent_pair(in_place: bool, tmp_path: Path,
                                                                 rng: np.random.Generator,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash at each file operation of the commit (and fail it with an OSError): old or new pair, never a mix."""
    work = tmp_path / "work"
    work.mkdir()
    save_external(wide_conv_bn(rng), work / "m.onnx")
    if not in_place:
        save_external(wide_conv_bn(rng), work / "out.onnx")  # an older, different pair under the output's name
    pristine = {p.name: p.read_bytes() for p in work.iterdir()}
    target = "m.onnx" if in_place else "out.onnx"
    old = _pair_state(work, target)
    reference = tmp_path / "reference"
    shutil.copytree(work, reference)
    foldnorm.fold_file(reference / "m.onnx", reference / target, verify=False, in_place=in_place)
    new = _pair_state(reference, target)
    assert new != old
    fail_at = 0
    while True:
        fail_at += 1
        shutil.rmtree(work)
        work.mkdir()
        for name, data in pristine.items():
            (work / name).write_bytes(data)
        failing = FailingCommit(work, fail_at, tmp_path / f"crash{fail_at}")
        failing.install(monkeypatch)
        try:
            foldnorm.fold_file(work / "m.onnx", work / target, verify=False, in_place=in_place)
        except foldnorm.FoldnormError:
            pass
        finally:
            monkeypatch.undo()
        if failing.calls < fail_at:
            break  # the commit made fewer calls: every point has been tried
        assert _pair_state(failing.crashed, target) in (old, new), f"a crash at step {fail_at} left a mixed pair"
        assert _pair_state(work, target) in (old, new), f"a failure at step {fail_at} left a mixed pair"
    assert fail_at > 3
    assert sorted(p.name for p in work.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_an_interrupt_a_library_wrapped_is_still_an_interrupt(tmp_path: Path, rng: np.random.Generator,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM landing in onnxruntime's import comes out as `ImportError: initialization failed` raised from it."""
    from foldnorm.interrupts import Interrupted
    from foldnorm.verify import compare

    def wrapped(*args: object, **kwargs: object) -> None:
        try:
            raise Interrupted(signal.SIGTERM)
        except Interrupted as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(compare, "outputs", wrapped)
    src = save_external(wide_conv_bn(rng), tmp_path / "m.onnx")
    result = run(["fold", str(src), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 143, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("interrupted (SIGTERM)")
    assert temp_entries(tmp_path) == [] and not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_cleanup_waits_until_it_is_done(signum: int, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The last window of the fold's cleanup: a signal that arrives while a staged folder is being removed is
    raised once the folder is gone, not half-way through."""
    staged = tmp_path / f"{TEMP_PREFIX}1-0000000000000000"
    for k in range(50):
        (staged / f"d{k}").mkdir(parents=True)
        (staged / f"d{k}" / "f").write_bytes(b"x")
    unlink = os.unlink
    sent: list[str] = []

    def unlink_and_signal(path: Any, *args: Any, **kwargs: Any) -> None:
        unlink(path, *args, **kwargs)
        if not sent:  # the first file removed: the signal comes in the middle of the tree
            sent.append(str(path))
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(os, "unlink", unlink_and_signal)
    with interrupts.signals_as_interrupts(), pytest.raises(KeyboardInterrupt):
        atomicfile.remove_tree(staged)
    assert sent and not staged.exists()
