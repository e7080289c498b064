"""Call-time checks of a layer's or op's input, and their messages.

They run on static shapes at trace time, so they cost nothing in a jitted call and
fire identically eagerly, under `jax.jit`/`eqx.filter_jit`, and inside `jax.vmap`.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import jax
import jax.numpy as jnp
from beartype import beartype
from jaxtyping import jaxtyped


def _expected_shape(in_channels: int | None, num_spatial_dims: int) -> str:
    channels = "C" if in_channels is None else f"C={in_channels}"
    spatial = ", ".join(f"dim_{i + 1}" for i in range(num_spatial_dims))
    return f"({channels}, {spatial})"


def check_input(
    where: str,
    x: Any,
    *,
    num_spatial_dims: int,
    in_channels: int | None,
    in_spatial_shape: Sequence[int] | None = None,
) -> None:
    """Raise a `TypeError`/`ValueError` naming `where`, the expected and received shape.

    **Arguments:**

    - `where`: the layer or op, for the message.
    - `x`: the input, unbatched and channels-first.
    - `num_spatial_dims`: the spatial rank the input must have.
    - `in_channels`: the channel count the input must have, or `None` for any.
    - `in_spatial_shape`: the spatial shape the input must have, or `None` for any.
    """
    expected = _expected_shape(in_channels, num_spatial_dims)
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(
            f"{where} expected an array of shape {expected}, got {type(x).__name__}."
        )
    shape = tuple(int(size) for size in x.shape)
    if len(shape) != num_spatial_dims + 1:
        hint = ""
        if len(shape) == num_spatial_dims + 2:
            hint = (
                " It looks batched: inputs are unbatched, so map over the batch with "
                "`jax.vmap(layer)(x)`."
            )
        raise ValueError(
            f"{where} expected an unbatched channels-first input of rank "
            f"{num_spatial_dims + 1}, shape {expected}, but got shape {shape}.{hint}"
        )
    if in_channels is not None and shape[0] != in_channels:
        raise ValueError(
            f"{where} expected {in_channels} input channels, shape {expected}, but "
            f"got shape {shape}."
        )
    if in_spatial_shape is not None and shape[1:] != tuple(in_spatial_shape):
        raise ValueError(
            f"{where} was built for inputs of spatial shape {tuple(in_spatial_shape)}, "
            f"shape ({shape[0]}, {', '.join(map(str, in_spatial_shape))}), but got "
            f"shape {shape}."
        )
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(
            f"{where} expected a floating-point or complex input, got dtype "
            f"{x.dtype} (shape {shape}); cast it first, e.g. `x.astype(jnp.float32)`."
        )


def check_fits(where: str, shape: tuple[int, ...], compute: Callable[[], Any]) -> Any:
    """Run a shape computation, re-raising its `ValueError` with `where` and `shape`."""
    try:
        return compute()
    except ValueError as error:
        raise ValueError(
            f"{where} cannot take an input of shape {shape}: {error}"
        ) from None


class _Layer(Protocol):
    num_spatial_dims: int

    def out_spatial_shape(self, in_spatial_shape: Sequence[int]) -> tuple[int, ...]: ...


_L = TypeVar("_L", bound=_Layer)
_Out = TypeVar("_Out")


def checked_call(
    method: Callable[[_L, Any], _Out],
) -> Callable[..., _Out]:
    """Decorate a layer's `__call__`: plain checks, then its jaxtyping annotations.

    The library's own checks run first so that a batched input gets the `jax.vmap`
    hint and every message names the layer; then the jaxtyping annotations of the
    method are checked by beartype (turned off by `JAXTYPING_DISABLE=1`), all at trace
    time, inside a `jax.named_scope` named after the layer.
    """
    typechecked = jaxtyped(typechecker=beartype)(method)

    @functools.wraps(method)
    def __call__(self: _L, x: Any, *, key: Any = None) -> _Out:
        del key
        where = type(self).__name__
        with jax.named_scope(f"eqxconv.{where}"):
            check_input(
                where,
                x,
                num_spatial_dims=self.num_spatial_dims,
                in_channels=getattr(self, "in_channels", None),
                in_spatial_shape=getattr(self, "in_spatial_shape", None),
            )
            check_fits(where, x.shape, lambda: self.out_spatial_shape(x.shape[1:]))
            # numpy inputs (data loaders, `check_grads`) are welcome: convert once here.
            return typechecked(self, jnp.asarray(x))

    return __call__
