"""Shape arithmetic of sliding windows, in pure Python (no arrays).

One function per question: which explicit padding a normalised padding means on an
input ([`resolve_padding`][]), what spatial shape a window sweep returns
([`output_shape`][]), and how a transposed convolution relates its input to the
forward convolution's ([`transposed_geometry`][]).
"""

import math
from collections.abc import Sequence
from typing import Literal, TypeAlias


PaddingPairs: TypeAlias = tuple[tuple[int, int], ...]
"""A `(low, high)` pair per spatial dimension."""

PaddingString: TypeAlias = Literal["VALID", "SAME", "SAME_LOWER", "CAUSAL", "CIRCULAR"]

Padding: TypeAlias = PaddingString | PaddingPairs
"""Normalised padding: an upper-case padding string, or a `(low, high)` pair per
dimension."""


SIZE_BY_STRIDE: tuple[PaddingString, ...] = ("SAME", "SAME_LOWER", "CIRCULAR")
"""The padding strings whose transposed convolution returns `in * stride -
output_padding`, for which `output_padding < stride`."""


def dilated_size(size: int, dilation: int) -> int:
    """The extent of `size` points spaced `dilation` apart."""
    return (size - 1) * dilation + 1 if size > 0 else 0


def dilated_shape(
    spatial_shape: Sequence[int], input_dilation: Sequence[int]
) -> tuple[int, ...]:
    """The spatial shape of an input with `input_dilation - 1` zeros inserted between
    neighbours (`lhs_dilation` in `lax`): what padding and windows apply to."""
    return tuple(
        dilated_size(size, r)
        for size, r in zip(spatial_shape, input_dilation, strict=True)
    )


def window_extent(out: int, kernel: int, stride: int, dilation: int) -> int:
    """The extent of (padded) input that `out` windows of a dilated kernel spaced
    `stride` apart touch."""
    return (out - 1) * stride + dilated_size(kernel, dilation)


def is_non_overlapping(
    kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> bool:
    """Whether windows tile the input without overlaps or gaps (`stride ==
    kernel_size`, no dilation): patches are then a reshape."""
    return tuple(stride) == tuple(kernel_size) and all(d == 1 for d in dilation)


def resolve_padding(
    padding: Padding,
    in_spatial_shape: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> PaddingPairs:
    """Explicit `(low, high)` pairs for normalised `padding` on an input of spatial
    shape `in_spatial_shape` (the extent the kernel slides over, input dilation
    included). Pairs are returned as they are.

    `'SAME'` gives `ceil(in / stride)` outputs with the odd extra pad at the end
    (`'SAME_LOWER'`: at the start); `'CAUSAL'` pads the dilated kernel's extent minus
    one before; `'CIRCULAR'` (Flax's string, whose mode is periodic) pads that extent
    minus one around the window's centre, `((e - 1) // 2, e // 2)`, at every stride
    and input size, as Flax does.
    """
    if not isinstance(padding, str):
        return padding
    pairs = []
    for size, k, s, d in zip(
        in_spatial_shape, kernel_size, stride, dilation, strict=True
    ):
        extent = dilated_size(k, d)
        if padding == "VALID":
            pairs.append((0, 0))
        elif padding == "CAUSAL":
            pairs.append((extent - 1, 0))
        elif padding == "CIRCULAR":
            pairs.append(((extent - 1) // 2, extent // 2))
        else:
            out = math.ceil(size / s)
            total = max((out - 1) * s + extent - size, 0)
            small, large = total // 2, total - total // 2
            pairs.append((small, large) if padding == "SAME" else (large, small))
    return tuple(pairs)


def output_shape(
    in_spatial_shape: Sequence[int],
    padding: Padding,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, ...]:
    """The spatial shape of the windows of a dilated kernel sliding with `stride`
    over the input padded by `padding`.

    **Raises:**

    `ValueError` if the dilated kernel does not fit in the padded input.
    """
    pairs = resolve_padding(padding, in_spatial_shape, kernel_size, stride, dilation)
    padded = tuple(
        size + low + high
        for size, (low, high) in zip(in_spatial_shape, pairs, strict=True)
    )
    extent = dilated_shape(kernel_size, dilation)
    if any(p < e for p, e in zip(padded, extent, strict=True)):
        raise ValueError(
            f"the input's spatial shape {tuple(in_spatial_shape)} is {padded} after "
            f"padding {pairs}, smaller than the dilated kernel {extent} "
            f"(kernel_size={tuple(kernel_size)}, dilation={tuple(dilation)})."
        )
    return tuple(
        (p - e) // s + 1 for p, e, s in zip(padded, extent, stride, strict=True)
    )


def transposed_geometry(
    in_spatial_shape: Sequence[int],
    padding: Padding,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    output_padding: Sequence[int],
) -> tuple[tuple[int, ...], PaddingPairs, tuple[int, ...]]:
    """How a transposed convolution taking spatial shape `m` relates to the forward
    convolution (same kernel size, stride, padding, dilation) that maps its output
    shape `n` back onto `m`, `output_padding` choosing among the candidates:
    `n = (m - 1) * stride + dilation * (kernel - 1) + 1 - low - high + output_padding`
    for explicit `(low, high)` padding (and the strings whose pairs do not depend on
    the input), `n = m * stride - output_padding` for `'SAME'`, `'SAME_LOWER'` and
    `'CIRCULAR'` (whose forward convolution maps every such `n` to `m`: a periodic
    domain upsampled by the stride).

    **Returns:**

    `(out_spatial_shape, pairs, extra)`: `n`; the forward convolution's explicit
    padding on an input of shape `n`; and per dimension `extra = n + low + high -
    ((m - 1) * stride + extent)` (`>= 0`), how far the padded domain reaches beyond
    the last window.

    **Raises:**

    `ValueError` if the output would be empty.
    """
    out, pairs, extra = [], [], []
    for i, (m, k, s, d, a) in enumerate(
        zip(
            in_spatial_shape, kernel_size, stride, dilation, output_padding, strict=True
        )
    ):
        full = window_extent(m, k, s, d)
        if padding in SIZE_BY_STRIDE:
            n = m * s - a
            ((low, high),) = resolve_padding(padding, (n,), (k,), (s,), (d,))
        else:
            # Explicit pairs, or a string whose pairs do not depend on the input.
            if isinstance(padding, str):
                ((low, high),) = resolve_padding(padding, (1,), (k,), (s,), (d,))
            else:
                low, high = padding[i]
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
