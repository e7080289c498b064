"""Call-time checks of a layer's or op's input, and their messages.

They run on static shapes at trace time, so they cost nothing in a jitted call and
fire identically eagerly, under `jax.jit`/`eqx.filter_jit`, and inside `jax.vmap`.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, cast, Protocol, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from beartype import beartype
from jaxtyping import jaxtyped


def _is_vmapped(x: Any) -> bool:
    """Whether `x` is being mapped over by `jax.vmap` (it is a batch tracer)."""
    return type(x).__name__ == "BatchTracer"


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
    if not isinstance(x, jax.Array | np.ndarray | np.generic):
        hint = ""
        if hasattr(x, "mantissa"):
            hint = (
                " For an array with units, pass its `.mantissa` and multiply the "
                "result by the product of the input's and the weight's units."
            )
        raise TypeError(
            f"{where} expected a JAX or numpy array of shape {expected}, got "
            f"{type(x).__module__}.{type(x).__qualname__}.{hint}"
        )
    shape = tuple(int(size) for size in x.shape)
    if len(shape) != num_spatial_dims + 1:
        hint = ""
        if len(shape) == num_spatial_dims + 2 and _is_vmapped(x):
            hint = (
                " The input is already under `jax.vmap` and still has an extra axis: "
                "map over that axis too, or remove it."
            )
        elif len(shape) == num_spatial_dims + 2:
            hint = (
                " It looks batched: inputs are unbatched, so map over the batch with "
                "`jax.vmap(layer)(x)`."
            )
        raise ValueError(
            f"{where} expected an unbatched channels-first input of rank "
            f"{num_spatial_dims + 1}, shape {expected}, but got shape {shape}.{hint}"
        )
    if in_channels is not None and shape[0] != in_channels:
        hint = ""
        if shape[-1] == in_channels:
            hint = (
                " The channels look like they are on the last axis: eqxconv is "
                "channels-first, so move them first, e.g. `jnp.moveaxis(x, -1, 0)`."
            )
        raise ValueError(
            f"{where} expected {in_channels} input channels, shape {expected}, but "
            f"got shape {shape}.{hint}"
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


_Out = TypeVar("_Out")


def check_fits(
    where: str, shape: tuple[int, ...], compute: Callable[..., _Out], *args: Any
) -> _Out:
    """`compute(*args)`, a shape computation, its `ValueError` re-raised naming `where`
    and the input's `shape`."""
    try:
        return compute(*args)
    except ValueError as error:
        raise ValueError(
            f"{where} cannot take an input of shape {shape}: {error}"
        ) from None


def check_mode_input(
    where: str, shape: tuple[int, ...], pairs: Sequence[tuple[int, int]], mode: str
) -> None:
    """`REFLECT`, `REPLICATE` and `CIRCULAR` padding read the input's border, which
    an empty spatial axis does not have."""
    for size, pair in zip(shape[1:], pairs, strict=True):
        if mode != "ZEROS" and size == 0 and pair != (0, 0):
            raise ValueError(
                f"{where} cannot pad an input of shape {shape} with "
                f"padding_mode={mode!r}: it has an empty spatial axis, which has no "
                "border to reflect, replicate or wrap."
            )


def check_conv_weight(weight: Any, groups: int) -> int:
    """Validate a functional op's weight `(out_channels, in_channels // groups,
    *kernel_size)`; return the number of spatial dimensions."""
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


def check_local_weight(
    where: str,
    weight: Any,
    *,
    in_channels: int,
    groups: int,
    kernel_size: tuple[int, ...],
    out_shape: tuple[int, ...],
) -> None:
    """Check a locally connected weight `(O, (C // groups) * K, *out_shape)`."""
    shape = tuple(int(s) for s in getattr(weight, "shape", ()))
    per_group = (in_channels // groups) * math.prod(kernel_size)
    if (
        len(shape) != len(out_shape) + 2
        or shape[1] != per_group
        or shape[2:] != out_shape
        or shape[0] % groups != 0
    ):
        raise ValueError(
            f"{where} expected `weight` of shape (out_channels, (in_channels // "
            f"groups) * prod(kernel_size), *out_spatial) = (O, {per_group}, "
            f"{', '.join(map(str, out_shape))}) with O divisible by groups={groups}, "
            f"for in_channels={in_channels}, kernel_size={kernel_size}; got shape "
            f"{shape}."
        )
    if not jnp.issubdtype(weight.dtype, jnp.inexact):
        raise TypeError(f"{where}: `weight` must be floating, got {weight.dtype}.")


def check_patches(
    where: str,
    patches: Any,
    kernel_size: tuple[int, ...],
    grid_shape: tuple[int, ...],
) -> None:
    """Check patches `(C * prod(kernel_size), *grid_shape)` for a fold."""
    check_input(where, patches, num_spatial_dims=len(kernel_size), in_channels=None)
    k_total = math.prod(kernel_size)
    shape = tuple(int(s) for s in patches.shape)
    expected = f"(C * {k_total}, {', '.join(map(str, grid_shape))})"
    if shape[0] % k_total != 0 or shape[1:] != grid_shape:
        raise ValueError(
            f"{where} expected patches of shape {expected}: a multiple of "
            f"prod(kernel_size)={k_total} channels and the spatial shape "
            f"{grid_shape} that extracting patches from the output gives; got shape "
            f"{shape}."
        )


def check_parameters(
    where: str,
    parameters: dict[str, Any],
    expected: dict[str, tuple[int, ...]],
) -> None:
    """Check a layer's arrays (`weight`, `bias`, `mask`, possibly replaced by tree
    surgery) against the shapes its static configuration implies: `weight` and
    `bias` exactly, `mask` broadcastable to the weight. `None` passes (no bias, no
    mask)."""
    for field, value in parameters.items():
        if value is None:
            continue
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(
                f"{where}.{field} must be an array, got {type(value).__name__}."
            )
        shape = tuple(int(size) for size in value.shape)
        if field == "mask":
            try:
                fits = jnp.broadcast_shapes(shape, expected["weight"])
            except ValueError:
                fits = None
            if fits == expected["weight"]:
                continue
            wanted = f"a shape broadcastable to the weight's {expected['weight']}"
        elif shape == expected[field]:
            if field == "mask" or jnp.issubdtype(value.dtype, jnp.inexact):
                continue
            raise TypeError(
                f"{where}.{field} must be floating or complex, got dtype {value.dtype}."
            )
        else:
            wanted = str(expected[field])
        raise ValueError(
            f"{where}.{field} has shape {shape}, but the layer's configuration needs "
            f"{wanted}. A replaced array (e.g. by `eqx.tree_at`) must keep its shape; "
            "for another configuration build a new layer."
        )


class _Layer(Protocol):
    num_spatial_dims: int


_Method = TypeVar("_Method", bound=Callable[..., Any])


def checked_call(method: _Method) -> _Method:
    """Decorate a layer's `__call__`: the library's input check, then the method's
    jaxtyping annotations.

    The library's own check runs first, so that a batched input gets the `jax.vmap`
    hint and every message names the layer; then beartype checks the jaxtyping
    annotations (turned off by `JAXTYPING_DISABLE=1`), all at trace time, inside a
    `jax.named_scope` named after the layer. The decorated method keeps its
    signature, for pyright and `help()`.
    """
    typechecked = jaxtyped(typechecker=beartype)(method)

    @functools.wraps(method)
    def __call__(self: _Layer, x: Any, *, key: Any = None) -> Any:
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
            # numpy inputs (data loaders, `check_grads`) are welcome: convert once here.
            return typechecked(self, jnp.asarray(x))

    return cast(_Method, __call__)
