"""How patches are extracted and folded: the lowering behind `extract_patches`,
`fold_patches` and (through [`extract_padded`][]) `conv_local`.

`lax.conv_general_dilated_patches` extracts patches with a convolution against an
identity kernel, whose backward pass is a second, very slow convolution. Here patches
are plain data movement, so that both directions are cheap:

- non-overlapping windows (`stride == kernel_size`, no dilation: ViT patchify) are a
  reshape and a transpose, and so is their fold;
- otherwise windows are slices of the padded input, taken one spatial dimension at a
  time (`'separable'`: the `kernel_size[i]` windows along dimension `i`, then one
  transpose to the patch order), or one strided slice per kernel offset
  (`'slices'`). The separable windows along a major axis come from a broadcast,
  reshapes, a pad and a slice (`_shifted_windows`: no concatenation, which XLA CPU
  compiles slowly there), along the minor axis from one concatenation of slices;
  along a strided dimension from the axis split into `(blocks, stride)` phases, so
  that every window is contiguous and its transpose is plain padding rather than
  interior padding.

The fold is the linear transpose of the extraction (`jax.linear_transpose`), so the
two are exact adjoints by construction. Autodiff of one is the other, so forward and
backward both stay slices, pads, reshapes and adds, which XLA fuses into a few
loops.

Everything here works on one unbatched, channels-first array whose padding has already
been applied (extraction) or is cropped by the caller (fold).
"""

import itertools
import math
from collections.abc import Sequence
from typing import Literal, TypeAlias

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array

from ._partition import reshape


PatchesLowering: TypeAlias = Literal["reshape", "slices", "separable", "conv"]
"""`'reshape'` (non-overlapping windows only), `'slices'` (one strided slice per kernel
offset), `'separable'` (`kernel_size[i]` strided slices along each dimension `i` in
turn), `'conv'` (a convolution with one-hot kernels, for floating-point inputs only
where they may be partitioned over devices: XLA's SPMD partitioner splits a
convolution along a sharded spatial axis with one halo exchange, where it splits
each slice with one; a non-finite input entry, multiplied by the kernel's zeros,
spreads NaN to its neighbours' windows)."""


def _offsets(kernel_size: Sequence[int]) -> list[tuple[int, ...]]:
    """Kernel offsets in row-major order (the order of the flattened patch axis)."""
    return list(itertools.product(*(range(k) for k in kernel_size)))


def _window_slice(
    x: Array, axis: int, offset: int, out: int, stride: int, dilation: int
) -> Array:
    """`x[..., offset * dilation :: stride][:out]` along `axis`."""
    start = offset * dilation
    return lax.slice_in_dim(x, start, start + (out - 1) * stride + 1, stride, axis)


def _shifted_windows(x: Array, axis: int, k: int, d: int, o: int) -> Array:
    """`(..., k, o, ...)` with `[..., j, t, ...] = x[..., t + j * d, ...]` along `axis`,
    built from a broadcast, two reshapes, a pad and a slice: no concatenation.

    `k` copies of the axis laid end to end (length `k * P`), padded to `k * (P + d)`
    and read as `k` rows of `P + d`, put element `t + j * d` of the axis at `[j, t]`.
    XLA CPU compiles a concatenation of `k` slices several times slower, and this
    runs as fast, except along the minor axis, where the row arithmetic
    de-vectorises the copy (so [`_windows`][] stacks there instead).
    """
    size = x.shape[axis]
    before, after = x.shape[:axis], x.shape[axis + 1 :]
    y = jnp.broadcast_to(jnp.expand_dims(x, axis), (*before, k, size, *after))
    y = y.reshape((*before, k * size, *after))
    y = lax.pad(y, _zero(x), _axis_pad(y.ndim, axis, (0, k * d, 0)))
    y = y.reshape((*before, k, size + d, *after))
    return lax.slice_in_dim(y, 0, o, axis=axis + 1)


def _windows(x: Array, axis: int, k: int, s: int, d: int, o: int) -> Array:
    """The `k` windows along `axis` (`x[..., j * d :: s][:o]` for each offset `j`),
    stacked into a new axis before it: `(..., k, o, ...)`.

    Unstrided windows come from [`_shifted_windows`][], except along the minor axis,
    where they are `k` stacked slices: one concatenation. (As a sum of zero-padded
    slices, which XLA fuses into one loop while the patches have one consumer, the
    terms are materialised one by one where they have two, as in the gradient of a
    loss that needs the forward: the forward product and the weight gradient's. The
    concatenation ran faster there, and where the patches feed a product (the
    patches lowering, `conv_local`) compiled no slower; a bare extraction, as a
    forward or as a fold's gradient, compiles slower in 1D and 2D.)
    With a stride the axis is first split into `(blocks, s)`, so that every window
    is a contiguous slice of one phase (offset `j * d = q * s + r` is blocks
    `q : q + o` of phase `r`), and with no dilation one window of the blocks serves
    `s` offsets at once (those windows are shifted or stacked by the same rule,
    stacked when only the phases follow the blocks). Strided slices would transpose
    (in the backward pass) to interior padding; these are contiguous, which runs
    faster.
    """
    if s == 1:
        if axis < x.ndim - 1:
            return _shifted_windows(x, axis, k, d, o)
        return jnp.stack([_window_slice(x, axis, j, o, 1, d) for j in range(k)], axis)
    phases = [divmod(j * d, s) for j in range(k)]
    blocks = max(-(-x.shape[axis] // s), max(q for q, _ in phases) + o)
    x = lax.pad(
        x, _zero(x), _axis_pad(x.ndim, axis, (0, blocks * s - x.shape[axis], 0))
    )
    x = x.reshape((*x.shape[:axis], blocks, s, *x.shape[axis + 1 :]))
    if d == 1:
        # Offsets q * s + r for r < s: window q of the blocks holds all s phases.
        n_windows = -(-k // s)
        if axis + 2 < x.ndim:
            windows = _shifted_windows(x, axis, n_windows, 1, o)
        else:
            windows = jnp.stack(
                [lax.slice_in_dim(x, q, q + o, axis=axis) for q in range(n_windows)],
                axis,
            )
        x = jnp.moveaxis(windows, axis + 2, axis + 1)
        x = x.reshape((*x.shape[:axis], n_windows * s, *x.shape[axis + 2 :]))
        return lax.slice_in_dim(x, 0, k, axis=axis)
    windows = [
        lax.slice_in_dim(lax.index_in_dim(x, r, axis + 1, False), q, q + o, axis=axis)
        for q, r in phases
    ]
    return jnp.stack(windows, axis)


def _zero(x: Array) -> Array:
    return jnp.zeros((), x.dtype)


def _axis_pad(
    ndim: int, axis: int, config: tuple[int, int, int]
) -> list[tuple[int, int, int]]:
    """A `lax.pad` config that pads only `axis`."""
    return [(0, 0, 0)] * axis + [config] + [(0, 0, 0)] * (ndim - axis - 1)


def extract_padded(
    x: Array,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    out_shape: Sequence[int],
    impl: PatchesLowering = "separable",
    minor_first: bool = False,
    zero_padding: Sequence[tuple[int, int]] | None = None,
) -> Array:
    """Patches `(C * prod(kernel_size), *out_shape)` of an already padded
    `(C, *spatial)` array, channel-major then kernel offsets in row-major order.

    `zero_padding`, if given, pads `x` with zeros first: the `'conv'` lowering as
    its convolution's own padding, which XLA's partitioner splits with the
    convolution's halo exchange, where a separate `lax.pad` of a split axis costs
    exchanges of its own.

    `minor_first` takes the separable windows from the last spatial dimension to the
    first instead of first to last (same result). Alone, first to last runs faster;
    inside `conv_local`, whose input gradient fuses a sum over output channels into
    the fold, minor first keeps that fusion small, so it compiles faster and peaks
    lower.
    """
    n = len(kernel_size)
    channels = x.shape[0]
    size = channels * math.prod(kernel_size)
    by_conv = impl == "conv" and jnp.issubdtype(x.dtype, jnp.inexact)
    if zero_padding is not None and not by_conv:
        x = lax.pad(x, _zero(x), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in zero_padding])
    if by_conv:
        # One single-channel convolution per channel (the channels as its batch),
        # with a one-hot kernel per offset: a dense convolution, whose gradient is
        # dense too, where `lax.conv_general_dilated_patches`'s grouped one has a
        # gradient XLA's partitioner gathers. Exact copies of finite values.
        taps = math.prod(kernel_size)
        one_hot = jnp.eye(taps, dtype=x.dtype).reshape((taps, 1, *kernel_size))
        windows = lax.conv_general_dilated(
            x[:, None],
            one_hot,
            window_strides=tuple(stride),
            padding="VALID" if zero_padding is None else tuple(zero_padding),
            rhs_dilation=tuple(dilation),
            precision=lax.Precision.HIGHEST,
        )
        return reshape(windows, (size, *out_shape))
    if impl == "conv":
        impl = "slices"
    if impl == "reshape":
        # Drop the tail no window covers; (C, O1, k1, ..., On, kn) -> (C, k.., O..).
        x = lax.slice(
            x,
            (0,) * (n + 1),
            (channels, *(o * k for o, k in zip(out_shape, kernel_size, strict=True))),
        )
        x = reshape(
            x, (channels, *itertools.chain(*zip(out_shape, kernel_size, strict=True)))
        )
        perm = (0, *range(2, 2 * n + 1, 2), *range(1, 2 * n, 2))
        return reshape(x.transpose(perm), (size, *out_shape))
    if impl == "slices":
        parts = []
        for offsets in _offsets(kernel_size):
            start = (0, *(o * d for o, d in zip(offsets, dilation, strict=True)))
            limit = (
                channels,
                *(
                    s + (o - 1) * st + 1
                    for s, o, st in zip(start[1:], out_shape, stride, strict=True)
                ),
            )
            parts.append(lax.slice(x, start, limit, (1, *stride)))
        return reshape(jnp.stack(parts, axis=1), (size, *out_shape))
    # Separable: dimension i's axis becomes (k_i, O_i), giving (C, k1, O1, ..., kn, On).
    if minor_first:
        for i in reversed(range(n)):
            x = _windows(x, 1 + i, kernel_size[i], stride[i], dilation[i], out_shape[i])
    else:
        for i, (k, s, d, o) in enumerate(
            zip(kernel_size, stride, dilation, out_shape, strict=True)
        ):
            x = _windows(x, 1 + 2 * i, k, s, d, o)
    perm = (0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2))
    return reshape(x.transpose(perm), (size, *out_shape))


def fold_padded(
    patches: Array,
    padded_shape: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    impl: PatchesLowering = "separable",
) -> Array:
    """The adjoint of [`extract_padded`][]: `(C * K, *out)` patches summed back into a
    `(C, *padded_shape)` array.

    Computed as the linear transpose of the extraction itself, so the two are exact
    adjoints by construction, and the fold's own gradient is the (fast) extraction;
    it also ran and compiled faster than a hand-written sum of interior-padded
    copies.
    """
    channels = patches.shape[0] // math.prod(kernel_size)
    out_shape = tuple(patches.shape[1:])
    padded = jax.ShapeDtypeStruct((channels, *padded_shape), patches.dtype)

    def extract(xp: Array) -> Array:
        return extract_padded(xp, kernel_size, stride, dilation, out_shape, impl)

    (folded,) = jax.linear_transpose(extract, padded)(patches)
    return folded
