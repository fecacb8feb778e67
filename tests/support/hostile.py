"""Small valid models to attack, and the files that hold them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from support.builders import bn_inputs, bn_params, parse


def bias_bomb(rng: np.random.Generator, elements: int, op: str = "ConstantOfShape") -> onnx.ModelProto:
    """Conv -> BN whose conv bias is a ConstantOfShape/Expand of `elements`, its size hidden behind a Mul."""
    inits = {"W": rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32), **bn_params("bn", 6, rng),
             "n": np.array([elements // 1000], np.int64), "k": np.array([1000], np.int64),
             "one": np.array([1.0], np.float32)}
    size = "ConstantOfShape (shape)" if op == "ConstantOfShape" else "Expand (one, shape)"
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3, 8, 8] x) => (float[N, 6, 8, 8] y) {{
        shape = Mul (n, k)
        b = {size}
        c = Conv <pads = [1, 1, 1, 1]> (x, W, b)
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits)


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    """Save `model` with every tensor in `<name>.data` beside it; return the model's path."""
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    return path


def external_entry(tensor: onnx.TensorProto, key: str, value: str) -> None:
    """Set (or add) one external-data entry of `tensor`."""
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    entry = tensor.external_data.add()
    entry.key, entry.value = key, value


def tensor(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    """The main graph's initializer `name`."""
    return next(t for t in model.graph.initializer if t.name == name)
