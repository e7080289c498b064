"""Whole models, as users train them: eqxconv against `equinox.nn` (and PyTorch) with
identical weights.

Each model is a list of layers applied with ReLU between them (and residual sums
where the architecture has them), trained on a mean-squared error: the step is
`eqx.filter_jit(eqx.filter_value_and_grad(mse))`, batched with `jax.vmap`. Reported:

- step: the median steady time of a compiled step, eqxconv and equinox taking turns
  (one step each per round, so that the machine's load falls on both alike);
- first call: trace + lower + compile of a fresh step (caches cleared), the median of
  fresh tries taken in turns, which is what a user waits for before the first step;
- peak: the memory XLA plans for the step (arguments + outputs + temporaries);
- torch: the same model built with `eqxconv.to_torch` from the same layers, one
  forward+backward on the same batch (CPU, its default threads).

The equinox twin has the eqxconv model's weights, layer by layer. Ratios are
time / equinox's. Run: `python -m benchmarks.models [--quick] [--only NAME]`.
"""

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import eqxconv
from benchmarks._timing import (
    interleaved_median_times,
    markdown,
    median_time,
    peak_bytes,
    Table,
)


@dataclass(frozen=True)
class Block:
    """Layers applied in order with ReLU between them; `residual` adds the block's
    input to its output (same shape)."""

    layers: tuple[int, ...]
    residual: bool = False


class Model(eqx.Module):
    layers: list[Any]
    blocks: tuple[Block, ...] = eqx.field(static=True)
    final: str = eqx.field(static=True)

    def __call__(self, x: Any, relu: Callable[[Any], Any] = jax.nn.relu) -> Any:
        return run(self.layers, self.blocks, self.final, x, relu)


def run(
    layers: Sequence[Any],
    blocks: Sequence[Block],
    final: str,
    x: Any,
    relu: Callable[[Any], Any],
) -> Any:
    """The forward pass, shared by the JAX models (unbatched) and their torch twins
    (batched): only layer calls, `relu` and sums."""
    for b, block in enumerate(blocks):
        h = x
        for i, index in enumerate(block.layers):
            h = layers[index](h)
            last = b == len(blocks) - 1 and i == len(block.layers) - 1
            if not last or final == "relu":
                h = relu(h)
        x = x + h if block.residual else h
    return x


def _conv(n, c_in, c_out, k, key, **kwargs):
    return eqxconv.Conv(n, c_in, c_out, k, key=key, **kwargs)


def resnet(key):
    """RGB 3x3 stem and four dense 3x3 64->64 in two residual pairs, 32^2."""
    keys = jr.split(key, 5)
    layers = [_conv(2, 3, 64, 3, keys[0], padding=1)]
    layers += [_conv(2, 64, 64, 3, keys[i], padding=1) for i in range(1, 5)]
    blocks = (Block((0,)), Block((1, 2), True), Block((3, 4), True))
    return layers, blocks, (3, 32, 32), 8


def convnext(key):
    """4x4/4 patchify stem, then two blocks of 7x7 depthwise, 1x1 up, 1x1 down, 64^2."""
    keys = jr.split(key, 7)
    layers = [_conv(2, 3, 96, 4, keys[0], stride=4)]
    for i in range(2):
        layers += [
            _conv(2, 96, 96, 7, keys[3 * i + 1], padding=3, groups=96),
            _conv(2, 96, 384, 1, keys[3 * i + 2]),
            _conv(2, 384, 96, 1, keys[3 * i + 3]),
        ]
    blocks = (Block((0,)), Block((1, 2, 3), True), Block((4, 5, 6), True))
    return layers, blocks, (3, 64, 64), 8


def mobilenet(key):
    """RGB stride-2 stem, then two inverted residuals (1x1 expand, 3x3 depthwise,
    1x1 project), 64^2."""
    keys = jr.split(key, 7)
    layers = [_conv(2, 3, 32, 3, keys[0], stride=2, padding=1)]
    for i in range(2):
        layers += [
            _conv(2, 32, 96, 1, keys[3 * i + 1]),
            _conv(2, 96, 96, 3, keys[3 * i + 2], padding=1, groups=96),
            _conv(2, 96, 32, 1, keys[3 * i + 3]),
        ]
    blocks = (Block((0,)), Block((1, 2, 3), True), Block((4, 5, 6), True))
    return layers, blocks, (3, 64, 64), 8


def tcn(key):
    """1D: mono k7 stem, then dilated causal k3 32->32 (dilation 1, 2, 4, 8), L 2048."""
    keys = jr.split(key, 5)
    layers = [_conv(1, 1, 32, 7, keys[0], padding=3)]
    layers += [
        _conv(1, 32, 32, 3, keys[i + 1], padding="CAUSAL", dilation=2**i)
        for i in range(4)
    ]
    blocks = (Block((0,)), Block((1, 2), True), Block((3, 4), True))
    return layers, blocks, (1, 2048), 8


def unet3d(key):
    """3D: stem, strided conv down, conv, transposed conv up, 32^3, batch 2."""
    keys = jr.split(key, 4)
    layers = [
        _conv(3, 1, 16, 3, keys[0], padding=1),
        _conv(3, 16, 32, 3, keys[1], stride=2, padding=1),
        _conv(3, 32, 32, 3, keys[2], padding=1),
        eqxconv.ConvTranspose(3, 32, 16, 2, stride=2, key=keys[3]),
    ]
    blocks = (Block((0,)), Block((1, 2, 3), True))
    return layers, blocks, (1, 32, 32, 32), 2


def dcgan(key):
    """DCGAN generator: four ConvTranspose k4 s2 p1, 128 -> 3 channels, 4^2 -> 64^2."""
    keys = jr.split(key, 4)
    channels = (128, 64, 32, 16, 3)
    layers = [
        eqxconv.ConvTranspose(2, c_in, c_out, 4, stride=2, padding=1, key=k)
        for c_in, c_out, k in zip(channels[:-1], channels[1:], keys, strict=True)
    ]
    return layers, (Block((0, 1, 2, 3)),), (128, 4, 4), 8


MODELS = {
    "ResNet-like, RGB stem + 4 dense 3x3 64->64, 32^2 b8": resnet,
    "ConvNeXt-like, patchify + 7x7 depthwise + 1x1, 64^2 b8": convnext,
    "MobileNetV2-like, RGB stem + inverted residuals, 64^2 b8": mobilenet,
    "1D TCN, mono k7 stem + dilated causal k3, L2048 b8": tcn,
    "3D U-Net-like, 32^3 b2": unet3d,
    "DCGAN generator, 4 ConvTranspose k4 s2, b8": dcgan,
}


def to_equinox(layer: Any) -> Any:
    """The `equinox.nn` layer with `layer`'s configuration and weights."""
    if isinstance(layer, eqxconv.ConvTranspose):
        twin = eqx.nn.ConvTranspose(
            layer.num_spatial_dims,
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.output_padding,
            layer.dilation,
            layer.groups,
            layer.use_bias,
            layer.padding_mode,
            key=jr.key(0),
        )
    else:
        padding = layer.padding
        if padding == "CAUSAL":  # equinox has no 'CAUSAL': its explicit pairs
            padding = tuple(
                ((k - 1) * d, 0)
                for k, d in zip(layer.kernel_size, layer.dilation, strict=True)
            )
        twin = eqx.nn.Conv(
            layer.num_spatial_dims,
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            padding,
            layer.dilation,
            layer.groups,
            layer.use_bias,
            layer.padding_mode,
            key=jr.key(0),
        )
    return eqx.tree_at(lambda m: (m.weight, m.bias), twin, (layer.weight, layer.bias))


def _mse(model: Model, x: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean((jax.vmap(model)(x) - target) ** 2)


def _first_call_seconds(
    models: dict[str, Model], x, target, repeats: int
) -> dict[str, float]:
    """Trace + compile of a fresh `eqx.filter_jit` step per model, caches cleared
    before each try, the models taking turns; the median of `repeats` tries."""
    times: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(repeats):
        for label, model in models.items():
            jax.clear_caches()
            step: Any = eqx.filter_jit(eqx.filter_value_and_grad(_mse))
            start = time.perf_counter()
            step.lower(model, x, target).compile()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(ts) for label, ts in times.items()}


def _torch_step_seconds(layers, blocks, final, x, target, repeats: int) -> float:
    import numpy as np
    import torch

    modules = [eqxconv.to_torch(layer) for layer in layers]
    xt = torch.from_numpy(np.asarray(x))
    tt = torch.from_numpy(np.asarray(target))

    def step():
        for module in modules:
            module.zero_grad()
        out = run(modules, blocks, final, xt, torch.relu)
        loss = torch.mean((out - tt) ** 2)
        loss.backward()
        return loss

    return median_time(step, repeats=repeats, sync=lambda out: out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--only", help="run the models whose name contains this")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    repeats, compiles = (5, 1) if args.quick else (20, 3)
    titles = {
        "step": "train step (forward+backward)",
        "first call": "first call (trace + compile)",
        "peak": "peak",
    }
    tables = {
        key: Table(title, "equinox", memory=key == "peak")
        for key, title in titles.items()
    }
    for name, build in MODELS.items():
        if args.only and args.only.lower() not in name.lower():
            continue
        layers, blocks, in_shape, batch = build(jr.key(0))
        final = "linear"
        ours = Model(layers, blocks, final)
        theirs = Model([to_equinox(layer) for layer in layers], blocks, final)
        x = jr.normal(jr.key(1), (batch, *in_shape))
        target = jr.normal(jr.key(2), jax.eval_shape(jax.vmap(ours), x).shape)
        models = {"eqxconv": ours, "equinox": theirs}
        step = eqx.filter_jit(eqx.filter_value_and_grad(_mse))
        step_times = interleaved_median_times(
            {label: (step, (model, x, target)) for label, model in models.items()},
            repeats=repeats,
        )
        first_calls = _first_call_seconds(models, x, target, compiles)
        peaks = {}
        for label, model in models.items():
            params, static = eqx.partition(model, eqx.is_array)

            def loss(params, x, target, static=static):
                return _mse(eqx.combine(params, static), x, target)

            grad = jax.value_and_grad(loss)
            peaks[label] = peak_bytes(grad, params, x, target)
        if not args.no_torch:
            step_times["torch"] = _torch_step_seconds(
                layers, blocks, final, x, target, repeats
            )
        tables["step"].add(name, step_times)
        tables["first call"].add(name, first_calls)
        tables["peak"].add(name, peaks)
    print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
    print(markdown([tables["step"], tables["first call"]]))
    print(markdown([tables["peak"]]))


if __name__ == "__main__":
    main()
