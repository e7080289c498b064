"""Shift-and-multiply-add lowering of depthwise and small-group convolutions.

XLA's grouped convolution (`feature_group_count > 1`) is slow on CPU, forward and
backward. When every group has few input channels (`in_channels // groups` small,
depthwise being 1), the convolution is a short sum over kernel taps of shifted slices
of the (already padded) input times per-channel taps: an elementwise expression that
XLA fuses into a single loop over the output, reading the input once.

Differentiation is a custom JVP (`_bilinear`) whose tangent is *written so that its
automatic transpose is the fast backward pass*, and stays ordinary JAX (so forward
mode, `vmap` and derivatives of any order keep working):

- the input tangent pads `dx` once per tap onto a common grid, multiplies and adds,
  then takes one (strided) slice. Its transpose pads the cotangent once (with interior
  zeros for strides) and runs a shift-and-multiply-add with the taps: the input
  gradient costs what the forward costs.
- the weight tangent splits the first output axis into `R` contiguous blocks and
  concatenates per-block multiply-adds of the windows of every (input channel, tap)
  product, taken all at once by one gather (once per output channel of a group).
  Its transpose is one fused elementwise
  pass over every product, summing the `R` blocks of `cotangent * window` into an
  array `R` times smaller than the output per product, then one reduction of that
  array. Reductions over a product of two large operands are what XLA's CPU backend
  is slowest at (every product materialises a full-size temporary); folding the `R`
  blocks in the elementwise pass keeps the temporaries small and the reads
  streaming. One gather rather than one slice per product puts every product in one
  loop and one reduction, instead of a loop and a reduction each, which XLA compiles
  several times faster.
- the forward's output and the cotangent reaching the weight gradient are each
  materialised once (`_unfused`, `_unfused_cotangent`): both are cheap elementwise
  sums over taps, which XLA's CPU fusion would otherwise recompute inside the weight
  gradient's pass over the products whenever the loss feeds the output back into
  the backward pass (`sum(y**2)`, an MSE after a ReLU).

The whole convolution is one inner `jax.jit`: identical layers of a model (a
MobileNet's repeated blocks) are then traced and differentiated once.

Everything works on one unbatched, padded input `(in_channels, *spatial)` with a
VALID convolution; `jax.vmap` adds the batch axis to every array above, which keeps
each loop fusion contiguous over the spatial axes.
"""

import dataclasses
import functools
import itertools
import math
from typing import Any

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._bilinear import bilinear


def _window(
    x: Array,
    offset: tuple[int, ...],
    out_shape: tuple[int, ...],
    stride: tuple[int, ...],
    lead: int,
) -> Array:
    """`x[..., offset + stride * arange(out_shape)]` over the trailing spatial axes;
    `lead` leading axes are kept whole."""
    start = (0,) * lead + offset
    limit = x.shape[:lead] + tuple(
        o + (n - 1) * s + 1 for o, n, s in zip(offset, out_shape, stride, strict=True)
    )
    strides = (1,) * lead + stride
    return lax.slice(x, start, limit, strides)


def _tap_offset(tap: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(t * d for t, d in zip(tap, dilation, strict=True))


# At most this many blocks of the first output axis are folded by the weight
# gradient's elementwise pass (see `_weight_tangent`), and at most this many
# products (blocks x taps x input channels per group) written in the weight tangent.
# XLA's compile time grows with the products, while beyond a few blocks the step
# gains little: the trade is measured in docs/benchmarks.md (Whole models).
_MAX_BLOCKS = 4
_MAX_WEIGHT_TANGENT_PRODUCTS = 256


@dataclasses.dataclass(frozen=True)
class ShiftConfig:
    """The static description of one shift convolution (hashable: the
    non-differentiable argument of its custom JVP)."""

    in_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    groups: int
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    acc_dtype: Any
    out_dtype: Any

    @property
    def per_group_in(self) -> int:
        return self.in_shape[0] // self.groups

    @property
    def per_group_out(self) -> int:
        return self.weight_shape[0] // self.groups

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.in_shape[1:]

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.weight_shape[2:]

    @property
    def n(self) -> int:
        return len(self.spatial)

    @functools.cached_property
    def out_spatial(self) -> tuple[int, ...]:
        return tuple(
            (size - (k - 1) * d - 1) // s + 1
            for size, k, s, d in zip(
                self.spatial, self.kernel_size, self.stride, self.dilation, strict=True
            )
        )

    @functools.cached_property
    def taps(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*(range(k) for k in self.kernel_size)))

    @functools.cached_property
    def blocks(self) -> int:
        """Blocks of the first output axis folded by the weight gradient's
        elementwise pass: a divisor of it, at most `_MAX_BLOCKS`, with at most
        `_MAX_WEIGHT_TANGENT_PRODUCTS` products in the weight tangent (compile time);
        none for small outputs, where it cannot pay."""
        first = self.out_spatial[0]
        products = len(self.taps) * self.per_group_in
        limit = max(1, min(_MAX_BLOCKS, _MAX_WEIGHT_TANGENT_PRODUCTS // products))
        if math.prod(self.out_spatial) < 64:
            limit = 1
        return max(r for r in range(1, limit + 1) if first % r == 0)

    def grouped_input(self, x: Array) -> Array:
        return x.reshape(self.groups, self.per_group_in, *self.spatial)

    def grouped_weight(self, w: Array) -> Array:
        """`(G, k, m, taps)`."""
        return w.reshape(
            self.groups, self.per_group_out, self.per_group_in, len(self.taps)
        )

    def tap_weight(self, wg: Array, i: int, t: int) -> Array:
        """The taps of input channel `i`, tap `t`: `(G, k, 1, ..., 1)`."""
        return wg[:, :, i, t].reshape(self.groups, self.per_group_out, *(1,) * self.n)

    def ungroup(self, y: Array) -> Array:
        return y.reshape(self.groups * self.per_group_out, *y.shape[2:])


def _forward(cfg: ShiftConfig, x: Array, w: Array) -> Array:
    """Shift-and-multiply-add: `y[g, j] = sum_{i, t} w[g, j, i, t] * win_t(x[g, i])`."""
    xg = cfg.grouped_input(x.astype(cfg.acc_dtype))
    wg = cfg.grouped_weight(w.astype(cfg.acc_dtype))
    acc = None
    for i in range(cfg.per_group_in):
        xi = xg[:, i]
        for t, tap in enumerate(cfg.taps):
            window = _window(
                xi, _tap_offset(tap, cfg.dilation), cfg.out_spatial, cfg.stride, 1
            )
            term = window[:, None] * cfg.tap_weight(wg, i, t)
            acc = term if acc is None else acc + term
    assert acc is not None
    return _unfused(cfg.ungroup(acc).astype(cfg.out_dtype))


def _input_tangent(cfg: ShiftConfig, dx: Array, w: Array) -> Array:
    """`_forward(dx, w)`, written so that its transpose in `dx` is cheap.

    Every tap's contribution is placed on one common full-resolution grid by padding
    `dx` (offset by the tap), the taps are summed there, and one strided slice takes
    the output. Transposed: the cotangent is padded once onto the grid (interior zeros
    for the stride) and every tap is a shifted slice of it times the tap weight. The
    outputs of a group (channel multiplier) are stacked, not broadcast, so that
    transposed they are added elementwise rather than reduced.
    """
    xg = cfg.grouped_input(dx.astype(cfg.acc_dtype))
    wg = cfg.grouped_weight(w.astype(cfg.acc_dtype))
    reach = tuple(
        (k - 1) * d for k, d in zip(cfg.kernel_size, cfg.dilation, strict=True)
    )
    shape = (cfg.groups, *(1,) * cfg.n)
    accs: list[Any] = [None] * cfg.per_group_out
    for i in range(cfg.per_group_in):
        xi = xg[:, i]
        for t, tap in enumerate(cfg.taps):
            offset = _tap_offset(tap, cfg.dilation)
            # shifted[p] = dx[p - (reach - offset)], on a grid of size spatial + reach.
            widths = ((0, 0, 0),) + tuple(
                (r - o, o, 0) for r, o in zip(reach, offset, strict=True)
            )
            shifted = lax.pad(xi, jnp.zeros((), xi.dtype), widths)
            for j in range(cfg.per_group_out):
                term = shifted * wg[:, j, i, t].reshape(shape)
                accs[j] = term if accs[j] is None else accs[j] + term
    acc = jnp.stack(accs, axis=1)
    y = _window(acc, reach, cfg.out_spatial, cfg.stride, 2)
    return cfg.ungroup(y).astype(cfg.out_dtype)


def _unfused(a: Array) -> Array:
    """`a`, materialised: never recomputed inside a fusion that reads it.

    XLA's CPU fusion pass duplicates a cheap producer (adds, multiplies, slices) into
    every consumer, even one that reads each element many times, and keeps only
    "expensive" producers such as a gather out of such consumers. The shift forward
    is all cheap ops, so when the loss feeds the output back into the backward pass
    (`sum(y**2)`, an MSE after a ReLU) XLA recomputes every tap of the forward inside
    the weight gradient's pass over the products. An identity gather makes the
    output one materialised array instead.
    """
    return jnp.take(a, jnp.arange(a.shape[0]), axis=0, mode="clip")


def _unfused_cotangent(a: Array) -> Array:
    """`a` through an identity scatter-add, whose transpose is `_unfused`: the
    cotangent reaching the weight gradient is materialised once rather than recomputed
    inside its pass over the products (the cotangent of a preceding shift layer is a
    sum over taps, as cheap to duplicate as the forward)."""
    index = jnp.arange(a.shape[0])
    return (
        jnp.zeros_like(a)
        .at[index]
        .add(a, indices_are_sorted=True, unique_indices=True, mode="promise_in_bounds")
    )


def _identity_boundary(a: Array) -> Array:
    """`a`, through an op that XLA keeps out of the fusions on either side of it."""
    if not jnp.issubdtype(a.dtype, jnp.floating):
        return a
    info = jnp.finfo(a.dtype)
    return lax.reduce_precision(a, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _windows(cfg: ShiftConfig, xg: Array) -> Array:
    """`(G, k, P, *out_spatial)`: the window of `xg` (grouped, `(G, m, *spatial)`)
    read by each of the `P = m * taps` products, input channel-major, by one gather
    (a dynamic slice mapped over the products' start indices), once for each of the
    `k` output channels of a group.

    Reading a window once per output channel (rather than broadcasting one read)
    keeps each output channel's pass over the products a gather of its own: a
    broadcast gather read by every output channel is materialised by XLA's CPU
    fusion, a per-channel one is fused into the pass that reads it."""
    starts = np.array(
        [
            (0, i, *_tap_offset(tap, cfg.dilation))
            for _ in range(cfg.per_group_out)
            for i in range(cfg.per_group_in)
            for tap in cfg.taps
        ],
        np.int32,
    )
    extent = tuple(
        (n - 1) * s + 1 for n, s in zip(cfg.out_spatial, cfg.stride, strict=True)
    )
    sizes = (cfg.groups, 1, *extent)

    def window(start: Array) -> Array:
        return lax.dynamic_slice(xg, tuple(start), sizes)

    windows = jax.vmap(window, out_axes=2)(jnp.asarray(starts))
    windows = windows.reshape(cfg.groups, cfg.per_group_out, -1, *extent)
    if all(s == 1 for s in cfg.stride):
        return windows
    return lax.slice(
        windows, (0,) * windows.ndim, windows.shape, (1, 1, 1, *cfg.stride)
    )


def _weight_tangent(cfg: ShiftConfig, x: Array, dw: Array) -> Array:
    """`_forward(x, dw)`, written so that its transpose in `dw` is cheap.

    The first output axis is cut into `cfg.blocks` contiguous blocks, each the sum
    over the products of the block's windows times the products' taps broadcast to
    a block; the blocks are concatenated. Transposed: one elementwise pass sums
    `cotangent * window` over the blocks into a block-sized array per product, and
    one reduction of that array gives every tap's gradient.
    """
    xg = cfg.grouped_input(x.astype(cfg.acc_dtype))
    r = cfg.blocks
    q = cfg.out_spatial[0] // r
    products = cfg.per_group_in * len(cfg.taps)
    shape = (cfg.groups, cfg.per_group_out, products, q, *cfg.out_spatial[1:])
    taps = dw.astype(cfg.acc_dtype).reshape(*shape[:3], *(1,) * cfg.n)
    taps = jnp.broadcast_to(taps, shape)
    # Under `jax.vmap` the taps are unbatched: multiplying by ones that carry the
    # batch axis broadcasts them once here, so that transposed, the batch is summed
    # once, after the block sum (not once per block).
    one = jnp.ones(shape, taps.dtype)
    corner = lax.slice(xg, (0,) * xg.ndim, (1,) * xg.ndim)[:, :, None]
    taps = taps * lax.select(jnp.broadcast_to(corner != corner, shape), one, one)
    # An identity: transposed, it keeps the block sum an elementwise pass of its
    # own, ahead of the reduction (else XLA's CPU backend hands product and
    # reduction to one library call that materialises every window).
    taps = _identity_boundary(taps)
    windows = _windows(cfg, xg)
    pieces = [
        jnp.sum(lax.slice_in_dim(windows, j * q, (j + 1) * q, axis=3) * taps, axis=2)
        for j in range(r)
    ]
    y = pieces[0] if r == 1 else jnp.concatenate(pieces, axis=2)
    return _unfused_cotangent(cfg.ungroup(y).astype(cfg.out_dtype))


# `cfg` (hashable) is static: every call with the same configuration and input types
# reuses one trace, and one linearisation and transpose of it.
_shift_conv = jax.jit(
    bilinear(_forward, _input_tangent, _weight_tangent), static_argnums=0
)


def _acc_dtype(dtype: Any) -> Any:
    """Accumulate half-precision floats in float32, as XLA's convolutions do."""
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return jnp.dtype(dtype)


def shift_conv(
    x: Array,
    weight: Array,
    *,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    preferred_element_type: Any = None,
) -> Array:
    """A VALID grouped convolution of an already padded, unbatched `(C, *spatial)`
    input, as a shift-and-multiply-add over the kernel taps.

    Equal to `lax.conv_general_dilated(x[None], weight, stride, "VALID",
    rhs_dilation=dilation, feature_group_count=groups)[0]`; `x` and `weight` have the
    same dtype. Half-precision inputs accumulate in `float32`.
    """
    dtype = jnp.dtype(x.dtype)
    out_dtype = (
        dtype if preferred_element_type is None else jnp.dtype(preferred_element_type)
    )
    acc_dtype = _acc_dtype(dtype)
    if (
        jnp.issubdtype(out_dtype, jnp.inexact)
        and jnp.finfo(out_dtype).bits > jnp.finfo(acc_dtype).bits
    ):
        acc_dtype = out_dtype
    cfg = ShiftConfig(
        tuple(x.shape),
        tuple(weight.shape),
        groups,
        tuple(stride),
        tuple(dilation),
        acc_dtype,
        out_dtype,
    )
    return _shift_conv(cfg, x, weight)
