"""Entry point of the `foldnorm` command: subcommands, exit codes, one-line errors."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from foldnorm import __version__


class FoldnormGroup(click.Group):
    """A click group that turns user errors into one line on stderr and the documented exit code.

    0 ok, 1 user error, 2 usage error (click's own), 3 verification failed. Anything else is a bug and
    keeps its traceback. SIGTERM and SIGHUP are handled like Ctrl-C: exit 128 + the signal number.
    """

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, mapping `FoldnormError` to its exit code and signals to 130/143/129."""
        from foldnorm.errors import FoldnormError
        from foldnorm.interrupts import exit_status, signal_name, signals_as_interrupts

        try:
            with signals_as_interrupts():
                return super().invoke(ctx)
        except FoldnormError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except ModuleNotFoundError as exc:
            hint = _install_hint(exc.name)
            if hint is None:
                raise
            click.echo(f"error: this command needs {exc.name}, which is not installed; install: {hint}", err=True)
            sys.exit(1)
        except OSError as exc:  # the file system refused something foldnorm did not check for: still one line
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}; check the path and the file system", err=True)
            sys.exit(1)
        except KeyboardInterrupt as exc:
            click.echo(f"interrupted ({signal_name(exc)}); no partially written file was left behind", err=True)
            sys.exit(exit_status(exc))


def _install_hint(module: str | None) -> str | None:
    """The install command for an optional dependency (an extra), None for anything else."""
    from foldnorm.bench.backends.ort_cpu import ORT_INSTALL_HINT
    from foldnorm.bench.backends.torch_eager import TORCH_INSTALL_HINT
    from foldnorm.bench.plot import PLOT_INSTALL_HINT

    top = (module or "").split(".")[0]
    hints = {"onnxruntime": ORT_INSTALL_HINT, "torch": TORCH_INSTALL_HINT, "onnxscript": TORCH_INSTALL_HINT,
             "onnx_ir": TORCH_INSTALL_HINT, "matplotlib": PLOT_INSTALL_HINT}
    return hints.get(top)


@click.group(cls=FoldnormGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="foldnorm")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Fold BatchNorm into neighbouring linear ops of ONNX models, verify, and benchmark.

    \b
    foldnorm export resnet-bn -o model.onnx       # faithful, unfolded ONNX from PyTorch
    foldnorm fold model.onnx -o folded.onnx       # fold, verify, report every norm node
    foldnorm inspect model.onnx                   # what fold would do, writing nothing
    foldnorm verify model.onnx folded.onnx        # same numbers? GN/LN/IN intact? (exit 3 if not)
    foldnorm bench                                # the whole job on the built-in default model
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _register() -> None:
    from .bench_cmd import bench
    from .export_cmd import export
    from .fold_cmd import fold
    from .inspect_cmd import inspect
    from .models_cmd import models
    from .verify_cmd import verify

    for command in (export, fold, inspect, verify, bench, models):
        cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="foldnorm")
