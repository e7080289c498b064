"""PyTorch-exact default initialisation and the `kernel_init` / `bias_init` plumbing."""

import math
from collections.abc import Callable
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray


Initializer: TypeAlias = Callable[[PRNGKeyArray, tuple[int, ...], Any], Array]
"""`(key, shape, dtype) -> array`, as `kernel_init=` and `bias_init=` take."""


def uniform(
    key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any, bound: float
) -> Array:
    """Uniform on `[-bound, bound]`; for complex dtypes, real and imaginary parts
    independently so."""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        real_dtype = jnp.finfo(dtype).dtype
        real_key, imag_key = jr.split(key)
        real = jr.uniform(real_key, shape, real_dtype, -bound, bound)
        imag = jr.uniform(imag_key, shape, real_dtype, -bound, bound)
        return jax.lax.complex(real, imag).astype(dtype)
    return jr.uniform(key, shape, dtype, -bound, bound)


def fan_in_uniform(fan_in: int) -> Initializer:
    """PyTorch's default: uniform on `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`.

    (PyTorch's `kaiming_uniform_(a=sqrt(5))` for the weight reduces to exactly this
    bound, and its bias uses the same one.)
    """
    bound = 1 / math.sqrt(fan_in)
    return lambda key, shape, dtype: uniform(key, shape, dtype, bound)


def _initialise(
    init: Initializer, name: str, key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any
) -> Array:
    if not callable(init):
        raise TypeError(
            f"`{name}` must be a callable `(key, shape, dtype) -> array`, got {init!r}."
        )
    value = init(key, shape, dtype)
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(
            f"`{name}` must return an array of shape {shape}, got "
            f"{type(value).__name__}."
        )
    value = jnp.asarray(value)
    if value.shape != shape:
        raise ValueError(
            f"`{name}` returned an array of shape {value.shape}; expected {shape}."
        )
    if not jnp.issubdtype(value.dtype, jnp.inexact):
        raise TypeError(
            f"`{name}` returned an array of dtype {value.dtype}; expected a floating "
            f"or complex dtype (the layer's is {jnp.dtype(dtype)})."
        )
    return value.astype(dtype)


def _split(key: Any) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    try:
        weight_key, bias_key = jr.split(key)
    except (TypeError, ValueError):
        raise TypeError(
            "`key` must be a `jax.random` key (`jax.random.key(0)` or "
            f"`jax.random.PRNGKey(0)`), got {key!r}."
        ) from None
    return weight_key, bias_key


def init_parameters(
    key: PRNGKeyArray,
    *,
    weight_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    fan_in: int,
    dtype: Any,
    kernel_init: Initializer | None,
    bias_init: Initializer | None,
) -> tuple[Array, Array | None]:
    """Initial `(weight, bias)`; `bias_shape=None` means no bias."""
    default = fan_in_uniform(fan_in)
    weight_key, bias_key = _split(key)
    weight = _initialise(
        default if kernel_init is None else kernel_init,
        "kernel_init",
        weight_key,
        weight_shape,
        dtype,
    )
    if bias_shape is None:
        return weight, None
    bias = _initialise(
        default if bias_init is None else bias_init,
        "bias_init",
        bias_key,
        bias_shape,
        dtype,
    )
    return weight, bias
