"""How patches are extracted and folded: the lowering behind `extract_patches`,
`fold_patches` and `conv_local`.

`lax.conv_general_dilated_patches` extracts patches with a convolution against an
identity kernel, whose backward pass is a second, very slow convolution. Here patches
are plain data movement, so that both directions are cheap:

- non-overlapping windows (`stride == kernel_size`, no dilation: ViT patchify) are a
  reshape and a transpose, and so is their fold;
- otherwise windows are slices of the padded input, taken one spatial dimension at a
  time (`'separable'`: the `kernel_size[i]` windows along dimension `i`, then one
  transpose to the patch order), or one strided slice per kernel offset
  (`'slices'`). The separable windows are built without concatenations, which XLA
  CPU compiles slowly: along a major axis from a broadcast, reshapes, a pad and a
  slice (`_shifted_windows`), along the minor axis as a sum of zero-padded slices
  (`_stack`); along a strided dimension from the axis split into `(blocks, stride)`
  phases, so that every window is contiguous and its transpose is plain padding
  rather than interior padding.

The fold is the linear transpose of the extraction (`jax.linear_transpose`), so the
two are exact adjoints by construction. Autodiff of one is the other, so forward and
backward both stay slices, pads, reshapes and adds, which XLA fuses into a few
loops.

`conv_local` contracts the patches with its per-position weight in
[`conv_local_padded`][], whose custom JVP keeps the input gradient from copying the
weight and the weight gradient to one slice of patches at a time.

Everything here works on one unbatched, channels-first array whose padding has already
been applied (extraction) or is cropped by the caller (fold).
"""

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, TypeAlias

import jax
import jax.lax as lax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array

from ._padding import is_non_overlapping


Strategy: TypeAlias = Literal["auto", "reshape", "slices", "separable"]
"""`'reshape'` (non-overlapping windows only), `'slices'` (one strided slice per kernel
offset), `'separable'` (`kernel_size[i]` strided slices along each dimension `i` in
turn)."""


def choose_strategy(
    kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> Strategy:
    """The lowering `'auto'` picks: `'reshape'` for non-overlapping windows, else
    `'separable'`.

    Measured on 2 shared CPU cores (batch 8): against one slice per kernel offset
    (`'slices'`), slicing dimension by dimension compiles 1.2-2.4x faster (it needs
    `sum(kernel_size)` slices instead of `prod(kernel_size)`) and ran about as fast,
    within the machine's noise, alone and inside `conv_local`
    (`benchmarks/patches.py` times both).
    """
    if is_non_overlapping(kernel_size, stride, dilation):
        return "reshape"
    return "separable"


def _check_strategy(
    strategy: Strategy,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> Strategy:
    if strategy == "auto":
        return choose_strategy(kernel_size, stride, dilation)
    if strategy == "reshape" and not is_non_overlapping(kernel_size, stride, dilation):
        raise ValueError(
            "the 'reshape' lowering needs non-overlapping windows (stride == "
            f"kernel_size, dilation 1), got kernel_size={tuple(kernel_size)}, "
            f"stride={tuple(stride)}, dilation={tuple(dilation)}."
        )
    return strategy


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
    XLA compiles a concatenation of `k` slices several times slower (about 75 ms per
    stacked axis on 2 CPU cores, more than the rest of a patch extraction), and this
    runs as fast, except along the minor axis, where the row arithmetic
    de-vectorises the copy (3-5x slower there, measured).
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
    where they are `k` stacked slices ([`_stack`][]). With a stride the axis is first
    split into `(blocks, s)`, so that every window is a contiguous slice of one phase
    (offset `j * d = q * s + r` is blocks `q : q + o` of phase `r`), and with no
    dilation one window of the blocks serves `s` offsets at once (those windows are
    shifted or stacked by the same rule, stacked when only the phases follow the
    blocks). Strided slices would transpose (in the backward pass) to interior
    padding; these are contiguous, which runs 2-3x faster (k=3-4, s=2, 2 CPU cores).
    """
    if s == 1:
        if axis < x.ndim - 1:
            return _shifted_windows(x, axis, k, d, o)
        return _stack([_window_slice(x, axis, j, o, 1, d) for j in range(k)], axis)
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
            windows = _stack(
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
    return _stack(windows, axis)


def _stack(arrays: list[Array], axis: int) -> Array:
    """`jnp.stack(arrays, axis)` as a sum of zero-padded copies.

    XLA CPU fuses the pads and adds into one loop that runs as fast as a concatenation
    but compiles in about half the time (129 vs 203 ms for a 3x3 extraction and its
    gradient); the transpose is slices and adds either way.
    """
    zero = _zero(arrays[0])
    total = None
    for index, array in enumerate(arrays):
        array = jnp.expand_dims(array, axis)
        config = _axis_pad(array.ndim, axis, (index, len(arrays) - 1 - index, 0))
        term = lax.pad(array, zero, config)
        total = term if total is None else total + term
    assert total is not None
    return total


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
    strategy: Strategy = "auto",
    minor_first: bool = False,
) -> Array:
    """Patches `(C * prod(kernel_size), *out_shape)` of an already padded
    `(C, *spatial)` array, channel-major then kernel offsets in row-major order.

    `minor_first` takes the separable windows from the last spatial dimension to the
    first instead of first to last (same result). Alone, first to last runs faster
    (3x3 patches fwd+bwd 3.7 vs 4.9 ms at 16 channels, 64x64, batch 8). Inside
    `conv_local`, whose input gradient fuses a sum over output channels into the
    fold, minor first keeps that fusion small: it compiles 1.2-1.5x faster and peaks
    lower (27.1 vs 28.2 MiB at 16->16, 3x3, 32x32, batch 8), so `conv_local` uses it.
    """
    n = len(kernel_size)
    channels = x.shape[0]
    size = channels * math.prod(kernel_size)
    strategy = _check_strategy(strategy, kernel_size, stride, dilation)
    if strategy == "reshape":
        # Drop the tail no window covers; (C, O1, k1, ..., On, kn) -> (C, k.., O..).
        x = lax.slice(
            x,
            (0,) * (n + 1),
            (channels, *(o * k for o, k in zip(out_shape, kernel_size))),
        )
        x = x.reshape((channels, *itertools.chain(*zip(out_shape, kernel_size))))
        perm = (0, *range(2, 2 * n + 1, 2), *range(1, 2 * n, 2))
        return x.transpose(perm).reshape((size, *out_shape))
    if strategy == "slices":
        parts = []
        for offsets in _offsets(kernel_size):
            start = (0, *(o * d for o, d in zip(offsets, dilation)))
            limit = (
                channels,
                *(
                    s + (o - 1) * st + 1
                    for s, o, st in zip(start[1:], out_shape, stride)
                ),
            )
            parts.append(lax.slice(x, start, limit, (1, *stride)))
        return jnp.stack(parts, axis=1).reshape((size, *out_shape))
    # Separable: dimension i's axis becomes (k_i, O_i), giving (C, k1, O1, ..., kn, On).
    if minor_first:
        for i in reversed(range(n)):
            x = _windows(x, 1 + i, kernel_size[i], stride[i], dilation[i], out_shape[i])
    else:
        for i, (k, s, d, o) in enumerate(zip(kernel_size, stride, dilation, out_shape)):
            x = _windows(x, 1 + 2 * i, k, s, d, o)
    perm = (0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2))
    return x.transpose(perm).reshape((size, *out_shape))


def fold_padded(
    patches: Array,
    padded_shape: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    strategy: Strategy = "auto",
) -> Array:
    """The adjoint of [`extract_padded`][]: `(C * K, *out)` patches summed back into a
    `(C, *padded_shape)` array.

    Computed as the linear transpose of the extraction itself, so the two are exact
    adjoints by construction, and the fold's own gradient is the (fast) extraction.
    Against a hand-written sum of interior-padded copies this ran 2.6x faster forward
    and 6.8x faster forward+backward, and compiled 2x faster (3x3 fold, 16 channels,
    64x64, batch 8, 2 CPU cores).
    """
    channels = patches.shape[0] // math.prod(kernel_size)
    out_shape = tuple(patches.shape[1:])
    padded = jax.ShapeDtypeStruct((channels, *padded_shape), patches.dtype)

    def extract(xp: Array) -> Array:
        return extract_padded(xp, kernel_size, stride, dilation, out_shape, strategy)

    (folded,) = jax.linear_transpose(extract, padded)(patches)
    return folded


# Above this many output channels per group the patch tangent is one contraction
# rather than an unrolled sum (compile time grows with the unrolled terms).
_MAX_UNROLLED_CHANNELS = 32


def _contract(
    weight: Array, patches: Array, groups: int, precision: Any, pet: Any
) -> Array:
    """`out[o, l] = sum_j weight[o, j, l] * patches[group(o) * J + j, l]`, one
    contraction with the positions `l` as a batch dimension."""
    out_channels, per_group = weight.shape[:2]
    w = weight.reshape((groups, out_channels // groups, per_group, -1))
    p = patches.reshape((groups, per_group, -1))
    out = jnp.einsum(
        "gojl,gjl->gol", w, p, precision=precision, preferred_element_type=pet
    )
    return out.reshape((out_channels, *weight.shape[2:]))


def _contract_by_channel(weight: Array, patches: Array, groups: int, pet: Any) -> Array:
    """[`_contract`][] as one multiply-and-sum over `j` per output channel of a group.

    Transposed (the input gradient of `conv_local`), this is `sum_o g[o, l] *
    weight[o, j, l]`: one fused elementwise loop that reads the weight in its own
    layout. The contraction form would first copy the weight to a positions-major
    layout, which is as large as the weight.
    """
    out_channels, per_group = weight.shape[:2]
    dtype = pet if pet is not None else jnp.result_type(weight, patches)
    w = weight.reshape((groups, out_channels // groups, per_group, -1)).astype(dtype)
    p = patches.reshape((groups, per_group, -1)).astype(dtype)
    rows = [jnp.sum(w[:, q] * p, axis=1) for q in range(out_channels // groups)]
    return jnp.stack(rows, axis=1).reshape((out_channels, *weight.shape[2:]))


# The weight gradient is computed in this many slices of the input channels (of each
# group), so that only one slice's patches are live next to the gradient's
# positions-major buffer (see `_weight_tangent`).
_WEIGHT_GRADIENT_SLICES = 4


def _weight_tangent(
    weight_dot: Array, xp: Array, geometry: "LocalGeometry", out_shape: tuple[int, ...]
) -> Array:
    """The tangent of `conv_local` in its weight: `_contract(weight_dot, patches)`,
    summed over slices of the input channels, each with its own patches.

    Transposed, this is the weight gradient: per slice, one contraction over the batch
    with the positions as a batch dimension, which XLA CPU writes positions-major (a
    buffer as large as the weight) before moving it into the weight's layout. With the
    patches of one channel slice at a time, that buffer is the only large one alive:
    peak memory 29.7 -> 27.1 MiB at 16->16 channels, 3x3, 32x32, batch 8, and 64.1 ->
    58.7 MiB at 3->16, 5x5, 64x64 (Flax's ConvLocal: 29.2 and 62.4), at the same
    speed.
    """
    kernel_size, stride, dilation, groups, precision, pet = geometry
    per_group = xp.shape[0] // groups
    taps = math.prod(kernel_size)
    step = -(-per_group // min(_WEIGHT_GRADIENT_SLICES, per_group))
    by_group = xp.reshape((groups, per_group, *xp.shape[1:]))
    total = None
    for start in range(0, per_group, step):
        stop = min(per_group, start + step)
        x_slice = by_group[:, start:stop].reshape((-1, *xp.shape[1:]))
        patches = extract_padded(
            x_slice, kernel_size, stride, dilation, out_shape, minor_first=True
        )
        w_slice = weight_dot[:, start * taps : stop * taps]
        term = _contract(w_slice, patches, groups, precision, pet)
        total = term if total is None else total + term
    assert total is not None
    return total


class LocalGeometry(NamedTuple):
    """The static arguments of [`conv_local_padded`][] (hashable, for `custom_jvp`)."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    precision: Any
    preferred_element_type: Any


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def conv_local_padded(weight: Array, xp: Array, geometry: LocalGeometry) -> Array:
    """`conv_local` of an already padded `(C, *spatial)` input `xp` with a weight
    `(O, (C // groups) * prod(kernel_size), *out)`, giving `(O, *out)`.

    The forward pass extracts the patches and contracts them with the weight, with the
    positions as a batch dimension. The derivative is a custom JVP, so that reverse
    mode, which transposes it, never copies the weight into a positions-major layout
    for the input gradient (see [`_contract_by_channel`][]) and keeps one slice of
    patches alive at a time for the weight gradient (see [`_weight_tangent`][]);
    forward mode works as usual.
    """
    kernel_size, stride, dilation, groups, precision, pet = geometry
    patches = extract_padded(
        xp, kernel_size, stride, dilation, weight.shape[2:], minor_first=True
    )
    return _contract(weight, patches, groups, precision, pet)


def _conv_local_padded_jvp(
    geometry: LocalGeometry,
    primals: tuple[Array, Array],
    tangents: tuple[Any, Any],
) -> tuple[Array, Array]:
    weight, xp = primals
    weight_dot, xp_dot = tangents
    kernel_size, stride, dilation, groups, precision, pet = geometry
    out = conv_local_padded(weight, xp, geometry)
    out_shape = tuple(weight.shape[2:])
    terms = []
    if not isinstance(weight_dot, SymbolicZero):
        terms.append(_weight_tangent(weight_dot, xp, geometry, out_shape))
    if not isinstance(xp_dot, SymbolicZero):
        patches_dot = extract_padded(
            xp_dot, kernel_size, stride, dilation, out_shape, minor_first=True
        )
        if weight.shape[0] // groups <= _MAX_UNROLLED_CHANNELS:
            terms.append(_contract_by_channel(weight, patches_dot, groups, pet))
        else:
            terms.append(_contract(weight, patches_dot, groups, precision, pet))
    if not terms:
        return out, jnp.zeros_like(out)
    return out, sum(terms[1:], terms[0]).astype(out.dtype)


conv_local_padded.defjvp(_conv_local_padded_jvp, symbolic_zeros=True)
