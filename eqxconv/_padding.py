"""Argument normalisation and padding arithmetic, written once for every layer and op.

Everything here is pure Python on ints and tuples: no arrays. Layers normalise their
configuration with these functions at construction; ops resolve padding against the
input's spatial shape at trace time.
"""

import math
import operator
from collections.abc import Sequence
from typing import Literal, TypeAlias


PaddingLike: TypeAlias = str | int | Sequence[int] | Sequence[tuple[int, int]]
"""Every padding form the public API accepts."""

PaddingPairs: TypeAlias = tuple[tuple[int, int], ...]

Padding: TypeAlias = Literal["VALID", "SAME", "SAME_LOWER", "CAUSAL"] | PaddingPairs
"""Normalised padding: a padding string, or a `(low, high)` pair per dimension."""

PaddingMode: TypeAlias = Literal["ZEROS", "REFLECT", "REPLICATE", "CIRCULAR"]

PADDING_STRINGS = ("VALID", "SAME", "SAME_LOWER", "CAUSAL", "CIRCULAR")
PADDING_MODES: tuple[PaddingMode, ...] = ("ZEROS", "REFLECT", "REPLICATE", "CIRCULAR")


def _as_int(value: object, name: str) -> int:
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
    result = _as_int(value, name)
    if result < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return result


def check_choice(value: object, name: str, allowed: Sequence[str]) -> str:
    """`value` lower-cased if it is one of `allowed` (case-insensitive), else a
    `TypeError`/`ValueError` naming the argument, the value and what is allowed."""
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be a string, one of {tuple(allowed)}, got {value!r} of "
            f"type {type(value).__name__}."
        )
    lower = value.lower()
    if lower not in allowed:
        raise ValueError(
            f"`{name}` must be one of {tuple(allowed)} (case-insensitive), got "
            f"{value!r}."
        )
    return lower


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


def check_num_spatial_dims(num_spatial_dims: object) -> int:
    return check_positive_int(num_spatial_dims, "num_spatial_dims")


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
    n = check_num_spatial_dims(num_spatial_dims)
    in_channels = check_positive_int(in_channels, "in_channels")
    out_channels = check_positive_int(out_channels, "out_channels")
    groups = check_groups(groups, in_channels, out_channels)
    kernel_size = to_tuple(kernel_size, n, "kernel_size")
    if not isinstance(use_bias, bool):
        raise TypeError(f"`use_bias` must be a bool, got {use_bias!r}.")
    return n, in_channels, out_channels, kernel_size, groups


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
        values = (_as_int(value, name),) * num_spatial_dims
    else:
        if len(value) != num_spatial_dims:
            raise ValueError(
                f"`{name}` must be an int or a sequence of {num_spatial_dims} ints "
                f"(one per spatial dimension), got {value!r} of length {len(value)}."
            )
        values = tuple(_as_int(v, name) for v in value)
    if any(v < minimum for v in values):
        allowed = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(
            f"`{name}` must be {allowed} in every dimension, got {value!r}."
        )
    return values


def normalise_padding_mode(padding_mode: object) -> PaddingMode:
    if not isinstance(padding_mode, str):
        raise TypeError(
            f"`padding_mode` must be a string, one of {PADDING_MODES}, got "
            f"{padding_mode!r}."
        )
    upper = padding_mode.upper()
    for mode in PADDING_MODES:
        if upper == mode:
            return mode
    raise ValueError(
        f"`padding_mode` must be one of {PADDING_MODES} (case-insensitive), got "
        f"{padding_mode!r}."
    )


def _padding_error(padding: object, num_spatial_dims: int) -> ValueError:
    return ValueError(
        f"`padding` must be an int, a sequence of {num_spatial_dims} ints, a sequence "
        f"of {num_spatial_dims} (low, high) pairs of non-negative ints, or one of "
        f"{PADDING_STRINGS} (case-insensitive); got {padding!r}."
    )


def _pair(entry: object, padding: object, num_spatial_dims: int) -> tuple[int, int]:
    if isinstance(entry, str) or not isinstance(entry, Sequence):
        low = high = _as_int(entry, "padding")
    elif len(entry) == 2:
        low, high = (_as_int(e, "padding") for e in entry)
    else:
        raise _padding_error(padding, num_spatial_dims)
    if low < 0 or high < 0:
        raise _padding_error(padding, num_spatial_dims)
    return low, high


def normalise_padding(
    padding: PaddingLike, padding_mode: str, num_spatial_dims: int
) -> tuple[Padding, PaddingMode]:
    """Normalise `padding` and `padding_mode` together.

    `'CIRCULAR'` padding is shorthand for `padding='SAME', padding_mode='CIRCULAR'`, so
    the two arguments are resolved as one.

    **Returns:**

    `(padding, padding_mode)`: padding as an upper-case string among `'VALID'`,
    `'SAME'`, `'SAME_LOWER'`, `'CAUSAL'`, or a tuple of `(low, high)` pairs; the mode
    upper-case.
    """
    mode = normalise_padding_mode(padding_mode)
    if isinstance(padding, str):
        upper = padding.upper()
        if upper == "CIRCULAR":
            if mode not in ("ZEROS", "CIRCULAR"):
                raise ValueError(
                    "`padding='CIRCULAR'` means `padding='SAME', "
                    "padding_mode='CIRCULAR'` and cannot be combined with "
                    f"`padding_mode={padding_mode!r}`."
                )
            return "SAME", "CIRCULAR"
        if upper == "VALID":
            return "VALID", mode
        if upper == "SAME":
            return "SAME", mode
        if upper == "SAME_LOWER":
            return "SAME_LOWER", mode
        if upper == "CAUSAL":
            return "CAUSAL", mode
        raise _padding_error(padding, num_spatial_dims)
    if isinstance(padding, Sequence):
        if len(padding) != num_spatial_dims:
            raise _padding_error(padding, num_spatial_dims)
        pairs = tuple(_pair(entry, padding, num_spatial_dims) for entry in padding)
    else:
        pairs = (_pair(padding, padding, num_spatial_dims),) * num_spatial_dims
    return pairs, mode


def dilated_size(size: int, dilation: int) -> int:
    """The extent of `size` points spaced `dilation` apart."""
    return (size - 1) * dilation + 1 if size > 0 else 0


def resolve_padding(
    padding: Padding,
    in_spatial_shape: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> PaddingPairs:
    """Explicit `(low, high)` pairs for normalised `padding` on a given input.

    `in_spatial_shape` is the extent the kernel slides over (already input-dilated).
    """
    if not isinstance(padding, str):
        return padding
    pairs = []
    for size, k, s, d in zip(in_spatial_shape, kernel_size, stride, dilation):
        extent = dilated_size(k, d)
        if padding == "VALID":
            pairs.append((0, 0))
        elif padding == "CAUSAL":
            pairs.append((extent - 1, 0))
        else:
            out = math.ceil(size / s)
            total = max((out - 1) * s + extent - size, 0)
            small, large = total // 2, total - total // 2
            pairs.append((small, large) if padding == "SAME" else (large, small))
    return tuple(pairs)


def output_size(
    size: int, low: int, high: int, kernel: int, stride: int, dilation: int
):
    """Output length along one dimension; `<= 0` when the kernel does not fit."""
    span = size + low + high - dilated_size(kernel, dilation)
    return span // stride + 1 if span >= 0 else 0


def conv_output_shape(
    in_spatial_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
) -> tuple[int, ...]:
    """The spatial shape a convolution returns, in pure Python (no arrays).

    **Arguments:**

    - `in_spatial_shape`: the input's spatial shape `(dim_1, ..., dim_N)`.
    - `kernel_size`, `stride`, `padding`, `dilation`: as for [`eqxconv.conv`][].

    **Returns:**

    The output spatial shape, a tuple of `N` ints.

    **Raises:**

    `ValueError` if the dilated kernel does not fit in the padded input.
    """
    in_spatial_shape = tuple(_as_int(s, "in_spatial_shape") for s in in_spatial_shape)
    n = len(in_spatial_shape)
    kernel_size = to_tuple(kernel_size, n, "kernel_size")
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    norm_padding, _ = normalise_padding(padding, "ZEROS", n)
    return padded_output_shape(
        norm_padding, in_spatial_shape, kernel_size, stride, dilation
    )


def padded_output_shape(
    padding: Padding,
    in_spatial_shape: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, ...]:
    """Output shape for normalised `padding` on a given input (what every sliding-window
    layer's `out_spatial_shape` returns); `ValueError` if the kernel won't fit."""
    pairs = resolve_padding(padding, in_spatial_shape, kernel_size, stride, dilation)
    return spatial_output_shape(in_spatial_shape, pairs, kernel_size, stride, dilation)


def spatial_output_shape(
    in_spatial_shape: Sequence[int],
    pairs: PaddingPairs,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, ...]:
    """Output shape from explicit pairs; `ValueError` if the kernel won't fit."""
    out = tuple(
        output_size(size, low, high, k, s, d)
        for size, (low, high), k, s, d in zip(
            in_spatial_shape, pairs, kernel_size, stride, dilation
        )
    )
    if any(o < 1 for o in out):
        padded = tuple(
            size + lo + hi for size, (lo, hi) in zip(in_spatial_shape, pairs)
        )
        extent = tuple(dilated_size(k, d) for k, d in zip(kernel_size, dilation))
        raise ValueError(
            f"the input's spatial shape {tuple(in_spatial_shape)} is {padded} after "
            f"padding {pairs}, smaller than the dilated kernel {extent} "
            f"(kernel_size={tuple(kernel_size)}, dilation={tuple(dilation)})."
        )
    return out


def check_output_padding(
    output_padding: int | Sequence[int],
    num_spatial_dims: int,
    stride: Sequence[int],
    dilation: Sequence[int],
    padding: Padding,
) -> tuple[int, ...]:
    """Validate a transposed convolution's `output_padding` against its configuration.

    PyTorch's rule: `output_padding < max(stride, dilation)` in every dimension. With
    `'SAME'`/`'SAME_LOWER'` padding the output size is `in * stride - output_padding`,
    which is only ambiguous up to the stride, so there `output_padding < stride`.

    **Returns:**

    `output_padding` as a tuple of `num_spatial_dims` non-negative ints.
    """
    values = to_tuple(output_padding, num_spatial_dims, "output_padding", minimum=0)
    same = padding in ("SAME", "SAME_LOWER")
    for i, (a, s, d) in enumerate(zip(values, stride, dilation)):
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


def conv_transpose_geometry(
    in_spatial_shape: Sequence[int],
    padding: Padding,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    output_padding: Sequence[int],
) -> tuple[tuple[int, ...], PaddingPairs, tuple[int, ...]]:
    """The arithmetic of a transposed convolution, pure Python.

    A transposed convolution taking spatial shape `m` returns the spatial shape `n`
    that the equivalent forward convolution (same kernel size, stride, padding,
    dilation) maps back onto `m`, `output_padding` choosing among the candidates:
    `n = (m - 1) * stride + dilation * (kernel - 1) + 1 - low - high + output_padding`
    for explicit `(low, high)` padding (`'VALID'` and `'CAUSAL'` included), and
    `n = m * stride - output_padding` for `'SAME'`/`'SAME_LOWER'`.

    **Arguments:**

    - `in_spatial_shape`: the transposed convolution's input spatial shape `m`.
    - `padding`: normalised padding, as `normalise_padding` returns it.
    - `kernel_size`, `stride`, `dilation`, `output_padding`: tuples of ints.

    **Returns:**

    `(out_spatial_shape, pairs, extra)`: the output shape `n`; the forward
    convolution's explicit `(low, high)` padding on an input of shape `n`; and per
    dimension `extra = n + low + high - ((m - 1) * stride + extent)` (`>= 0`), how far
    the padded domain extends beyond the last window.

    **Raises:**

    `ValueError` if the output would be empty.
    """
    out = []
    pairs = []
    extra = []
    for i, (m, k, s, d, a) in enumerate(
        zip(in_spatial_shape, kernel_size, stride, dilation, output_padding)
    ):
        extent = dilated_size(k, d)
        full = (m - 1) * s + extent
        if not isinstance(padding, str):
            low, high = padding[i]
            n = full - low - high + a
        elif padding in ("SAME", "SAME_LOWER"):
            n = m * s - a
            ((low, high),) = resolve_padding(padding, (n,), (k,), (s,), (d,))
        else:
            ((low, high),) = resolve_padding(padding, (1,), (k,), (s,), (d,))
            n = full - low - high + a
        out.append(n)
        pairs.append((low, high))
        extra.append(n + low + high - full)
    if any(n < 1 for n in out) or any(m < 1 for m in in_spatial_shape):
        raise ValueError(
            f"a transposed convolution of the input spatial shape "
            f"{tuple(in_spatial_shape)} with kernel_size={tuple(kernel_size)}, "
            f"stride={tuple(stride)}, dilation={tuple(dilation)}, padding={padding!r} "
            f"and output_padding={tuple(output_padding)} would have the empty output "
            f"shape {tuple(out)}."
        )
    return tuple(out), tuple(pairs), tuple(extra)


def window_extent(out: int, kernel: int, stride: int, dilation: int) -> int:
    """The extent of the (padded) input that `out` windows of a dilated kernel
    spaced `stride` apart touch: `(out - 1) * stride + (kernel - 1) * dilation + 1`."""
    return (out - 1) * stride + dilated_size(kernel, dilation)


def is_non_overlapping(
    kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> bool:
    """Whether windows tile the input exactly, without overlaps or gaps
    (`stride == kernel_size` and no dilation): patches are then a reshape."""
    return tuple(stride) == tuple(kernel_size) and all(d == 1 for d in dilation)
