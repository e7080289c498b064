"""The one custom-derivative idiom of the lowerings.

Every custom lowering computes `f(config, a, b)`, linear in `a` and in `b` separately
(a convolution in its input and in its weight), with a hashable `config` of static
arguments. Its derivative is a `jax.custom_jvp` whose tangent is the sum of the two
partial tangents, each written so that its automatic transpose (reverse mode) is a
fast backward pass; being a JVP rather than a VJP, forward mode and derivatives of
any order keep working.
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
