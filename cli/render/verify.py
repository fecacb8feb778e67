"""`foldnorm verify` output: per-output errors as a table, the structure line and the verdict."""

from __future__ import annotations

import click

from foldnorm.verify.compare import VerifyResult

from .common import Format, emit_json, table


def verify_table(result: VerifyResult) -> str:
    """Per-output errors as a table, then the structure line and the verdict."""
    rows = [(o.name, o.dtype, o.max_abs, o.max_rel, f"{o.mismatched}/{o.total}", o.nonfinite_introduced,
             o.rtol, o.atol, "ok" if o.ok else "FAIL") for o in result.outputs]
    lines = [table(["output", "dtype", "max abs err", "max rel err", "outside tol", "NaN/Inf introduced",
                    "rtol", "atol", ""], rows)]
    if result.structure is not None:
        lines.append(result.structure.summary())
    lines.append(result.summary())
    return "\n".join(lines)


def render_verify(result: VerifyResult, fmt: Format) -> None:
    """What `verify` prints."""
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        click.echo(verify_table(result))
