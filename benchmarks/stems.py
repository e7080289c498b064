"""Stems: ungrouped convolutions of few input channels (RGB, mono), the case that
decides whether `impl='auto'` may take the shift lowering for `groups == 1`.

Columns: `auto` (eqxconv's default), `shift` (eqxconv forced onto the shift lowering),
`equinox` (`equinox.nn.Conv`), all through `jax.vmap` over the unbatched layer, as
users call them. Forward+backward is the gradient, with respect to input and weight,
of two losses: the linear `sum(y * r)` for a fixed random `r`, and `sum(y ** 2)`,
whose backward pass depends on the forward. Compile is the cold lowering and
compilation of the jitted `sum(y ** 2)` forward+backward.

Run: `python -m benchmarks.stems [--repeats N]`.
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import eqxconv
from benchmarks._timing import compile_seconds, markdown, median_time, Table


# name: (batch, in_channels, out_channels, spatial, kernel, stride, padding)
CASES = {
    "2d RGB 3->64 k3 p1 48^2 b8": (8, 3, 64, (48, 48), 3, 1, 1),
    "2d RGB 3->96 k4 s4 64^2 b8 (patchify)": (8, 3, 96, (64, 64), 4, 4, 0),
    "1d mono 1->32 k7 p3 L2048 b8": (8, 1, 32, (2048,), 7, 1, 3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    titles = ("fwd+bwd, sum(y * r)", "fwd+bwd, sum(y ** 2)", "compile")
    tables = {title: Table(title, "equinox") for title in titles}
    for name, (batch, c_in, c_out, spatial, k, s, p) in CASES.items():
        n = len(spatial)
        key_x, key_r, key_w = jr.split(jr.key(0), 3)
        x = jr.normal(key_x, (batch, c_in, *spatial))
        auto = eqxconv.Conv(n, c_in, c_out, k, s, p, key=key_w)
        equinox = eqx.nn.Conv(n, c_in, c_out, k, s, p, key=key_w)
        layers = {
            "auto": auto,
            "shift": eqxconv.Conv(n, c_in, c_out, k, s, p, impl="shift", key=key_w),
            "equinox": eqx.tree_at(
                lambda m: (m.weight, m.bias), equinox, (auto.weight, auto.bias)
            ),
        }
        r = jr.normal(key_r, jax.eval_shape(jax.vmap(auto), x).shape)

        def linear(layer, x, r=r):
            return jnp.sum(jax.vmap(layer)(x) * r)

        def square(layer, x):
            return jnp.sum(jax.vmap(layer)(x) ** 2)

        timings: dict[str, dict[str, float]] = {title: {} for title in titles}
        for column, layer in layers.items():
            for title, loss in zip(titles[:2], (linear, square), strict=True):
                step = eqx.filter_jit(eqx.filter_grad(loss))
                timings[title][column] = median_time(
                    step, layer, x, repeats=args.repeats
                )
            params, static = eqx.partition(layer, eqx.is_array)

            def cold(params, x, static=static):
                return jax.grad(square)(eqx.combine(params, static), x)

            timings["compile"][column] = compile_seconds(cold, params, x)
        for title in titles:
            tables[title].add(name, timings[title])
    print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
    print(markdown(list(tables.values())))


if __name__ == "__main__":
    main()
