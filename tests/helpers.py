"""Utilities the tests share. The oracles they compare against are in `oracles.py`."""

from typing import Any

import equinox as eqx
import jax


def as_tuple(value: Any, n: int) -> tuple[int, ...]:
    """An int (the same in every dimension) or `n` ints, as a tuple."""
    return (value,) * n if isinstance(value, int) else tuple(value)


@eqx.filter_jit
def apply(layer, x):
    """`layer(x)` under one jitted caller, shared by every test."""
    return layer(x)


def with_parameters(layer, weight, bias):
    """`layer` with its weight and bias replaced (tree surgery)."""
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, bias))


def uses_lax_conv(f, *args) -> bool:
    """Whether `f(*args)` traces to XLA's convolution."""
    return "conv_general_dilated" in str(jax.make_jaxpr(f)(*args))


def value_vjp_jvp(f):
    """`f` mapped over a batch of inputs `xs` with one weight `w`: its value, its VJP
    for the cotangent `r` and its JVP along `(dxs, dw)`, in one jitted call."""

    @jax.jit
    def run(xs, w, r, dxs, dw):
        batched = jax.vmap(f, in_axes=(0, None))
        y, vjp = jax.vjp(batched, xs, w)
        _, ty = jax.jvp(batched, (xs, w), (dxs, dw))
        return y, vjp(r), ty

    return run
