"""`input_dilation` on patches and locally connected layers: eqxconv against `lax`'s
`conv_general_dilated_patches` / `conv_general_dilated_local` with `lhs_dilation`,
batch 8 on CPU.

Times the gradient (with respect to the input and, for `conv_local`, the weight) of
`sum(y ** 2)`, whose backward pass needs the forward, and the cold compile of that
gradient. Run with `python -m benchmarks.input_dilation` (`--quick`: fewer repeats).
"""

import argparse

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr

from benchmarks._timing import compile_seconds, markdown, median_time, Table
from eqxconv import conv_local, extract_patches


# name: (channels, spatial, kernel, stride, input_dilation)
CASES = {
    "1D C16 L256 k5 r2": (16, (256,), 5, 1, 2),
    "2D C8 24^2 k3 r2": (8, (24, 24), 3, 1, 2),
    "2D C8 24^2 k3 s2 r3": (8, (24, 24), 3, 2, 3),
}
BATCH, OUT_CHANNELS = 8, 8


def _dimension_numbers(n: int) -> tuple[str, str, str]:
    spatial = "DHW"[3 - n :]
    return (f"NC{spatial}", f"OI{spatial}", f"NC{spatial}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else 10
    titles = (
        "extract_patches fwd+bwd, sum(y ** 2)",
        "extract_patches compile",
        "conv_local fwd+bwd, sum(y ** 2)",
        "conv_local compile",
    )
    tables = {title: Table(title, "lax") for title in titles}
    for name, (c, spatial, k, s, r) in CASES.items():
        n = len(spatial)
        ks, ss, rs = (k,) * n, (s,) * n, (r,) * n
        x = jr.normal(jr.key(0), (BATCH, c, *spatial))

        def ours_patches(x, ks=ks, ss=ss, rs=rs):
            return jax.vmap(
                lambda v: extract_patches(v, ks, stride=ss, input_dilation=rs)
            )(x)

        def lax_patches(x, ks=ks, ss=ss, rs=rs, n=n):
            # lax takes no padding string with an input dilation.
            return lax.conv_general_dilated_patches(
                x, ks, ss, ((0, 0),) * n, lhs_dilation=rs
            )

        out_spatial = jax.eval_shape(ours_patches, x).shape[2:]
        w = jr.normal(jr.key(1), (OUT_CHANNELS, c * k**n, *out_spatial))

        def ours_local(x, w, ks=ks, ss=ss, rs=rs):
            return jax.vmap(
                lambda v: conv_local(v, w, kernel_size=ks, stride=ss, input_dilation=rs)
            )(x)

        def lax_local(x, w, ks=ks, ss=ss, rs=rs, n=n):
            return lax.conv_general_dilated_local(
                x,
                w,
                ss,
                ((0, 0),) * n,
                ks,
                lhs_dilation=rs,
                dimension_numbers=_dimension_numbers(n),
            )

        for family, variants, arguments in (
            ("extract_patches", {"eqxconv": ours_patches, "lax": lax_patches}, (x,)),
            ("conv_local", {"eqxconv": ours_local, "lax": lax_local}, (x, w)),
        ):
            step_times, compile_times = {}, {}
            for label, fn in variants.items():

                def loss(*a, fn=fn):
                    return jnp.sum(fn(*a) ** 2)

                argnums = tuple(range(len(arguments)))
                grad = jax.value_and_grad(loss, argnums=argnums)
                step_times[label] = median_time(
                    jax.jit(grad), *arguments, repeats=repeats
                )
                compile_times[label] = compile_seconds(grad, *arguments)
            tables[f"{family} fwd+bwd, sum(y ** 2)"].add(name, step_times)
            tables[f"{family} compile"].add(name, compile_times)
    print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
    print(markdown(list(tables.values())))


if __name__ == "__main__":
    main()
