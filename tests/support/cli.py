"""Running the CLI in-process and checking what a bad input did: exit code, one-line error, files touched."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result
from foldnorm.cli.main import cli


def run(args: list[str]) -> Result:
    """Invoke `foldnorm ARGS`; anything but a clean exit (an exception escaping the CLI) fails the test."""
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def snapshot(d: Path) -> dict[str, bytes | None]:
    """Every path under `d` with its bytes (None for directories and other non-files)."""
    return {str(p): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def assert_user_error(result: Result, bad: Path | str, needle: str, code: int = 1) -> None:
    """Exit `code`, no traceback, at most three lines on stderr naming `bad` and containing `needle`."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3, result.stderr
    assert str(bad) in result.stderr
    assert needle.lower() in result.stderr.lower()
