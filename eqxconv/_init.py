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


def default_floating_dtype() -> Any:
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


def parameter_dtype(dtype: Any) -> Any:
    """The layer's parameter dtype: validated `dtype`, or the default floating dtype."""
    if dtype is None:
        return default_floating_dtype()
    try:
        canonical = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"`dtype` must be a floating or complex dtype, got {dtype!r}."
        ) from None
    if not jnp.issubdtype(canonical, jnp.inexact):
        raise TypeError(
            f"`dtype` must be a floating or complex dtype (e.g. jnp.float32, "
            f"jnp.bfloat16, jnp.complex64), got {canonical}."
        )
    return canonical


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
    value = jnp.asarray(init(key, shape, dtype))
    if value.shape != shape:
        raise ValueError(
            f"`{name}` returned an array of shape {value.shape}; expected {shape}."
        )
    return value.astype(dtype)


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
    weight_key, bias_key = jr.split(key)
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


def check_mask(mask: Any, weight_shape: tuple[int, ...]) -> Array | None:
    """`mask` reshaped to the weight's rank, or a `ValueError` if it won't broadcast."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    try:
        broadcast = jnp.broadcast_shapes(mask.shape, weight_shape)
    except ValueError:
        broadcast = None
    if broadcast != weight_shape:
        raise ValueError(
            f"`mask` of shape {mask.shape} does not broadcast to the weight's shape "
            f"{weight_shape}."
        )
    # Same rank as the weight, so no call relies on implicit rank promotion.
    return mask.reshape((1,) * (len(weight_shape) - mask.ndim) + mask.shape)


def apply_mask(weight: Array, mask: Array | None) -> Array:
    """The weight with `mask` multiplied in; masked-out entries get zero gradient."""
    if mask is None:
        return weight
    mask = jax.lax.stop_gradient(mask)
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, weight, jnp.zeros((), weight.dtype))
    return weight * mask.astype(weight.dtype)
