"""Progress a user can follow (issue 15 #7): unavailable backends first, `config k of N`, the warm-up, an ETA; and
the busy-machine note without the --threads 1 advice under --threads 1."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli

from foldnorm.bench.environment import busy_note
from foldnorm.bench.progress import Eta, Step, eta_text
from foldnorm.bench.runner import benchmark
from foldnorm.errors import BackendUnavailableError


def test_progress_steps_in_order(model_path: str) -> None:
    steps: list[Step] = []
    benchmark(model_path, backends=["tensorrt", "ort-cpu"], warmup=2, iterations=3, progress=steps.append)
    messages = [s.message for s in steps]
    assert messages[0].startswith("skipping tensorrt: unavailable: ")
    assert messages[1] == f"loading {model_path}"
    assert messages[2:4] == ["folding", "verifying the fold at batch sizes 1, 2"]
    first = [s for s in steps if s.message.startswith("config 1 of 2: ")]
    second = [s for s in steps if s.message.startswith("config 2 of 2: ")]
    assert [s.message.removeprefix("config 1 of 2: ") for s in first if s.fraction is None] == [
        "opening ort-cpu opt=disabled fp32 batch 1: unfolded", "opening ort-cpu opt=disabled fp32 batch 1: folded",
        "warm-up ort-cpu opt=disabled fp32 batch 1 (2 runs per variant)"]
    timing = [s for s in first if s.fraction is not None]
    assert [s.fraction for s in timing] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert timing[0].eta_s is None  # nothing to estimate from yet
    assert all(s.eta_s is not None and s.eta_s >= 0 for s in timing[1:] + second)
    assert len(steps) == 4 + len(first) + len(second)


def test_unavailable_backends_are_reported_before_anything_is_prepared(model_path: str) -> None:
    steps: list[Step] = []
    with pytest.raises(BackendUnavailableError, match="tensorrt unavailable"):
        benchmark(model_path, backends=["tensorrt"], progress=steps.append)
    assert [s.message.split(":")[0] for s in steps] == ["skipping tensorrt"]
    out = CliRunner().invoke(cli, ["bench", model_path, "--backend", "tensorrt", "--backend", "ort-cpu",
                                   "--iterations", "2", "--warmup", "0"])
    assert out.exit_code == 0, out.output
    lines = out.stderr.splitlines()
    assert lines[0].startswith("skipping tensorrt: unavailable:") and lines[1].startswith("loading ")
    assert "config 2 of 2: timing ort-cpu opt=all fp32 batch 1" in out.stderr


def test_eta_from_the_configurations_timed_so_far() -> None:
    now = [0.0]
    eta = Eta(3, clock=lambda: now[0])
    eta.start()
    assert eta.left() is None  # nothing finished, no timing loop yet
    now[0] = 2.0
    eta.timing()  # opening and warm-up took 2 s
    now[0] = 4.0
    assert eta.left(0.5) == pytest.approx(2.0 + 2 * 6.0)  # 2 s left here; each config projected at 6 s
    now[0] = 6.0
    eta.finish()
    eta.start()
    now[0] = 7.0
    assert eta.left() == pytest.approx(5.0 + 6.0)  # the rest of a typical 6 s config, and one more
    eta.finish(timed=False)  # could not run: drops out of the count
    assert eta.total == 2 and eta.left() == pytest.approx(6.0)  # the third, not started yet
    assert eta_text(65.4) == "1:05 left" and eta_text(-1) == "0:00 left"


def test_busy_note_advises_one_thread_only_where_more_were_used() -> None:
    assert busy_note(1.5, 2, threads=0) is None
    many = busy_note(3.2, 2, threads=0)
    assert many is not None and many.startswith("load average 3.2 on 2 CPUs") and "--threads 1 avoids" in many
    one = busy_note(3.2, 2, threads=1)
    assert one is not None and "noisy" in one and "--threads" not in one
