"""Chains of Conv -> BN -> Relu blocks named like the legacy exporter, and a way to corrupt one conv."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from support.builders import bn_inputs, bn_params, parse


def blocks(rng: np.random.Generator, layers: int, channels: int, arrays: dict[str, np.ndarray], prefix: str = ""
           ) -> tuple[list[str], str]:
    """ONNX text lines of `layers` Conv -> BN -> Relu blocks reading x (tensors `{prefix}c{i}`, `{prefix}b{i}`...)."""
    lines, prev = [], "x"
    for i in range(layers):
        n = f"{prefix}{i}"
        arrays[f"w{n}"] = rng.normal(0, 0.4, (channels, channels, 3, 3)).astype(np.float32)
        arrays.update(bn_params(f"bn{n}", channels, rng))
        lines += [f"c{n} = Conv <pads = [1, 1, 1, 1]> ({prev}, w{n})",
                  f"b{n} = BatchNormalization (c{n}, {bn_inputs(f'bn{n}')})",
                  f"r{n} = Relu (b{n})"]
        prev = f"r{n}"
    return lines, prev


def conv_stack(rng: np.random.Generator, layers: int, channels: int = 4) -> onnx.ModelProto:
    """`layers` blocks of Conv -> BN -> Relu named like the legacy exporter (`/block{i}/conv/Conv`)."""
    arrays: dict[str, np.ndarray] = {}
    lines, prev = blocks(rng, layers, channels, arrays)
    lines.append(f"y = Identity ({prev})")
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, {channels}, 6, 6] x) => (float[N, {channels}, 6, 6] y) {{
        {chr(10).join(lines)}
    }}
    """, arrays)
    roles = {"Conv": "conv", "BatchNormalization": "bn", "Relu": "act"}
    for node in model.graph.node:
        node.name = f"/block{node.output[0][1:]}/{roles.get(node.op_type, 'out')}/{node.op_type}"
    return model


def corrupt_conv(model: onnx.ModelProto, conv_name: str) -> onnx.ModelProto:
    """A copy whose Conv `conv_name` has its first output channel's weights scaled by 1.5."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node = next(n for n in out.graph.node if n.name == conv_name)
    weight = next(t for t in out.graph.initializer if t.name == node.input[1])
    array = numpy_helper.to_array(weight).copy()
    array[0] *= 1.5
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    return out
