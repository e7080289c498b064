"""Shift-and-multiply-add lowering of depthwise and small-group convolutions.

XLA's grouped convolution (`feature_group_count > 1`) is slow on CPU, forward and
backward. When every group has few input channels (`in_channels // groups` small,
depthwise being 1), the convolution is a short sum over kernel taps of shifted slices
of the (already padded) input times per-channel taps: an elementwise expression that
XLA fuses into a single loop over the output, reading the input once.

Differentiation is a `jax.custom_jvp` whose tangent is *written so that its automatic
transpose is the fast backward pass*, and stays ordinary JAX (so forward mode, `vmap`
and derivatives of any order keep working):

- the input tangent pads `dx` once per tap onto a common grid, multiplies and adds,
  then takes one (strided) slice. Its transpose pads the cotangent once (with interior
  zeros for strides) and runs a shift-and-multiply-add with the taps: the input
  gradient costs what the forward costs.
- the weight tangent splits the first output axis into `R` contiguous blocks and
  concatenates per-block shift-and-multiply-adds. Its transpose is, per tap, one fused
  elementwise pass summing the `R` blocks of `cotangent * shifted input` into an array
  `R` times smaller than the output, then a reduction of that small array. Reductions
  over a product of two large operands are what XLA's CPU backend is slowest at
  (every tap materialises a full-size temporary); folding the `R` blocks in the
  elementwise pass keeps the temporaries small and the reads streaming.

Everything works on one unbatched, padded input `(in_channels, *spatial)` with a
VALID convolution; `jax.vmap` adds the batch axis to every array above, which keeps
each loop fusion contiguous over the spatial axes.
"""

import functools
import itertools
import math
from typing import Any

import jax
import jax.lax as lax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array

from ._padding import check_choice


IMPLS = ("auto", "xla", "shift")


def check_impl(impl: object) -> str:
    """`impl` lower-cased, or a `TypeError`/`ValueError` naming the argument."""
    return check_choice(impl, "impl", IMPLS)


# --- The heuristic --------------------------------------------------------------------
#
# `impl="auto"` takes the shift lowering on CPU, for floating-point convolutions with
# at most 4 input channels per group (depthwise is 1; any channel multiplier, stride,
# dilation, padding and mode, 1D/2D/3D), at most 49 products per output element
# (`(in_channels // groups) * prod(kernel_size)`: 7x7 depthwise, 3x3 with 4 channels
# per group) and no input dilation; everything else goes to `lax.conv_general_dilated`.
# Measured with benchmarks/depthwise.py on 2 CPU cores shared with other jobs (so
# every time is provisional and inflated, torch's most), batch 4 through `jax.vmap`,
# float32, medians; "xla" is eqxconv forced onto `lax.conv_general_dilated`, which
# times as raw batched lax and `equinox.nn.Conv` do:
#
#   case (2D, 64x64, 3x3, pad 1 unless said)  fwd shift / xla   fwd+bwd shift / xla
#   C=256 (lightly loaded; torch 20 / 42)     2.4 / 120 ms      29 / 334 ms
#   C=256 (heavily loaded)                    3.9 / 195 ms      77 / 863 ms
#   C=64                                      0.9 / 44 ms       8.5 / 63 ms
#   C=512                                     158 / 1076 ms     238 / 6741 ms
#   C=256 7x7 pad 3                           46 / 478 ms       352 / 4024 ms
#   C=256 stride 2                            7.8 / 80 ms       100 / 985 ms
#   C=256 dilation 2 pad 2                    12 / 248 ms       100 / 1207 ms
#   C=128 -> 256 (multiplier 2)               3.2 / 92 ms       358 / 82856 ms
#   1D C=256 L=4096 k=7                       7.9 / 896 ms      93 / 1748 ms
#   3D C=64 16x32x32 3x3x3                    32 / 7658 ms      344 / 5709 ms
#   C=256 groups=128 (2 in/group)             30 / 319 ms       82 / 39464 ms
#   C=256 groups=64 (4 in/group)              21 / 174 ms       65 / 19751 ms
#
# The shift lowering is faster on every case, forward and backward, so there is no
# size threshold. The limits are where nothing was measured: more channels per group
# (its cost grows with them, XLA's grouped convolution nears a dense one) and more
# products per output (the lowering unrolls one slice per product, so compile time
# grows with them: 1.1-1.4 s against 0.3-0.4 s for 3x3, ~3 s for 7x7, ~5-10 s for
# 3x3x3, all for the jitted forward+backward). Off CPU, XLA's own convolutions.
_MAX_IN_PER_GROUP = 4
_MAX_AUTO_PRODUCTS = 49
_MAX_BLOCKS = 16


def use_shift(
    *,
    in_channels: int,
    groups: int,
    kernel_size: tuple[int, ...],
    input_dilation: tuple[int, ...],
    dtype: Any,
) -> bool:
    """Whether `impl="auto"` takes the shift-and-multiply-add lowering."""
    if jax.default_backend() != "cpu":
        return False
    if any(d != 1 for d in input_dilation):
        return False
    if not jnp.issubdtype(dtype, jnp.floating):
        return False
    per_group = in_channels // groups
    if per_group > _MAX_IN_PER_GROUP:
        return False
    return per_group * math.prod(kernel_size) <= _MAX_AUTO_PRODUCTS


# --- The lowering ---------------------------------------------------------------------


def _taps(kernel_size: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(k) for k in kernel_size)))


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
        o + (n - 1) * s + 1 for o, n, s in zip(offset, out_shape, stride)
    )
    strides = (1,) * lead + stride
    return lax.slice(x, start, limit, strides)


def _tap_offset(tap: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(t * d for t, d in zip(tap, dilation))


class _Config:
    """The static description of one convolution: shapes, stride, dilation."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        weight_shape: tuple[int, ...],
        groups: int,
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
        acc_dtype: Any,
        out_dtype: Any,
    ):
        self.groups = groups
        self.per_group_in = in_shape[0] // groups  # m
        self.per_group_out = weight_shape[0] // groups  # k
        self.spatial = in_shape[1:]
        self.kernel_size = weight_shape[2:]
        self.stride = stride
        self.dilation = dilation
        self.n = len(self.spatial)
        self.out_spatial = tuple(
            (size - (k - 1) * d - 1) // s + 1
            for size, k, s, d in zip(self.spatial, self.kernel_size, stride, dilation)
        )
        self.taps = _taps(self.kernel_size)
        self.acc_dtype = acc_dtype
        self.out_dtype = out_dtype
        # Blocks of the first output axis folded by the weight gradient's elementwise
        # pass: a divisor of it, at most 16, with at most ~256 products in the weight
        # tangent (compile time); none for small outputs, where it cannot pay.
        first = self.out_spatial[0]
        limit = max(1, min(_MAX_BLOCKS, 256 // (len(self.taps) * self.per_group_in)))
        if math.prod(self.out_spatial) < 64:
            limit = 1
        self.blocks = max(r for r in range(1, limit + 1) if first % r == 0)

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


def _forward(cfg: _Config, x: Array, w: Array) -> Array:
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
    return cfg.ungroup(acc).astype(cfg.out_dtype)


def _input_tangent(cfg: _Config, dx: Array, w: Array) -> Array:
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
    reach = tuple((k - 1) * d for k, d in zip(cfg.kernel_size, cfg.dilation))
    shape = (cfg.groups, *(1,) * cfg.n)
    accs: list[Any] = [None] * cfg.per_group_out
    for i in range(cfg.per_group_in):
        xi = xg[:, i]
        for t, tap in enumerate(cfg.taps):
            offset = _tap_offset(tap, cfg.dilation)
            # shifted[p] = dx[p - (reach - offset)], on a grid of size spatial + reach.
            widths = ((0, 0, 0),) + tuple((r - o, o, 0) for r, o in zip(reach, offset))
            shifted = lax.pad(xi, jnp.zeros((), xi.dtype), widths)
            for j in range(cfg.per_group_out):
                term = shifted * wg[:, j, i, t].reshape(shape)
                accs[j] = term if accs[j] is None else accs[j] + term
    acc = jnp.stack(accs, axis=1)
    y = _window(acc, reach, cfg.out_spatial, cfg.stride, 2)
    return cfg.ungroup(y).astype(cfg.out_dtype)


def _identity_boundary(a: Array) -> Array:
    """`a`, through an op that XLA keeps out of the fusions on either side of it."""
    if not jnp.issubdtype(a.dtype, jnp.floating):
        return a
    info = jnp.finfo(a.dtype)
    return lax.reduce_precision(a, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _weight_tangent(cfg: _Config, x: Array, dw: Array) -> Array:
    """`_forward(x, dw)`, written so that its transpose in `dw` is cheap.

    The first output axis is cut into `cfg.blocks` contiguous blocks, computed
    separately and concatenated, with the taps broadcast once to a block. Transposed:
    per tap, one elementwise pass sums `cotangent * window` over the blocks into a
    block-sized array, and a reduction of that small array gives the tap's gradient.
    """
    xg = cfg.grouped_input(x.astype(cfg.acc_dtype))
    wg = cfg.grouped_weight(dw.astype(cfg.acc_dtype))
    r = cfg.blocks
    q = cfg.out_spatial[0] // r
    block_shape = (cfg.groups, cfg.per_group_out, q, *cfg.out_spatial[1:])
    pieces: list[Any] = [None] * r
    for i in range(cfg.per_group_in):
        xi = xg[:, i]
        for t, tap in enumerate(cfg.taps):
            offset = _tap_offset(tap, cfg.dilation)
            window = _window(xi, offset, cfg.out_spatial, cfg.stride, 1)
            blocks = [
                lax.slice_in_dim(window, j * q, (j + 1) * q, axis=1)[:, None]
                for j in range(r)
            ]
            tap_w = jnp.broadcast_to(cfg.tap_weight(wg, i, t), block_shape)
            # Under `jax.vmap` the taps are unbatched: multiplying by ones that carry
            # the batch axis broadcasts them once here, so that transposed, the batch
            # is summed once, after the block sum (not once per block).
            one = jnp.ones(block_shape, tap_w.dtype)
            batched = jnp.broadcast_to(blocks[0] != blocks[0], block_shape)
            tap_w = tap_w * lax.select(batched, one, one)
            # An identity: transposed, it keeps the block sum an elementwise pass of
            # its own, ahead of the reduction (else XLA's CPU backend hands product
            # and reduction to one library call that materialises every window).
            tap_w = _identity_boundary(tap_w)
            for j in range(r):
                term = blocks[j] * tap_w
                pieces[j] = term if pieces[j] is None else pieces[j] + term
    y = pieces[0] if r == 1 else jnp.concatenate(pieces, axis=2)
    return cfg.ungroup(y).astype(cfg.out_dtype)


@functools.cache
def _make_conv(
    in_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    groups: int,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    acc_dtype: Any,
    out_dtype: Any,
):
    cfg = _Config(
        in_shape, weight_shape, groups, stride, dilation, acc_dtype, out_dtype
    )

    @jax.custom_jvp
    def conv(x: Array, w: Array) -> Array:
        return _forward(cfg, x, w)

    def conv_jvp(primals, tangents):
        x, w = primals
        dx, dw = tangents
        y = conv(x, w)
        dy = None
        if not isinstance(dx, SymbolicZero):
            dy = _input_tangent(cfg, dx, w)
        if not isinstance(dw, SymbolicZero):
            term = _weight_tangent(cfg, x, dw)
            dy = term if dy is None else dy + term
        if dy is None:
            dy = jnp.zeros_like(y)
        return y, dy

    conv.defjvp(conv_jvp, symbolic_zeros=True)
    return conv


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
    fn = _make_conv(
        tuple(x.shape),
        tuple(weight.shape),
        groups,
        tuple(stride),
        tuple(dilation),
        acc_dtype,
        out_dtype,
    )
    return fn(x, weight)
