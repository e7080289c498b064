"""Stems: ungrouped convolutions of few input channels (RGB, mono), the layers that
decide which lowering `impl='auto'` takes for a model's first layer.

Columns: `auto` (eqxconv's default), eqxconv forced onto `xla`, `patches` and
`xla_patches`, and `equinox` (`equinox.nn.Conv`), all through `jax.vmap` over the
unbatched layer, as users call them; `--shift` adds the shift lowering (its compile
takes seconds per stem). Forward+backward is the gradient, with respect to input and
weight, of the linear `sum(y * r)` for a fixed random `r` and of `sum(y ** 2)`,
whose backward pass depends on the forward; "first layer" is the `sum(y ** 2)`
gradient with respect to the layer's arrays only, as a model's first layer takes it
(its input is data). The columns of a row are timed in turns, one call each per
round. Compile is the cold lowering and compilation of the jitted `sum(y ** 2)`
gradient, and of the first layer's.

Run: `python -m benchmarks.stems [--quick] [--shift]`.
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import eqxconv
from benchmarks._timing import (
    compile_seconds,
    interleaved_median_times,
    markdown,
    Table,
)


# name: (batch, in_channels, out_channels, spatial, kernel, stride, padding)
CASES = {
    "2d RGB 3->64 k3 p1 48^2 b8": (8, 3, 64, (48, 48), 3, 1, 1),
    "2d RGB 3->96 k4 s4 64^2 b8 (patchify)": (8, 3, 96, (64, 64), 4, 4, 0),
    "1d mono 1->32 k7 p3 L2048 b8": (8, 1, 32, (2048,), 7, 1, 3),
    "2d RGB 3->32 k3 s2 p1 64^2 b8": (8, 3, 32, (64, 64), 3, 2, 1),
    "2d RGB 3->32 k3 s2 p1 224^2 b4": (4, 3, 32, (224, 224), 3, 2, 1),
    "2d RGB 3->16 k3 s2 p1 64^2 b8": (8, 3, 16, (64, 64), 3, 2, 1),
    "2d mono 1->32 k3 s2 p1 64^2 b8": (8, 1, 32, (64, 64), 3, 2, 1),
    "2d RGB 3->32 k3 s3 p1 64^2 b8": (8, 3, 32, (64, 64), 3, 3, 1),
    "1d mono 1->32 k7 s2 p3 L2048 b8": (8, 1, 32, (2048,), 7, 2, 3),
    "2d RGB 3->64 k3 s2 p1 64^2 b8": (8, 3, 64, (64, 64), 3, 2, 1),
    "2d RGB 3->64 k3 s2 p1 32^2 b8": (8, 3, 64, (32, 32), 3, 2, 1),
    "2d RGBA 4->32 k3 s2 p1 64^2 b8": (8, 4, 32, (64, 64), 3, 2, 1),
    "2d RGB 3->32 k5 s2 p2 64^2 b8": (8, 3, 32, (64, 64), 5, 2, 2),
    "2d RGB 3->64 k7 s2 p3 224^2 b2": (2, 3, 64, (224, 224), 7, 2, 3),
}
QUICK = ("2d RGB 3->32 k3 s2 p1 64^2 b8", "2d RGB 3->64 k3 s2 p1 64^2 b8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two rows, 5 repeats")
    parser.add_argument("--shift", action="store_true", help="time 'shift' too")
    args = parser.parse_args()
    repeats, compiles = (5, 1) if args.quick else (11, 3)
    impls = ["auto", "xla", "patches", "xla_patches"]
    if args.shift:
        impls.append("shift")
    losses = ("sum(y * r)", "sum(y ** 2)", "first layer, sum(y ** 2)")
    titles = (*losses, "compile sum(y ** 2)", "compile first layer")
    tables = {title: Table(title, "xla_patches") for title in titles}
    cases = {k: v for k, v in CASES.items() if k in QUICK} if args.quick else CASES
    for name, (batch, c_in, c_out, spatial, k, s, p) in cases.items():
        n = len(spatial)
        key_x, key_r, key_w = jr.split(jr.key(0), 3)
        x = jr.normal(key_x, (batch, c_in, *spatial))
        layers = {
            impl: eqxconv.Conv(n, c_in, c_out, k, s, p, impl=impl, key=key_w)
            for impl in impls
        }
        auto = layers["auto"]
        equinox = eqx.nn.Conv(n, c_in, c_out, k, s, p, key=key_w)
        layers["equinox"] = eqx.tree_at(
            lambda m: (m.weight, m.bias), equinox, (auto.weight, auto.bias)
        )
        r = jr.normal(key_r, jax.eval_shape(jax.vmap(auto), x).shape)

        def linear(args, r=r):
            layer, x = args
            return jnp.sum(jax.vmap(layer)(x) * r)

        def square(args):
            layer, x = args
            return jnp.sum(jax.vmap(layer)(x) ** 2)

        def first_layer(layer, x):
            return square((layer, x))

        # `filter_grad` differentiates its first argument: `(layer, x)` for the
        # gradient in the layer's arrays and the input, the layer alone for a first
        # layer's.
        steps = {
            "sum(y * r)": (eqx.filter_jit(eqx.filter_grad(linear)), True),
            "sum(y ** 2)": (eqx.filter_jit(eqx.filter_grad(square)), True),
            "first layer, sum(y ** 2)": (
                eqx.filter_jit(eqx.filter_grad(first_layer)),
                False,
            ),
        }
        timings: dict[str, dict[str, float]] = {title: {} for title in titles}
        for column, layer in layers.items():
            params, static = eqx.partition(layer, eqx.is_array)

            def cold(params, x, static=static):
                return jax.grad(square)((eqx.combine(params, static), x))

            def cold_first(params, x, static=static):
                return jax.grad(first_layer)(eqx.combine(params, static), x)

            timings["compile sum(y ** 2)"][column] = compile_seconds(
                cold, params, x, repeats=compiles
            )
            timings["compile first layer"][column] = compile_seconds(
                cold_first, params, x, repeats=compiles
            )
        for title, (step, with_input) in steps.items():
            calls = {
                c: (step, ((layer, x),) if with_input else (layer, x))
                for c, layer in layers.items()
            }
            timings[title] = interleaved_median_times(calls, repeats=repeats)
        for title in titles:
            tables[title].add(name, timings[title])
    print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
    print(markdown(list(tables.values())))


if __name__ == "__main__":
    main()
