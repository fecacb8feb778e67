"""`foldnorm verify` output: per-output errors as a table, the structure line, the localization and the verdict."""

from __future__ import annotations

import click

from foldnorm.verify.compare import VerifyResult

from .common import Format, emit_json, table


def verify_table(result: VerifyResult) -> str:
    """Per-output errors as a table, then the structure line, the noise floor, the localization and the verdict."""
    scored = any(o.score is not None for o in result.outputs)
    floors = any(o.noise_floor is not None for o in result.outputs)
    headers = ["output", "dtype", "max abs err", "max rel err", "outside tol", "NaN/Inf introduced", "rtol", "atol"]
    headers += [result.metric] if scored else []
    headers += ["noise floor"] if floors else []
    rows = []
    for o in result.outputs:
        row = [o.name, o.dtype, o.max_abs, o.max_rel, f"{o.mismatched}/{o.total}", o.nonfinite_introduced, o.rtol,
               o.atol]
        row += [o.score] if scored else []
        row += [o.noise_floor] if floors else []
        rows.append([*row, "ok" if o.ok else "FAIL"])
    lines = [table([*headers, ""], rows)]
    if result.structure is not None:
        lines.append(result.structure.summary())
        lines.extend(f"  {change}" for change in result.structure.change_lines())
    if result.noise is not None:
        lines.append(f"noise floor: {result.noise.sentence()}")
    if result.localization is not None:
        lines.extend(result.localization.lines())
    lines.append(result.summary())
    return "\n".join(lines)


def render_verify(result: VerifyResult, fmt: Format) -> None:
    """What `verify` prints."""
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        click.echo(verify_table(result))
