"""A VGG-16-shaped ONNX model with random weights, for benchmarks that need the study's third model class.

VGG-16 (Simonyan and Zisserman, configuration D): 13 3x3 convolutions in five blocks (64, 128, 256, 512,
512 channels) with 2x2 max-pooling after each block, then fully connected layers of 4096, 4096 and 1000
on a 7x7x512 feature map: 138.4M parameters, about 530 MB in FP32. Latency and load time depend on the
shapes, not on the weight values, so random weights stand in for ImageNet's. Input `input` FP32
[batch, 3, 224, 224], output `logits` FP32 [batch, 1000], dynamic batch, opset 17.

Generated where it is needed, never committed:

    python bench/vgg16_onnx.py /tmp/vgg16.onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
PARAMS = 138_357_544


def build(path: Path, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> str:
        # He-scaled, so activations stay finite through 16 layers (values do not change speed).
        w = (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))).astype(
            np.float32
        )
        inits.append(numpy_helper.from_array(w, name))
        return name

    x, c_in, k = "input", 3, 0
    for block, (c_out, convs) in enumerate(BLOCKS, 1):
        for i in range(1, convs + 1):
            k += 1
            w = weight(f"conv{block}_{i}.w", (c_out, c_in, 3, 3), c_in * 9)
            b = weight(f"conv{block}_{i}.b", (c_out,), c_in * 9)
            nodes.append(
                helper.make_node("Conv", [x, w, b], [f"c{k}"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
            )
            nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
            x, c_in = f"r{k}", c_out
        nodes.append(helper.make_node("MaxPool", [x], [f"p{block}"], kernel_shape=[2, 2], strides=[2, 2]))
        x = f"p{block}"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    x, width = "flat", 512 * 7 * 7
    for j, out in enumerate((4096, 4096, 1000), 1):
        w = weight(f"fc{j}.w", (width, out), width)
        b = weight(f"fc{j}.b", (out,), width)
        y = "logits" if j == 3 else f"fc{j}"
        nodes.append(helper.make_node("MatMul", [x, w], [f"{y}.mm"]))
        nodes.append(helper.make_node("Add", [f"{y}.mm", b], [y if j == 3 else f"{y}.pre"]))
        if j < 3:
            nodes.append(helper.make_node("Relu", [f"{y}.pre"], [y]))
        x, width = y, out
    graph = helper.make_graph(
        nodes,
        "vgg16",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    count = sum(int(np.prod(t.dims)) for t in inits)
    if count != PARAMS:
        raise AssertionError(f"{count} parameters, VGG-16 has {PARAMS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    started = time.monotonic()
    build(args.out, args.seed)
    size = args.out.stat().st_size / 1e6
    print(f"{args.out}: VGG-16, {PARAMS:,} parameters, {size:.0f} MB in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
