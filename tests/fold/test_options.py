"""FoldOptions: rule names checked against the registry; `skip` and `only` turn rules off, and the report says so."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import pytest
from support.builders import assert_close, bn_inputs, bn_params, conv_bn, run_ort, x_feed
from support.fold_helpers import assert_refused, checked_fold

from foldnorm import FoldnormError, FoldOptions, FoldResult, fold_model
from foldnorm.errors import UnknownRuleError
from foldnorm.fold.options import rule_names
from foldnorm.fold.rules import RULES


def two_rule_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv -> BN `y` (conv-bn) -> Relu -> BN `z` -> unpadded 1x1 Conv `o` (bn-conv)."""
    inits = {**bn_params("b", 6, rng), "V": rng.normal(0, 0.5, (5, 6, 1, 1)).astype(np.float32)}
    return conv_bn(rng, spatial=(6, 6), inits=inits, outputs="float[N, 5, 6, 6] o",
                   tail=["r = Relu (y)", f"z = BatchNormalization (r, {bn_inputs('b')})", "o = Conv (z, V)"])


def fold_and_compare(rng: np.random.Generator, options: FoldOptions | None = None) -> FoldResult:
    """Fold `two_rule_model` with `options`; the folded model computes what the model computes."""
    model = two_rule_model(rng)
    result = checked_fold(model, options)
    x = x_feed(rng)
    assert_close(run_ort(model, x), run_ort(result.model, x))
    return result


def test_rule_names_are_the_registry_in_order() -> None:
    assert rule_names() == ("conv-bn", "conv-transpose-bn", "gemm-bn", "matmul-bn", "qdq-bn", "reshape-bn", "concat-bn",
                            "bn-bn", "bn-conv", "bn-linear", "affine-conv", "affine-tail", "bn-constant", "bn-affine",
                            "rep-branches")
    assert rule_names() == tuple(rule.name for rule in RULES)


@pytest.mark.parametrize("field", ["skip", "only"])
def test_unknown_rule_names_raise_a_user_error_listing_the_valid_ones(field: str) -> None:
    with pytest.raises(UnknownRuleError) as info:
        FoldOptions(**{field: ("conv-bn", "fuse-bn", "nope")})  # type: ignore[arg-type]
    message = str(info.value)
    assert isinstance(info.value, FoldnormError) and info.value.exit_code == 1
    assert message.startswith(f"{field}: no fold rule is named 'fuse-bn', 'nope'; use one of conv-bn, ")
    assert all(name in message for name in rule_names())
    assert "\n" not in message


def test_names_are_kept_as_a_tuple_and_a_single_string_is_one_name() -> None:
    options = FoldOptions(skip="conv-bn", only=["bn-conv", "gemm-bn"])
    assert (options.skip, options.only) == (("conv-bn",), ("bn-conv", "gemm-bn"))
    assert pickle.loads(pickle.dumps(options)) == options  # directory folds send options to worker processes
    assert FoldOptions().skip == FoldOptions().only == ()


def test_turned_off_says_which_option(rng: np.random.Generator) -> None:
    assert FoldOptions().turned_off("conv-bn") is None
    assert FoldOptions(skip=("conv-bn",)).turned_off("conv-bn") == "rule conv-bn is turned off (--skip conv-bn)"
    only = FoldOptions(only=("bn-conv", "gemm-bn"))
    assert only.turned_off("bn-conv") is None
    assert only.turned_off("conv-bn") == "rule conv-bn is turned off (not in --only bn-conv, gemm-bn)"
    assert FoldOptions(skip=("bn-conv",), only=("bn-conv",)).turned_off("bn-conv") is not None


def test_both_rules_fold_by_default(rng: np.random.Generator) -> None:
    records = fold_and_compare(rng).report.records
    assert [(r.node, r.outcome, r.target) for r in records] == [("y", "folded", "y"), ("z", "folded", "o")]


def test_only_runs_the_named_rules(rng: np.random.Generator) -> None:
    result = fold_and_compare(rng, FoldOptions(only=("bn-conv",)))
    y, z = result.report.records
    assert (y.node, y.outcome, y.reason) == ("y", "skipped", "rule conv-bn is turned off (not in --only bn-conv)")
    assert (z.node, z.outcome, z.target) == ("z", "folded", "o")
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "BatchNormalization", "Relu", "Conv"]


def test_skip_turns_one_rule_off_and_leaves_the_others(rng: np.random.Generator) -> None:
    y, z = fold_and_compare(rng, FoldOptions(skip=("bn-conv",))).report.records
    assert (y.outcome, z.outcome) == ("folded", "skipped")
    assert z.reason == "rule bn-conv is turned off (--skip bn-conv)"


def test_skipping_every_rule_changes_nothing(rng: np.random.Generator) -> None:
    model = two_rule_model(rng)
    result = assert_refused(model, "turned off", options=FoldOptions(skip=rule_names()))
    assert [r.outcome for r in result.report.records] == ["skipped", "skipped"]


def test_a_rule_that_does_not_apply_is_never_named(rng: np.random.Generator) -> None:
    # gemm-bn is off, but no Gemm is anywhere near: the reasons stay what they always were.
    model = two_rule_model(rng)
    default = fold_model(model).report
    assert fold_model(model, options=FoldOptions(skip=("gemm-bn", "matmul-bn"))).report == default
