"""The rule contract: one registry, one file per rule (with its test file), and no rule known outside the package."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import foldnorm
from foldnorm.fold.rules import RULES, AloneRule, BlockRule, NeighbourRule, Rule, SubjectRule

ROOT = Path(foldnorm.__file__).resolve().parent.parent
RULES_DIR = ROOT / "foldnorm" / "fold" / "rules"
SHARED = {"__init__", "base", "common"}  # the registry, the contract, helpers several rules use


def module_of(rule: Rule) -> Path:
    return Path(inspect.getfile(type(rule)))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_each_rule_declares_the_contract(rule: Rule) -> None:
    assert module_of(rule).stem == rule.name.replace("-", "_"), "a rule's name is its file name with dashes"
    assert rule.summary and "\n" not in rule.summary and len(rule.summary) <= 100
    assert rule.summary.isascii()  # printed by --list-rules on any terminal
    assert rule.op_types and all(isinstance(op, str) for op in rule.op_types)
    kinds = {"block": BlockRule, "subject": SubjectRule, "after": NeighbourRule, "before": NeighbourRule,
             "alone": AloneRule}
    assert isinstance(rule, kinds[rule.position])
    if isinstance(rule, NeighbourRule):  # the subjects it folds: BatchNorms and the subject rules' kinds
        assert rule.kinds and set(rule.kinds) <= {"batchnorm", *(r.kind for r in RULES if isinstance(r, SubjectRule))}


def test_one_rule_per_file_and_one_registry_line_each() -> None:
    files = sorted(p.stem for p in RULES_DIR.glob("*.py") if p.stem not in SHARED)
    assert sorted(module_of(rule).stem for rule in RULES) == files
    assert len({rule.name for rule in RULES}) == len(RULES)


def test_each_rule_file_has_its_test_file() -> None:
    here = Path(__file__).parent
    assert all((here / f"test_{module_of(rule).stem}.py").is_file() for rule in RULES)


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_module_outside_the_rules_package_imports_a_rule() -> None:
    # The engine, the options and the CLI know rules only through the registry `foldnorm.fold.rules`.
    sources = [*(ROOT / "foldnorm").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]
    sources = [p for p in sources if RULES_DIR not in p.parents]
    offenders = {f"{p.relative_to(ROOT)}: {m}" for p in sources for m in imported_modules(p)
                 if m.startswith("foldnorm.fold.rules.")}
    assert not offenders
