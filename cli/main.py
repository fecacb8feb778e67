"""Entry point of the `foldnorm` command: subcommands, exit codes, one-line errors."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from foldnorm import __version__

# Each subcommand: the module that defines it (imported only when that command runs or shows its help, so that
# `foldnorm fold` never loads the benchmark) and the line `foldnorm --help` lists for it.
COMMANDS = {
    "bench": ("bench_cmd", "Folded vs unfolded: latency and accuracy per backend."),
    "export": ("export_cmd", "PyTorch model -> ONNX with every BatchNorm kept."),
    "fold": ("fold_cmd", "Fold BatchNorm, verify, write OUT, report every norm."),
    "inspect": ("inspect_cmd", "What fold would do to each norm node; writes nothing."),
    "models": ("models_cmd", "List the built-in PyTorch reference models."),
    "verify": ("verify_cmd", "Same outputs? GN/LN/IN intact? Exit 3 if not."),
}


class FoldnormGroup(click.Group):
    """A click group that turns user errors into one line on stderr and the documented exit code, and imports
    each subcommand's module only when that command is used.

    0 ok, 1 user error, 2 usage error (click's own), 3 verification failed. Anything else is a bug and
    keeps its traceback. SIGTERM and SIGHUP are handled like Ctrl-C: exit 128 + the signal number.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The subcommands' names, without importing them."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The subcommand `cmd_name`, its module imported now (None for an unknown name)."""
        if cmd_name not in COMMANDS:
            return None
        module, short_help = COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(f"{__package__}.{module}"), cmd_name)
        command.short_help = short_help
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of subcommands in `--help`, from `COMMANDS` (nothing imported)."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, mapping `FoldnormError` to its exit code and signals to 130/143/129."""
        from foldnorm.interrupts import signals_as_interrupts

        try:
            with signals_as_interrupts():
                return super().invoke(ctx)
        except (Exception, KeyboardInterrupt) as exc:
            _exit_for(exc)
            raise


def _exit_for(exc: BaseException) -> None:
    """Print the one line and exit with the code `exc` calls for; return for a bug (which keeps its traceback)."""
    from foldnorm.errors import FoldnormError
    from foldnorm.interrupts import exit_status, interrupt_in, signal_name

    interrupt = interrupt_in(exc)  # a signal, perhaps wrapped by a library (onnxruntime's import does)
    if interrupt is not None:
        click.echo(f"interrupted ({signal_name(interrupt)}); no partially written file was left behind", err=True)
        sys.exit(exit_status(interrupt))
    if isinstance(exc, FoldnormError):
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if isinstance(exc, ModuleNotFoundError) and (hint := _install_hint(exc.name)) is not None:
        click.echo(f"error: this command needs {exc.name}, which is not installed; install: {hint}", err=True)
        sys.exit(1)
    if isinstance(exc, OSError):  # the file system refused something foldnorm did not check for: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}; check the path and the file system", err=True)
        sys.exit(1)


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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="foldnorm")
