"""The patches lowering of `conv` (`impl='patches'`), and XLA's convolution with the
patches' input gradient (`impl='xla_patches'`), against XLA's convolution and the
FFT lowering, on the layers that decide where `impl='auto'` takes them: pointwise
(1x1) convolutions at the shapes of ConvNeXt and MobileNet blocks, unstrided 3D
stems, dense layers that widen or keep the channels (3D, and 1D/2D beside them),
strided dense 2D layers (downsampling in ResNet-like networks), and layers whose
windows tile the input (patchify stems, downsampling).

Two gradients, each impl in turn (one call each per round): of `sum(y ** 2)` with
respect to the input and the layer (as `benchmarks/auto.py` times it), and of
`sum(relu(y) ** 2)` with respect to the layer alone, as a model's training step
takes a first layer's (its input is data). Compile is the cold lowering and
compilation of the second.

Run: `python -m benchmarks.conv_patches [--quick] [--only SET]` (`--quick`: 5
repeats).
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from benchmarks._timing import (
    compile_seconds,
    interleaved_median_times,
    markdown,
    Table,
)
from benchmarks.auto import _layer, Row


POINTWISE = [
    Row(8, 96, 384, (16, 16), 1),
    Row(8, 384, 96, (16, 16), 1),
    Row(8, 32, 96, (32, 32), 1),
    Row(8, 96, 32, (32, 32), 1),
    Row(8, 64, 256, (56, 56), 1),
    Row(8, 256, 64, (56, 56), 1),
    Row(8, 32, 32, (2048,), 1),
    Row(8, 256, 256, (512,), 1),
    Row(2, 32, 64, (16, 16, 16), 1),
]
STEMS = [
    Row(2, 1, 16, (32, 32, 32), 3),
    Row(2, 3, 16, (32, 32, 32), 3),
    Row(2, 4, 32, (16, 16, 16), 3),
    Row(1, 1, 16, (64, 64, 64), 3),
]
DENSE = [
    Row(2, 8, 16, (32, 32, 32), 3),
    Row(2, 16, 32, (16, 16, 16), 3),
    Row(2, 24, 32, (16, 16, 16), 3),
    Row(2, 8, 32, (16, 16, 16), 3),
    Row(2, 16, 16, (32, 32, 32), 3),
    Row(2, 32, 32, (16, 16, 16), 3),
    Row(8, 32, 64, (1024,), 4, stride=2),
    Row(8, 32, 64, (1024,), 3),
    Row(8, 64, 128, (16, 16), 3),
    Row(8, 32, 64, (32, 32), 3, stride=2),
    Row(8, 128, 128, (8, 8), 3),
    Row(8, 64, 64, (8, 8), 3),
]
STRIDED_2D = [
    Row(8, 32, 64, (32, 32), 3, stride=2),
    Row(8, 64, 128, (32, 32), 3, stride=2),
    Row(8, 128, 256, (16, 16), 3, stride=2),
    Row(8, 64, 64, (56, 56), 3, stride=2),
    Row(8, 256, 256, (14, 14), 3, stride=2),
    Row(8, 16, 32, (64, 64), 3, stride=2),
    Row(8, 64, 128, (32, 32), 5, stride=2),
]
TILING = [
    Row(8, 3, 96, (64, 64), 4, stride=4, padding="VALID"),
    Row(8, 3, 768, (224, 224), 16, stride=16, padding="VALID"),
    Row(8, 64, 128, (32, 32), 2, stride=2, padding="VALID"),
    Row(8, 96, 192, (32, 32), 2, stride=2, padding="VALID"),
    Row(8, 192, 384, (16, 16), 2, stride=2, padding="VALID"),
    Row(8, 32, 64, (1024,), 4, stride=4, padding="VALID"),
]
IMPLS = ("xla", "fft", "patches", "xla_patches")


def measure(
    row: Row, repeats: int, tables: dict[str, Table], impls: tuple[str, ...] = IMPLS
) -> None:
    x = jr.normal(jr.key(1), (row.batch, row.in_channels, *row.spatial))
    if row.kernel == 1:
        impls = tuple(impl for impl in impls if impl != "fft")
    layers = {impl: _layer(row, impl) for impl in impls}

    def square(args):
        layer, x = args
        return jnp.sum(jax.vmap(layer)(x) ** 2)

    def layer_only(layer, x):
        return jnp.sum(jax.nn.relu(jax.vmap(layer)(x)) ** 2)

    both = eqx.filter_jit(eqx.filter_grad(square))
    weight = eqx.filter_jit(eqx.filter_grad(layer_only))
    timings = {
        "input and layer": interleaved_median_times(
            {impl: (both, ((layer, x),)) for impl, layer in layers.items()},
            repeats=repeats,
        ),
        "layer only": interleaved_median_times(
            {impl: (weight, (layer, x)) for impl, layer in layers.items()},
            repeats=repeats,
        ),
        "compile": {},
    }
    for impl, layer in layers.items():
        params, static = eqx.partition(layer, eqx.is_array)

        def cold(params, x, static=static):
            return jax.grad(layer_only)(eqx.combine(params, static), x)

        timings["compile"][impl] = compile_seconds(cold, params, x, repeats=3)
    for key, table in tables.items():
        table.add(row.name, timings[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only",
        choices=("pointwise", "stems", "dense", "strided_2d", "tiling"),
        help="one set",
    )
    args = parser.parse_args()
    repeats = 5 if args.quick else 9
    titles = {
        "input and layer": "gradient of sum(y ** 2) in the input and the layer",
        "layer only": "gradient of sum(relu(y) ** 2) in the layer",
        "compile": "compile (layer only)",
    }
    dense = ("xla", "patches", "xla_patches")
    sets = {
        "pointwise": (POINTWISE, IMPLS),
        "stems": (STEMS, IMPLS),
        "dense": (DENSE, dense),
        "strided_2d": (STRIDED_2D, dense),
        "tiling": (TILING, ("xla", "patches")),
    }
    for name, (rows, impls) in sets.items():
        if args.only and name != args.only:
            continue
        tables = {key: Table(title, "xla") for key, title in titles.items()}
        for row in rows:
            measure(row, repeats, tables, impls)
        print(markdown(list(tables.values())))


if __name__ == "__main__":
    main()
