"""Intermediate tensors compared in passes bounded by bytes, one session open at a time."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from support.builders import parse
from support.chains import conv_stack, corrupt_conv

import foldnorm
from foldnorm.errors import InputSpecError
from foldnorm.verify import tensors
from foldnorm.verify.compare import compare_models, verification_draws
from foldnorm.verify.ortrun import outputs
from foldnorm.verify.tensors import CHUNK, MIN_BYTES, feed_shapes, tensor_errors, tensor_passes, threads_each

Feed = dict[str, np.ndarray]


def feeds(rng: np.random.Generator, batches: tuple[int, ...] = (1, 2), channels: int = 4) -> list[Feed]:
    return [{"x": rng.normal(0, 1, (b, channels, 6, 6)).astype(np.float32)} for b in batches]


def shapes(channels: int) -> list[dict[str, tuple[int, ...]]]:
    return [{"x": (b, channels, 6, 6)} for b in (1, 2)]


def test_passes_hold_the_bytes_of_every_feed(rng: np.random.Generator) -> None:
    model = conv_stack(rng, 5, channels=64)  # each tensor: 64 x 6 x 6 float32 = 9216 bytes per sample
    names = [f"c{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
    per_tensor = 9216 * (1 + 2)  # over batch sizes 1 and 2
    assert tensor_passes(model, names, shapes(64)) == [names]  # the default budget: one pass
    passes = tensor_passes(model, names, shapes(64), budget=3 * per_tensor)
    assert passes == [names[0:3], names[3:6], names[6:9], names[9:]]
    assert tensor_passes(model, names[:2], shapes(64), budget=per_tensor - 1) == [["c0"], ["c1"]]
    assert tensor_passes(model, [*names[:2], "c0"], shapes(64), budget=2 * per_tensor) == [names[:2]]


def test_a_tensor_of_unknown_size_counts_for_a_share_of_the_budget() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4] x) => (int64[2, M] y) {
        r = Relu (x)
        y = NonZero (r)
    }
    """)
    feed = [{"x": (2, 4)}]
    budget = CHUNK * MIN_BYTES * 4
    # r: 32 bytes, counted as MIN_BYTES; y: its size depends on the values, counted as budget / CHUNK
    assert tensor_passes(model, ["y"] * 3 + ["r"], feed, budget=budget) == [["y", "r"]]
    many = [f"t{i}" for i in range(CHUNK + 1)]  # names shape inference knows nothing of
    assert [len(p) for p in tensor_passes(model, many, feed, budget=budget)] == [CHUNK, 1]


def test_small_models_run_side_by_side_big_ones_one_session_at_a_time(tmp_path: Path, rng: np.random.Generator,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ref = conv_stack(rng, 4)
    cand = foldnorm.fold_model(ref).model
    events: list[tuple[str, str, int, str]] = []

    def logged(source: onnx.ModelProto, model: onnx.ModelProto, workdir: Path, role: str, label: str,
               draws: Iterator[Feed], *, threads: int = 0) -> Iterator[list[np.ndarray]]:
        events.append(("open", role, threads, threading.current_thread().name))
        yield from outputs(source, model, workdir, role, label, draws, threads=threads)
        events.append(("close", role, threads, threading.current_thread().name))

    x = feeds(rng)
    together = tensor_errors(ref, cand, ["b0", "b1", "b2"], x, x, tmp_path, run=logged)
    half, cores = threads_each(ref, cand), len(os.sched_getaffinity(0))
    assert half == (cores // 2 if cores >= 2 else 0)
    if half:  # the reference in a thread of its own, both on half the cores
        assert sorted(events) == sorted([(e, "reference", half, "foldnorm-reference") for e in ("open", "close")]
                                        + [(e, "candidate", half, "MainThread") for e in ("open", "close")])
    events.clear()
    monkeypatch.setattr(tensors, "TOGETHER_BUDGET", 0)  # too big to run together
    alone = tensor_errors(ref, cand, ["b0", "b1", "b2"], x, x, tmp_path, run=logged)
    assert [e[:3] for e in events] == [("open", "reference", 0), ("close", "reference", 0),
                                       ("open", "candidate", 0), ("close", "candidate", 0)]
    assert alone == together and all(s.ok and s.total == 3 * 4 * 36 for s in alone.values())


def test_an_error_in_the_reference_thread_reaches_the_caller(tmp_path: Path, rng: np.random.Generator) -> None:
    ref = conv_stack(rng, 2)
    cand = foldnorm.fold_model(ref).model
    wrong = [{"x": rng.normal(0, 1, (1, 4, 5, 5)).astype(np.float32)}]  # not the model's 6x6
    with pytest.raises(InputSpecError, match="ONNX Runtime cannot run the reference"):
        tensor_errors(ref, cand, ["b0"], wrong, feeds(rng, (1,)), tmp_path, shapes=[{"x": (1, 4, 6, 6)}])
    assert not any(t.name == "foldnorm-reference" for t in threading.enumerate())  # stopped and joined


def test_errors_are_the_same_in_any_number_of_passes(tmp_path: Path, rng: np.random.Generator,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ref = conv_stack(rng, 6)
    onnx.save(ref, tmp_path / "ref.onnx")
    onnx.save(corrupt_conv(foldnorm.fold_model(ref).model, "/block3/conv/Conv"), tmp_path / "bad.onnx")
    names = [f"b{i}" for i in range(6)]
    one = compare_models(tmp_path / "ref.onnx", tmp_path / "bad.onnx", tensors=names)
    monkeypatch.setattr(tensors, "TENSOR_BUDGET", MIN_BYTES)  # a pass per tensor
    many = compare_models(tmp_path / "ref.onnx", tmp_path / "bad.onnx", tensors=names)
    assert one.tensors == many.tensors and one.to_dict()["outputs"] == many.to_dict()["outputs"]
    assert [n for n in names if not one.tensors[n].ok] == ["b3", "b4", "b5"]


def test_draws_know_their_input_shapes_without_drawing(rng: np.random.Generator) -> None:
    model = conv_stack(rng, 2)  # x: [N, 4, 6, 6]
    draws = verification_draws(model, batch_sizes=(1, 3), samples=2)
    assert draws.shapes == feed_shapes(draws) == [{"x": (1, 4, 6, 6)}] * 2 + [{"x": (3, 4, 6, 6)}] * 2
    given = verification_draws(model, inputs=feeds(rng, (5,)))
    assert given.shapes == [{"x": (5, 4, 6, 6)}]
    static = conv_stack(rng, 1)
    static.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # a static batch axis keeps its size
    assert verification_draws(static, batch_sizes=(1, 4)).shapes == [{"x": (2, 4, 6, 6)}] * 2
