"""rep-branches: sums of parallel linear branches of one input (RepVGG, MobileOne, FastViT, RepGhost, RepViT
blocks in their training form) merged into one Conv; every refusal; and a property test against ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.builders import bn_inputs, bn_params, parse
from support.fold_helpers import assert_folds, assert_not_reported, assert_refused, assert_turned_off
from support.properties import PROFILE, TYPES, check

_NP = {"float": np.float32, "float16": np.float16}


class Block:
    """A branch sum written term by term as ONNX text (input `x`), with random weights and BN parameters."""

    def __init__(self, rng: np.random.Generator, *, channels: int = 4, size: Sequence[int] = (6, 6),
                 dtype: str = "float") -> None:
        self.rng, self.channels, self.size, self.dtype = rng, channels, tuple(size), dtype
        self.lines: list[str] = []
        self.inits: dict[str, np.ndarray] = {}
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def conv(self, kernel: Sequence[int] = (3, 3), *, x: str = "x", bn: bool = True,
             pads: Sequence[int] | None = None, group: int = 1, cout: int | None = None,
             strides: Sequence[int] | None = None, dilations: Sequence[int] | None = None, auto_pad: str = "",
             bias: bool = False) -> str:
        """A Conv of `x` (unless given, pads centre the kernel), then a BN when `bn`."""
        name = self._name("conv")
        cout = cout or self.channels
        dilations = list(dilations or [1] * len(kernel))
        weight = self.rng.normal(0, 0.5, (cout, self.channels // group, *kernel))
        self.inits[f"{name}_w"] = weight.astype(_NP[self.dtype])
        args = f"{x}, {name}_w"
        if bias:
            self.inits[f"{name}_b"] = self.rng.normal(0, 0.5, cout).astype(_NP[self.dtype])
            args += f", {name}_b"
        attrs = [f"group = {group}", f"kernel_shape = {list(kernel)}", f"dilations = {dilations}"]
        if auto_pad:
            attrs.append(f'auto_pad = "{auto_pad}"')
        else:
            centred = [d * (k - 1) // 2 for k, d in zip(kernel, dilations)] * 2
            attrs.append(f"pads = {list(pads) if pads is not None else centred}")
        if strides is not None:
            attrs.append(f"strides = {list(strides)}")
        self.lines.append(f"{name} = Conv <{', '.join(attrs)}> ({args})")
        return self.bn(name, cout) if bn else name

    def bn(self, x: str = "x", channels: int | None = None, *, mean: str = "", out: str = "") -> str:
        """A BatchNormalization of `x` (its mean the graph input `mean` when given)."""
        name = self._name("bn")
        self.inits.update(bn_params(name, channels or self.channels, self.rng, _NP[self.dtype]))
        params = bn_inputs(name)
        if mean:
            params = params.replace(f"{name}_mean", mean)
            del self.inits[f"{name}_mean"]
        self.lines.append(f"{out or name} = BatchNormalization ({x}, {params})")
        return out or name

    def const(self, shape: Sequence[int] | None = None, *, value: float | None = None) -> str:
        """A constant initializer, per channel (`[C, 1, ..., 1]`) unless `shape` is given."""
        name = self._name("k")
        shape = tuple(shape) if shape is not None else (self.channels, *[1] * len(self.size))
        data = np.full(shape, value) if value is not None else \
            self.rng.uniform(0.5, 1.5, shape) * self.rng.choice([-1, 1], shape)
        self.inits[name] = np.asarray(data, dtype=_NP[self.dtype])
        return name

    def op(self, op: str, a: str, b: str, out: str = "") -> str:
        """A binary node `op(a, b)`."""
        name = out or self._name(op.lower())
        self.lines.append(f"{name} = {op} ({a}, {b})")
        return name

    def add(self, *terms: str, out: str = "") -> str:
        """Nested binary Adds of `terms`, left to right (the last one writes `out`)."""
        total = terms[0]
        for k, term in enumerate(terms[1:], start=2):
            total = self.op("Add", total, term, out if k == len(terms) else "")
        return total

    def model(self, outputs: Sequence[str] = ("y",), inputs: str = "") -> onnx.ModelProto:
        """The graph: input `x` of shape `[2, C, *size]` (and `inputs`), the given outputs (shapes left open)."""
        t = self.dtype
        dims = ", ".join(str(s) for s in self.size)
        outs = ", ".join(f"{t}[{', '.join(f'{o}{k}' for k in range(len(self.size) + 2))}] {o}" for o in outputs)
        extra = f", {inputs}" if inputs else ""
        body = "\n".join(self.lines)
        return parse(f"""
        <ir_version: 8, opset_import: ["" : 18]>
        g ({t}[2, {self.channels}, {dims}] x{extra}) => ({outs}) {{
            {body}
        }}
        """, self.inits)

    def feeds(self) -> dict[str, np.ndarray]:
        """Random N(0, 1) values for `x`."""
        return {"x": self.rng.normal(0, 1, (2, self.channels, *self.size)).astype(_NP[self.dtype])}


def merged(block: Block, *, bns: int, rtol: float = 1e-5) -> tuple[onnx.ModelProto, str]:
    """Fold the block's model: one Conv is left; the branches record and every BN record (`bns`) are folded with
    the same sentence and target. Returns the folded model and the sentence."""
    result = assert_folds(block.model(), block.feeds(), kind="branches", rtol=rtol)
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]
    (record,) = result.report.by_kind("branches")
    bn_records = result.report.by_kind("batchnorm")
    assert len(bn_records) == bns
    assert all((r.outcome, r.reason, r.target) == ("folded", record.reason, record.target) for r in bn_records)
    return result.model, record.reason


def group_of(model: onnx.ModelProto) -> int:
    return next(a.i for a in model.graph.node[0].attribute if a.name == "group")


def test_repvgg_block_becomes_one_conv(rng: np.random.Generator) -> None:
    b = Block(rng)
    b.add(b.conv((3, 3)), b.conv((1, 1)), b.bn("x"), out="y")
    _, reason = merged(b, bns=3)
    assert reason == "3 branches merged into Conv conv1: 3x3 Conv+BN, 1x1 Conv+BN, identity BN"


def test_mobileone_chain_of_depthwise_branches_and_constant_terms(rng: np.random.Generator) -> None:
    b = Block(rng, channels=6)
    scale = b.op("Add", b.conv((1, 1), group=6), b.const((), value=0.0))
    b.add(scale, *[b.conv((3, 3), group=6) for _ in range(4)], b.bn("x"), b.const(), out="y")
    model, reason = merged(b, bns=6)
    assert group_of(model) == 6
    assert reason == ("6 branches merged into Conv conv5: 1x1 Conv+BN+const, 3x3 Conv+BN x4, identity BN; "
                             "then const after the sum")


def test_repvit_identity_plain_conv_then_bn_after_the_sum(rng: np.random.Generator) -> None:
    b = Block(rng)
    total = b.add(b.conv((3, 3), group=4), b.conv((1, 1), group=4, bn=False), "x")
    b.bn(total, out="y")
    _, reason = merged(b, bns=2)
    assert reason.endswith(": 3x3 Conv+BN, 1x1 Conv, identity; then BN after the sum")


def test_fastvit_mixer_with_sub_and_layer_scale(rng: np.random.Generator) -> None:
    b = Block(rng)
    mixer = b.add(b.conv((1, 1)), b.bn("x"), b.conv((3, 3)))
    scaled = b.op("Mul", b.op("Sub", mixer, b.bn("x")), b.const())
    b.op("Add", "x", scaled, "y")
    _, reason = merged(b, bns=4)
    assert reason.endswith("combined through Mul, Sub")


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("group", [1, 2])
def test_ranks_and_the_identity_per_group(rng: np.random.Generator, rank: int, group: int) -> None:
    b = Block(rng, size=(5,) * rank)
    b.add(b.conv((3,) * rank, group=group, bias=True), b.conv((1,) * rank, group=group), b.bn("x"), "x", out="y")
    model, _ = merged(b, bns=3)
    assert group_of(model) == group


def test_scale_branch_div_and_constant_first_operands(rng: np.random.Generator) -> None:
    b = Block(rng)
    scale = b.op("Mul", b.const((1, 4, 1, 1)), "x")
    shrunk = b.op("Div", b.conv((3, 3)), b.const())
    flipped = b.op("Sub", b.const(), b.conv((1, 1), bn=False))
    b.add(scale, shrunk, flipped, out="y")
    merged(b, bns=1)


@pytest.mark.parametrize(("kernels", "extra"), [
    ([(1, 3), (3, 1), (3, 3)], {}),  # thin kernels centred in the 3x3
    ([(3, 3), (1, 1)], {"dilations": [2, 2]}),  # the 1x1 sits on the middle dilated tap
    ([(3, 3), (1, 1)], {"strides": [2, 2]}),
    ([(5, 5), (3, 3), (1, 1)], {"bias": True}),
])
def test_kernels_placed_where_the_attributes_align_them(rng: np.random.Generator, kernels: list[tuple[int, int]],
                                                        extra: dict[str, Any]) -> None:
    b = Block(rng, size=(7, 7))
    b.add(*[b.conv(k, **extra) for k in kernels], out="y")
    merged(b, bns=len(kernels))


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_auto_pad_same_with_stride_1_and_an_even_kernel(rng: np.random.Generator, auto_pad: str) -> None:
    b = Block(rng)
    b.add(b.conv((2, 2), auto_pad=auto_pad), b.conv((1, 1), auto_pad="VALID"), b.bn("x"), out="y")
    merged(b, bns=3)


def test_dense_and_depthwise_branches_merge_into_the_dense_conv(rng: np.random.Generator) -> None:
    b = Block(rng)
    b.add(b.conv((3, 3)), b.conv((3, 3), group=4), b.bn("x"), out="y")
    model, _ = merged(b, bns=3)
    assert group_of(model) == 1


def test_float16_block(rng: np.random.Generator) -> None:
    b = Block(rng, dtype="float16")
    b.add(b.conv((3, 3), bias=True), b.conv((1, 1)), b.bn("x"), out="y")
    merged(b, bns=3, rtol=TYPES["float16"][1])


def test_consecutive_blocks_and_an_outer_term_from_elsewhere(rng: np.random.Generator) -> None:
    b = Block(rng)
    first = b.add(b.conv((3, 3)), b.bn("x"))
    second = b.add(b.conv((3, 3), x=first), b.conv((1, 1), x=first), first)
    b.op("Add", second, "other", "y")  # not linear in x: the two inner sums merge, this one stays
    feeds = {**b.feeds(), "other": b.feeds()["x"]}
    result = assert_folds(b.model(inputs="float[2, 4, 6, 6] other"), feeds, kind="branches", folded=2)
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Conv", "Add"]


def test_the_input_may_be_read_elsewhere(rng: np.random.Generator) -> None:
    b = Block(rng)
    b.add(b.conv((3, 3)), "x", out="y")
    b.op("Mul", "x", "x", "z")
    result = assert_folds(b.model(("y", "z")), b.feeds(), kind="branches")
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Mul"]


def test_turned_off(rng: np.random.Generator) -> None:
    b = Block(rng)
    b.add(b.conv((3, 3), bn=False), b.conv((1, 1), bn=False), "x", out="y")
    assert_turned_off(b.model(), "rep-branches", kind="branches")


# ---- refusals: the graph stays as it is, and the branches record says why --------------------------------------


@pytest.mark.parametrize(("build", "reason"), [
    (lambda b: [b.conv((3, 3), bn=False), b.conv((3, 3), bn=False, dilations=[2, 2])],
     "different dilations along spatial axis 0"),
    (lambda b: [b.conv((2, 2), bn=False, auto_pad="SAME_UPPER"), b.conv((2, 2), bn=False, auto_pad="SAME_LOWER")],
     "the outputs would not align"),
    (lambda b: [b.conv((3, 3), bn=False, auto_pad="SAME_UPPER", strides=[2, 2]),
                b.conv((1, 1), bn=False, strides=[2, 2])],
     "auto_pad=SAME_UPPER with strides [2, 2]: its pads depend on the input size"),
    (lambda b: [b.conv((3, 3), bn=False, group=2), b.conv((3, 3), bn=False, group=3)],
     "group counts [2, 3]: one Conv would need a coarser group count"),
    (lambda b: [b.conv((3, 3), bn=False, cout=1), b.conv((3, 3), bn=False)], "as 6 -> 1, 6 -> 6: the branch"),
    (lambda b: [b.conv((3, 3), bn=False, cout=1), "x"], "6 -> 1 beside an identity branch"),
])
def test_branches_that_no_one_conv_computes(rng: np.random.Generator, build: Any, reason: str) -> None:
    b = Block(rng, channels=6)
    b.add(*build(b), out="y")
    assert_refused(b.model(), reason)


def test_an_intermediate_read_elsewhere(rng: np.random.Generator) -> None:
    b = Block(rng)
    inner = b.conv((3, 3), bn=False)
    b.add(inner, b.conv((1, 1), bn=False), out="y")
    b.op("Mul", inner, inner, "z")
    assert_refused(b.model(("y", "z")), f"the output of Conv {inner} (inside the branch sum) is also read by 2 other")


def test_an_intermediate_that_is_a_graph_output(rng: np.random.Generator) -> None:
    b = Block(rng)
    inner = b.conv((3, 3), bn=False)
    b.add(inner, b.conv((1, 1), bn=False), "x", out="y")
    assert_refused(b.model(("y", inner)), f"Conv {inner} (inside the branch sum) is also a graph output")


def test_an_inner_sum_merges_when_the_outer_one_cannot(rng: np.random.Generator) -> None:
    b = Block(rng)
    inner = b.add(b.conv((3, 3)), b.bn("x"))
    read_elsewhere = b.conv((1, 1), bn=False)
    b.add(inner, read_elsewhere, out="y")
    result = assert_folds(b.model(("y", read_elsewhere)), b.feeds(), kind="branches")
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Conv", "Add"]
    outcomes = [(r.node, r.outcome) for r in result.report.by_kind("branches")]
    assert outcomes == [(inner, "folded"), ("y", "skipped")]


def test_weights_that_are_not_constants(rng: np.random.Generator) -> None:
    b = Block(rng)
    b.add(b.conv((3, 3), bn=False), "x", out="y")
    del b.inits["conv1_w"]
    assert_refused(b.model(inputs="float[4, 4, 3, 3] conv1_w"), "'conv1_w' of Conv conv1 is a graph input")


def test_an_identity_bn_whose_mean_is_a_graph_input(rng: np.random.Generator) -> None:
    b = Block(rng)
    b.add(b.conv((3, 3), bn=False), b.bn("x", mean="m"), out="y")
    result = assert_refused(b.model(inputs="float[4] m"), "BatchNormalization bn2: its mean 'm' is a graph input")
    assert result.report.by_kind("batchnorm")[0].outcome == "skipped"


def test_float16_overflow(rng: np.random.Generator) -> None:
    b = Block(rng, dtype="float16")
    b.add(b.conv((3, 3), bn=False), b.conv((1, 1), bn=False), out="y")
    b.inits["conv1_w"][0, 0, 1, 1] = 40000.0
    b.inits["conv2_w"][0, 0, 0, 0] = 40000.0
    assert_refused(b.model(), "not merged into Conv conv1: a folded value (8e+04) exceeds the float16 range")


@pytest.mark.parametrize("other", ["Relu (x)", "Conv <kernel_shape = [1, 1]> (other, conv1_w)"])
def test_sums_not_linear_in_one_input_are_no_candidates(rng: np.random.Generator, other: str) -> None:
    b = Block(rng)
    conv = b.conv((1, 1), bn=False)
    b.lines.append(f"t = {other}")
    b.op("Add", conv, "t", "y")
    assert_not_reported(b.model(inputs="float[2, 4, 6, 6] other"))


def test_a_product_of_branches_is_no_candidate(rng: np.random.Generator) -> None:
    b = Block(rng)
    b.op("Mul", b.conv((3, 3), bn=False), b.conv((1, 1), bn=False), "y")
    assert_not_reported(b.model())


# ---- property: random blocks against ONNX Runtime -------------------------------------------------------------


@st.composite
def blocks(draw: Any) -> dict[str, Any]:
    """Random branch sums whose branch outputs have equal lengths (a valid model); alignment is left to chance."""
    rank = draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 1, 2]))
    span = draw(st.integers(0, 1))  # every branch has p + q - d*(k-1) == span: equal output lengths
    identity_ok = stride == 1 and span == 0
    centred = draw(st.booleans())  # one dilation per axis and centred odd kernels (which align), or anything
    common = draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank))
    branches = []
    for _ in range(draw(st.integers(2, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "identity", "bn", "scale"] if identity_ok else ["conv"]))
        kernel = draw(st.lists(st.sampled_from([1, 3]) if centred else st.integers(1, 3), min_size=rank,
                               max_size=rank))
        dilation = common if centred else draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank))
        begin = [d * (k - 1) // 2 if centred else draw(st.integers(0, d * (k - 1) + span))
                 for k, d in zip(kernel, dilation)]
        branches.append({"kind": kind, "kernel": kernel, "dilation": dilation,
                         "pads": begin + [d * (k - 1) + span - p for k, d, p in zip(kernel, dilation, begin)],
                         "group": draw(st.sampled_from([1, 2, 3, 6])), "bn": draw(st.booleans()),
                         "bias": draw(st.booleans())})
    branches[0]["kind"] = "conv"
    return {"rank": rank, "stride": stride, "branches": branches, "constant": draw(st.booleans()),
            "dtype": draw(st.sampled_from(sorted(TYPES))), "seed": draw(st.integers(0, 2**31))}


@PROFILE
@given(blocks())
def test_random_blocks_merge_or_refuse_with_a_reason(case: dict[str, Any]) -> None:
    """Kernel sizes, strides, dilations, pads, groups, dtypes and branch counts: merged into one Conv within
    tolerance, or refused with a reason (the other rules may still fold a branch's BN)."""
    rank = case["rank"]
    b = Block(np.random.default_rng(case["seed"]), channels=6, size=(7,) * rank, dtype=case["dtype"])
    terms = []
    for branch in case["branches"]:
        kind = branch["kind"]
        if kind == "conv":
            terms.append(b.conv(branch["kernel"], pads=branch["pads"], group=branch["group"], bn=branch["bn"],
                                dilations=branch["dilation"], strides=[case["stride"]] * rank, bias=branch["bias"]))
        else:
            terms.append({"identity": lambda: "x", "bn": lambda: b.bn("x"),
                          "scale": lambda: b.op("Mul", "x", b.const())}[kind]())
    if case["constant"]:
        terms.append(b.const())
    b.add(*terms, out="y")
    result = check(b.model(), b.feeds(), TYPES[case["dtype"]][1] * 4)
    (record,) = result.report.by_kind("branches")
    if record.outcome == "folded":
        assert [n.op_type for n in result.model.graph.node] == ["Conv"]
