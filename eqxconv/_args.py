"""Normalisation and validation of every configuration argument, with the messages
users read.

Layers call these once, at construction; the functional ops call them on every call
(at trace time, so a jitted call pays nothing). Everything here is pure Python on
ints, strings and tuples, except the dtype and mask checks.
"""

import operator
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, TypeVar

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._geometry import is_non_overlapping, output_shape, Padding, SIZE_BY_STRIDE


PaddingLike: TypeAlias = str | int | Sequence[int] | Sequence[tuple[int, int]]
"""Every padding form the public API accepts."""

PaddingMode: TypeAlias = Literal["ZEROS", "REFLECT", "REPLICATE", "CIRCULAR"]

PADDING_STRINGS = ("VALID", "SAME", "SAME_LOWER", "CAUSAL", "CIRCULAR")
PADDING_MODES: tuple[PaddingMode, ...] = ("ZEROS", "REFLECT", "REPLICATE", "CIRCULAR")

ConvImpl: TypeAlias = Literal[
    "auto", "xla", "shift", "fft", "patches", "xla_patches", "xla_or_patches"
]  # fmt: skip
CONV_IMPLS: tuple[ConvImpl, ...] = (
    "auto", "xla", "shift", "fft", "patches", "xla_patches", "xla_or_patches",
)  # fmt: skip

TransposeImpl: TypeAlias = Literal["auto", "phase", "interior", "lhs_dilation"]
TRANSPOSE_IMPLS: tuple[TransposeImpl, ...] = (
    "auto",
    "phase",
    "interior",
    "lhs_dilation",
)

PatchesImpl: TypeAlias = Literal["auto", "reshape", "slices", "separable"]
PATCHES_IMPLS: tuple[PatchesImpl, ...] = ("auto", "reshape", "slices", "separable")

_Choice = TypeVar("_Choice", bound=str)


def as_int(value: object, name: str) -> int:
    """`value` as an int (numpy ints included, bools refused), or a `TypeError`."""
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, not the bool {value!r}.")
    try:
        return operator.index(value)  # pyright: ignore[reportArgumentType]
    except TypeError:
        raise TypeError(
            f"`{name}` must be an int, got {value!r} of type {type(value).__name__}."
        ) from None


def check_positive_int(value: object, name: str) -> int:
    """`value` as an int, or a `TypeError`/`ValueError` naming `name`."""
    result = as_int(value, name)
    if result < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return result


def check_choice(value: object, name: str, allowed: Sequence[_Choice]) -> _Choice:
    """The entry of `allowed` that `value` names (case-insensitive), else a
    `TypeError`/`ValueError` naming the argument, the value and what is allowed."""
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be a string, one of {tuple(allowed)}, got {value!r} of "
            f"type {type(value).__name__}."
        )
    for choice in allowed:
        if value.lower() == choice.lower():
            return choice
    raise ValueError(
        f"`{name}` must be one of {tuple(allowed)} (case-insensitive), got {value!r}."
    )


def check_groups(groups: object, in_channels: int, out_channels: int) -> int:
    """`groups` as an int dividing both channel counts, or an error saying which not."""
    groups = check_positive_int(groups, "groups")
    for name, channels in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
    ):
        if channels % groups != 0:
            raise ValueError(
                f"`groups` (={groups}) must divide `{name}` (={channels})."
            )
    return groups


def to_tuple(
    value: int | Sequence[int], num_spatial_dims: int, name: str, *, minimum: int = 1
) -> tuple[int, ...]:
    """Normalise an int or a sequence of `num_spatial_dims` ints to a tuple.

    **Arguments:**

    - `value`: an int (the same in every spatial dimension) or a sequence of ints.
    - `num_spatial_dims`: how many entries the result has.
    - `name`: the argument's name, for error messages.
    - `minimum`: the smallest value allowed for every entry.

    **Returns:**

    A tuple of `num_spatial_dims` ints.
    """
    if isinstance(value, str) or not isinstance(value, Sequence):
        values = (as_int(value, name),) * num_spatial_dims
    else:
        if len(value) != num_spatial_dims:
            raise ValueError(
                f"`{name}` must be an int or a sequence of {num_spatial_dims} ints "
                f"(one per spatial dimension), got {value!r} of length {len(value)}."
            )
        values = tuple(as_int(v, name) for v in value)
    if any(v < minimum for v in values):
        allowed = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(
            f"`{name}` must be {allowed} in every dimension, got {value!r}."
        )
    return values


def check_layer_args(
    num_spatial_dims: object,
    in_channels: object,
    out_channels: object,
    kernel_size: int | Sequence[int],
    groups: object,
    use_bias: object,
) -> tuple[int, int, int, tuple[int, ...], int]:
    """The shape arguments every layer with weights validates at construction.

    **Returns:**

    `(num_spatial_dims, in_channels, out_channels, kernel_size, groups)`, normalised.
    """
    n = check_positive_int(num_spatial_dims, "num_spatial_dims")
    in_channels = check_positive_int(in_channels, "in_channels")
    out_channels = check_positive_int(out_channels, "out_channels")
    groups = check_groups(groups, in_channels, out_channels)
    kernel_size = to_tuple(kernel_size, n, "kernel_size")
    if not isinstance(use_bias, bool):
        raise TypeError(f"`use_bias` must be a bool, got {use_bias!r}.")
    return n, in_channels, out_channels, kernel_size, groups


def check_spatial_shape(
    shape: object, num_spatial_dims: int | None, name: str
) -> tuple[int, ...]:
    """A sequence of `num_spatial_dims` (`None`: one or more) positive ints, or an
    error naming `name`."""
    if isinstance(shape, str) or not isinstance(shape, Sequence):
        raise TypeError(
            f"`{name}` must be a sequence of ints (a spatial shape), got {shape!r}."
        )
    if num_spatial_dims is None and len(shape) == 0:
        raise ValueError(f"`{name}` must have at least one dimension, got ().")
    if num_spatial_dims is not None and len(shape) != num_spatial_dims:
        raise ValueError(
            f"`{name}` must have {num_spatial_dims} entries (one per spatial "
            f"dimension), got {tuple(shape)!r}."
        )
    return tuple(check_positive_int(size, name) for size in shape)


def _padding_error(padding: object, num_spatial_dims: int) -> ValueError:
    return ValueError(
        f"`padding` must be an int, a sequence of {num_spatial_dims} ints, a sequence "
        f"of {num_spatial_dims} (low, high) pairs of non-negative ints, or one of "
        f"{PADDING_STRINGS} (case-insensitive); got {padding!r}."
    )


def _pair(entry: object, padding: object, num_spatial_dims: int) -> tuple[int, int]:
    if isinstance(entry, str) or not isinstance(entry, Sequence):
        low = high = as_int(entry, "padding")
    elif len(entry) == 2:
        low, high = (as_int(e, "padding") for e in entry)
    else:
        raise _padding_error(padding, num_spatial_dims)
    if low < 0 or high < 0:
        raise _padding_error(padding, num_spatial_dims)
    return low, high


def normalise_padding(
    padding: PaddingLike, padding_mode: object, num_spatial_dims: int
) -> tuple[Padding, PaddingMode]:
    """Normalise `padding` and `padding_mode` together.

    `'CIRCULAR'` padding is Flax's string: periodic padding centred on the window, so
    it fixes the mode to `'CIRCULAR'` and the two arguments are resolved as one.

    **Returns:**

    `(padding, padding_mode)`: padding as an upper-case string among `'VALID'`,
    `'SAME'`, `'SAME_LOWER'`, `'CAUSAL'`, `'CIRCULAR'`, or a tuple of `(low, high)`
    pairs; the mode upper-case.
    """
    mode = check_choice(padding_mode, "padding_mode", PADDING_MODES)
    if isinstance(padding, str):
        upper = padding.upper()
        if upper == "CIRCULAR":
            if mode not in ("ZEROS", "CIRCULAR"):
                raise ValueError(
                    "`padding='CIRCULAR'` pads periodically (Flax's padding string) "
                    f"and cannot be combined with `padding_mode={padding_mode!r}`; "
                    "allowed with it: 'ZEROS' (the default) or 'CIRCULAR'."
                )
            return "CIRCULAR", "CIRCULAR"
        for string in ("VALID", "SAME", "SAME_LOWER", "CAUSAL"):
            if upper == string:
                return string, mode
        raise _padding_error(padding, num_spatial_dims)
    if isinstance(padding, Sequence):
        if len(padding) != num_spatial_dims:
            raise _padding_error(padding, num_spatial_dims)
        pairs = tuple(_pair(entry, padding, num_spatial_dims) for entry in padding)
    else:
        pairs = (_pair(padding, padding, num_spatial_dims),) * num_spatial_dims
    return pairs, mode


def normalise_fold_padding(padding: PaddingLike, num_spatial_dims: int) -> Padding:
    """Normalised `padding` for a fold, which pads with zeros only (so not
    `'CIRCULAR'`)."""
    norm_padding, mode = normalise_padding(padding, "ZEROS", num_spatial_dims)
    if mode != "ZEROS":
        raise ValueError(
            f"`padding={padding!r}` is not allowed when folding patches: a fold is the "
            "adjoint of zero-padded extraction, so `padding` must be an int, ints, "
            "(low, high) pairs, or one of 'VALID', 'SAME', 'SAME_LOWER', 'CAUSAL'."
        )
    return norm_padding


def check_input_dilation(
    input_dilation: int | Sequence[int],
    num_spatial_dims: int,
    padding_mode: PaddingMode,
    impl: str = "auto",
) -> tuple[int, ...]:
    """`input_dilation` as a tuple; only zero padding is defined on an input-dilated
    input, and the shift lowering does not take one (XLA's convolution, and the FFT
    and patches lowerings, which interleave the zeros explicitly, do)."""
    values = to_tuple(input_dilation, num_spatial_dims, "input_dilation")
    if values == (1,) * num_spatial_dims:
        return values
    if padding_mode != "ZEROS":
        raise ValueError(
            f"`padding_mode={padding_mode!r}` cannot be combined with "
            f"`input_dilation={values}`: only 'ZEROS' padding is defined on an "
            "input-dilated input."
        )
    if impl == "shift":
        raise ValueError(
            f"`impl='shift'` cannot be combined with `input_dilation={values}`; use "
            "`impl='xla'`, `'fft'`, `'patches'` or `'auto'`."
        )
    return values


def check_output_padding(
    output_padding: int | Sequence[int],
    num_spatial_dims: int,
    stride: Sequence[int],
    dilation: Sequence[int],
    padding: Padding,
) -> tuple[int, ...]:
    """Validate a transposed convolution's `output_padding` against its configuration.

    PyTorch's rule: `output_padding < max(stride, dilation)` in every dimension. With
    `'SAME'`, `'SAME_LOWER'` or `'CIRCULAR'` padding the output size is only ambiguous
    up to the stride, so there `output_padding < stride`.

    **Returns:**

    `output_padding` as a tuple of `num_spatial_dims` non-negative ints.
    """
    values = to_tuple(output_padding, num_spatial_dims, "output_padding", minimum=0)
    same = padding in SIZE_BY_STRIDE
    for i, (a, s, d) in enumerate(zip(values, stride, dilation, strict=True)):
        limit = s if same else max(s, d)
        if a >= limit:
            rule = (
                f"`stride` (={s}) with padding={padding!r}"
                if same
                else f"max(stride, dilation) (=max({s}, {d}))"
            )
            raise ValueError(
                f"`output_padding` must be smaller than {rule} in every dimension; got "
                f"output_padding={output_padding!r}: {a} in dimension {i}."
            )
    return values


def check_patches_impl(
    impl: object,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> PatchesImpl:
    """`impl` of a patch op; `'reshape'` needs windows that tile the input."""
    choice = check_choice(impl, "impl", PATCHES_IMPLS)
    if choice == "reshape" and not is_non_overlapping(kernel_size, stride, dilation):
        raise ValueError(
            "`impl='reshape'` needs non-overlapping windows (stride == kernel_size, "
            f"dilation 1), got kernel_size={tuple(kernel_size)}, "
            f"stride={tuple(stride)}, dilation={tuple(dilation)}."
        )
    return choice


def check_window_fits(
    name: str,
    in_spatial_shape: tuple[int, ...],
    padding: Padding,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> tuple[int, ...]:
    """The output shape of windows over `in_spatial_shape`, the spatial shape a
    layer fixes at construction; a `ValueError` naming `name` if they do not fit."""
    try:
        return output_shape(in_spatial_shape, padding, kernel_size, stride, dilation)
    except ValueError as error:
        raise ValueError(
            f"`{name}`={in_spatial_shape} is too small for the kernel: {error}"
        ) from None


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


def check_precision(precision: Any) -> Any:
    """`precision` as `lax` takes it (`None`, a `lax.Precision` or its name, or a pair
    of those), checked now rather than at the first call."""
    if precision is None or isinstance(precision, jax.lax.Precision):
        return precision
    entries = precision if isinstance(precision, tuple) else (precision,)
    try:
        if len(entries) not in (1, 2):
            raise ValueError
        for entry in entries:
            if not isinstance(entry, jax.lax.Precision):
                jax.lax.Precision(entry)
    except (ValueError, TypeError, KeyError):
        names = tuple(p.name.lower() for p in jax.lax.Precision)
        raise ValueError(
            f"`precision` must be None, a `jax.lax.Precision`, one of {names}, or a "
            f"pair of those; got {precision!r}."
        ) from None
    return precision


def check_preferred_element_type(preferred_element_type: Any) -> Any:
    """`None` or a floating or complex dtype: the layers compute in floating point,
    so an integer or boolean result would truncate."""
    if preferred_element_type is None:
        return None
    try:
        dtype = jnp.dtype(preferred_element_type)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            "`preferred_element_type` must be None or a floating or complex dtype "
            f"(e.g. jnp.float32), got {preferred_element_type!r}."
        )
    return dtype


def check_mask(mask: Any, weight_shape: tuple[int, ...]) -> Array | None:
    """`mask` reshaped to the weight's rank, or a `ValueError` if it won't broadcast."""
    if mask is None:
        return None
    if (
        isinstance(mask, str)
        or not hasattr(mask, "__array__")
        and not isinstance(mask, list | tuple | int | float | bool)
    ):
        raise TypeError(
            f"`mask` must be an array broadcastable to the weight's shape "
            f"{weight_shape}, got {type(mask).__name__}."
        )
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


def check_positive_float(value: object, name: str) -> float:
    """`value` as a finite float `> 0` (ints accepted, bools refused), or a
    `TypeError`/`ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"`{name}` must be a positive float, got {value!r} of type "
            f"{type(value).__name__}."
        )
    if not 0 < value < float("inf"):
        raise ValueError(f"`{name}` must be a finite float > 0, got {value!r}.")
    return float(value)


def check_bool(value: object, name: str) -> bool:
    """`value` if it is a bool, else a `TypeError` naming `name`."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r}.")
    return value


def check_wrapped_layer(layer: object, allowed: tuple[type, ...], where: str) -> None:
    """A `TypeError` unless `layer` is an instance of one of `allowed` (the classes
    `where` can wrap), naming them and what was given."""
    if isinstance(layer, allowed):
        return
    names = ", ".join(f"eqxconv.{cls.__name__}" for cls in allowed)
    hint = ""
    if type(layer).__module__.startswith("equinox"):
        hint = (
            " An `equinox.nn` convolution has the same weight layout: build the "
            "eqxconv layer with the same arguments and copy its weight and bias in "
            "with `eqx.tree_at`."
        )
    raise TypeError(
        f"{where} wraps one of {names} (or their fixed-dimension subclasses), got "
        f"{type(layer).__module__}.{type(layer).__qualname__}.{hint}"
    )
