"""The custom-derivative idioms of the lowerings.

Every custom lowering computes `f(config, a, b)`, linear in `a` and in `b` separately
(a convolution in its input and in its weight), with a hashable `config` of static
arguments. Its derivative is a `jax.custom_jvp` ([`bilinear`][]) whose tangent is
the sum of the two partial tangents, each written so that its automatic transpose
(reverse mode) is a fast backward pass; being a JVP rather than a VJP, forward mode
and derivatives of any order keep working. [`by_first_tangent`][] instead picks one
of two whole lowerings by whether `a` is differentiated at all.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array


_Config = TypeVar("_Config")
Bilinear = Callable[[_Config, Array, Array], Array]


def bilinear(
    primal: Bilinear,
    tangent_in_first: Bilinear,
    tangent_in_second: Bilinear,
) -> Bilinear:
    """`primal(config, a, b)` with the custom JVP `tangent_in_first(config, da, b) +
    tangent_in_second(config, a, db)`; `config` is the only non-differentiable
    argument. A symbolic-zero tangent skips its term."""
    function = jax.custom_jvp(primal, nondiff_argnums=(0,))

    def jvp(
        config: Any, primals: tuple[Array, Array], tangents: tuple[Any, Any]
    ) -> tuple[Array, Array]:
        a, b = primals
        da, db = tangents
        out = function(config, a, b)
        terms = []
        if not isinstance(da, SymbolicZero):
            terms.append(tangent_in_first(config, da, b))
        if not isinstance(db, SymbolicZero):
            terms.append(tangent_in_second(config, a, db))
        if not terms:
            return out, jnp.zeros_like(out)
        return out, sum(terms[1:], terms[0]).astype(out.dtype)

    function.defjvp(jvp, symbolic_zeros=True)
    return function


def by_first_tangent(if_constant: Bilinear, if_varying: Bilinear) -> Bilinear:
    """`if_constant(config, a, b)`, with its own derivatives, wherever `a`'s tangent
    is a symbolic zero (a model's first layer: its input is data), and
    `if_varying(config, a, b)` with its own derivatives wherever `a` is
    differentiated. The two compute the same function; which one runs is decided at
    trace time, so each program holds one of them only."""
    function = jax.custom_jvp(if_constant, nondiff_argnums=(0,))

    def jvp(
        config: Any, primals: tuple[Array, Array], tangents: tuple[Any, Any]
    ) -> tuple[Array, Array]:
        a, b = primals
        da, db = tangents
        if isinstance(da, SymbolicZero):
            if isinstance(db, SymbolicZero):
                out = if_constant(config, a, b)
                return out, jnp.zeros_like(out)
            return jax.jvp(lambda b: if_constant(config, a, b), (b,), (db,))
        if isinstance(db, SymbolicZero):
            return jax.jvp(lambda a: if_varying(config, a, b), (a,), (da,))
        return jax.jvp(lambda a, b: if_varying(config, a, b), (a, b), (da, db))

    function.defjvp(jvp, symbolic_zeros=True)
    return function
