"""Functional convolution ops on unbatched, channels-first arrays.

These are the truth of the library: every layer is a thin module over them. Each
public op normalises and validates its arguments, checks its input, and calls a
`*_normalised` twin that layers (which normalise once, at construction) call directly.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Inexact

from ._checks import check_fits, check_input
from ._padding import (
    check_positive_int,
    dilated_size,
    normalise_padding,
    Padding,
    PaddingLike,
    PaddingMode,
    PaddingPairs,
    resolve_padding,
    spatial_output_shape,
    to_tuple,
)


_JNP_PAD_MODES = {"REFLECT": "reflect", "REPLICATE": "edge", "CIRCULAR": "wrap"}


def pad(x: Array, pairs: PaddingPairs, padding_mode: PaddingMode) -> Array:
    """Pad the spatial axes of a `(C, *spatial)` array by `pairs` in `padding_mode`.

    `REFLECT`, `REPLICATE` and `CIRCULAR` follow `jnp.pad`'s `reflect`, `edge` and
    `wrap` (and so Equinox and PyTorch, where PyTorch allows the padding).
    """
    if all(pair == (0, 0) for pair in pairs):
        return x
    widths = ((0, 0), *pairs)
    if padding_mode == "ZEROS":
        return jnp.pad(x, widths)
    return jnp.pad(x, widths, mode=_JNP_PAD_MODES[padding_mode])


def _promote(x: Array, weight: Array) -> tuple[Array, Array]:
    """Cast input and weight to their common dtype (JAX's standard promotion lattice).

    Done explicitly so that the library never relies on implicit promotion, and works
    under `jax_numpy_dtype_promotion="strict"`.
    """
    if x.dtype == weight.dtype:
        return x, weight
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.promote_types(x.dtype, weight.dtype)
    return x.astype(dtype), weight.astype(dtype)


def _check_weight(weight: Any, groups: int) -> int:
    """Validate a conv weight `(out_channels, in_channels // groups, *kernel_size)`;
    return the number of spatial dimensions."""
    shape = tuple(getattr(weight, "shape", ()))
    if len(shape) < 3 or 0 in shape:
        raise ValueError(
            "`weight` must have shape (out_channels, in_channels // groups, "
            f"*kernel_size) with at least one spatial dimension, got shape {shape}."
        )
    if shape[0] % groups != 0:
        raise ValueError(
            f"`groups` (={groups}) must divide out_channels, `weight.shape[0]` "
            f"(={shape[0]}); weight shape {shape}."
        )
    return len(shape) - 2


def conv_normalised(
    x: Array,
    weight: Array,
    *,
    stride: tuple[int, ...],
    padding: Padding,
    dilation: tuple[int, ...],
    input_dilation: tuple[int, ...],
    groups: int,
    padding_mode: PaddingMode,
    precision: Any,
    preferred_element_type: Any,
) -> Array:
    """[`eqxconv.conv`][] on already normalised arguments and a checked input."""
    kernel_size = weight.shape[2:]
    extent = tuple(dilated_size(s, d) for s, d in zip(x.shape[1:], input_dilation))
    pairs = resolve_padding(padding, extent, kernel_size, stride, dilation)
    x, weight = _promote(x, weight)
    if padding_mode != "ZEROS":
        # Every non-zero mode: pad once, then a VALID conv.
        x = pad(x, pairs, padding_mode)
        pairs = ((0, 0),) * len(pairs)
    out = lax.conv_general_dilated(
        x[None],
        weight,
        window_strides=stride,
        padding=pairs,
        lhs_dilation=input_dilation,
        rhs_dilation=dilation,
        feature_group_count=groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return out[0]


def conv(
    x: Inexact[Array, " in_channels *spatial"],
    weight: Inexact[Array, " out_channels in_channels_per_group *kernel_size"],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
    input_dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "ZEROS",
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Inexact[Array, " out_channels *out_spatial"]:
    """N-dimensional convolution of one unbatched, channels-first input.

    Cross-correlation, as in every deep-learning library: `weight` is not flipped.
    Batch it with `jax.vmap`.

    **Arguments:**

    - `x`: the input, shape `(in_channels, dim_1, ..., dim_N)`.
    - `weight`: the kernel, shape `(out_channels, in_channels // groups, *kernel_size)`.
    - `stride`: the window stride, an int or a sequence of `N` ints.
    - `padding`: an int, `N` ints, `N` `(low, high)` pairs, or one of `'VALID'`,
        `'SAME'`, `'SAME_LOWER'`, `'CAUSAL'`, `'CIRCULAR'` (case-insensitive).
        Strings are resolved against the (input-dilated) input shape.
    - `dilation`: the kernel dilation ("atrous" rate).
    - `input_dilation`: the input dilation (`lhs_dilation` in `lax`); needs
        `padding_mode='ZEROS'`.
    - `groups`: the number of channel groups; divides `in_channels` and
        `out_channels`.
    - `padding_mode`: `'ZEROS'`, `'REFLECT'`, `'REPLICATE'` or `'CIRCULAR'`.
    - `precision`, `preferred_element_type`: passed to `lax.conv_general_dilated`.

    **Returns:**

    An array of shape `(out_channels, *out_spatial)`, `out_spatial` as
    [`eqxconv.conv_output_shape`][] gives it. When `x` and `weight` differ in dtype both
    are first cast to their common dtype under JAX's standard promotion (e.g.
    `bfloat16` with `float32` computes in `float32`).
    """
    groups = check_positive_int(groups, "groups")
    n = _check_weight(weight, groups)
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    input_dilation = to_tuple(input_dilation, n, "input_dilation")
    norm_padding, mode = normalise_padding(padding, padding_mode, n)
    if mode != "ZEROS" and input_dilation != (1,) * n:
        raise ValueError(
            f"`padding_mode={padding_mode!r}` cannot be combined with "
            f"`input_dilation={input_dilation}`: only 'ZEROS' padding is defined on an "
            "input-dilated input."
        )
    where = "eqxconv.conv"
    in_channels = weight.shape[1] * groups
    check_input(where, x, num_spatial_dims=n, in_channels=in_channels)
    kernel_size = weight.shape[2:]
    extent = tuple(dilated_size(s, d) for s, d in zip(x.shape[1:], input_dilation))
    pairs = resolve_padding(norm_padding, extent, kernel_size, stride, dilation)
    check_fits(
        where,
        x.shape,
        lambda: spatial_output_shape(extent, pairs, kernel_size, stride, dilation),
    )
    return conv_normalised(
        x,
        weight,
        stride=stride,
        padding=pairs,
        dilation=dilation,
        input_dilation=input_dilation,
        groups=groups,
        padding_mode=mode,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
