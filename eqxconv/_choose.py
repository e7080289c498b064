"""The one place `impl='auto'` is decided, for every op.

Each rule states what it picks and why; the measurements behind it are the tables of
`docs/benchmarks.md` (scripts in `benchmarks/`). Off CPU nothing custom has been
measured, so every op there is `lax`'s own.
"""

import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._geometry import is_non_overlapping


# The shift lowering's cost grows with the input channels per group (where XLA's
# grouped convolution nears a dense one). It unrolls one slice per product, so its
# compile time grows with the products per output. And under a loss whose cotangent
# is the output itself (`sum(y ** 2)`), XLA CPU recomputes the forward inside each
# kernel tap's weight-gradient pass, a cost quadratic in the taps: up to 25 taps
# (5x5, or 25 in 1D) the lowering still won under every loss measured, at 49 (7x7)
# it lost under `sum(y ** 2)` and compiled several times slower, and a whole
# ConvNeXt-like model gained no step time from it (`docs/benchmarks.md`).
_MAX_SHIFT_IN_PER_GROUP = 4
_MAX_SHIFT_PRODUCTS = 49
_MAX_SHIFT_TAPS = 25


def choose_conv_impl(
    *,
    in_channels: int,
    groups: int,
    kernel_size: Sequence[int],
    input_dilation: Sequence[int],
    dtype: Any,
) -> Literal["xla", "shift"]:
    """`'shift'` on CPU for floating-point grouped convolutions with few input
    channels per group (depthwise is 1; any channel multiplier, stride, dilation,
    padding, 1D/2D/3D), few products per output element and few kernel taps, without
    input dilation:
    XLA's CPU grouped convolution is slow there, forward and backward
    (`benchmarks/depthwise.py`). Otherwise `'xla'`, `lax.conv_general_dilated`: also
    for ungrouped convolutions of few channels (RGB and mono stems), where XLA's dense
    convolution is the faster, and compiles faster."""
    if jax.default_backend() != "cpu" or groups == 1:
        return "xla"
    if any(d != 1 for d in input_dilation) or not jnp.issubdtype(dtype, jnp.floating):
        return "xla"
    per_group = in_channels // groups
    if per_group > _MAX_SHIFT_IN_PER_GROUP:
        return "xla"
    taps = math.prod(kernel_size)
    if per_group * taps > _MAX_SHIFT_PRODUCTS or taps > _MAX_SHIFT_TAPS:
        return "xla"
    return "shift"


def choose_transpose_impl(
    kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> Literal["phase", "interior", "lhs_dilation"]:
    """The lowering of a zero-padded transposed convolution
    (`benchmarks/conv_transpose.py`).

    - Unstrided: a plain convolution (`'lhs_dilation'` without a dilation), whose XLA
        gradients are fine; the tap-wise derivatives of the other lowerings are slower
        to run and to compile there.
    - Strided, on CPU: the phase decomposition, which never multiplies an inserted
        zero and whose tap-wise derivatives avoid XLA CPU's slow weight-gradient
        convolution. Along a strided, dilated dimension it materialises the dilated
        kernel; where that gives a phase more taps than the kernel has (a dilation
        above the stride), interior padding instead.
    - Off CPU: `'lhs_dilation'`, as `lax.conv_transpose`.
    """
    if all(s == 1 for s in stride) or jax.default_backend() != "cpu":
        return "lhs_dilation"
    fits = all(
        -(-((k - 1) * d + 1) // s) <= k
        for k, s, d in zip(kernel_size, stride, dilation, strict=True)
        if s > 1
    )
    return "phase" if fits else "interior"


def choose_patches_impl(
    kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> Literal["reshape", "separable"]:
    """`'reshape'` for windows that tile the input, else `'separable'`: slicing one
    dimension at a time needs `sum(kernel_size)` slices where one slice per offset
    (`'slices'`) needs `prod(kernel_size)`, so it compiles faster at the same speed
    (`benchmarks/patches.py`). Patches are data movement on every backend."""
    if is_non_overlapping(kernel_size, stride, dilation):
        return "reshape"
    return "separable"
