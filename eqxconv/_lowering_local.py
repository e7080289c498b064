"""The locally connected contraction behind `conv_local`.

Patches of the padded input (data movement, [`extract_padded`][]) are contracted with
the per-position weight, the positions a batch dimension of the contraction. The
derivative is a custom JVP, shaped for reverse mode (which transposes it), while
forward mode keeps working:

- the input tangent is one multiply-and-sum per output channel: transposed, the input
  gradient is one fused loop that reads the weight in its own layout, where the
  contraction would first copy the weight into a positions-major layout;
- the weight tangent is summed over slices of the input channels, each with its own
  patches: transposed, only one slice's patches are alive beside the positions-major
  buffer XLA CPU writes the weight gradient into.

`chunk_size` computes the output in slabs of rows in a `lax.scan`, so that the patches
and their cotangents exist one slab at a time.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array

from ._bilinear import bilinear
from ._geometry import window_extent
from ._lowering_patches import extract_padded, PatchesLowering
from ._partition import reshape


# Above this many output channels per group the input tangent is one contraction
# rather than an unrolled sum (compile time grows with the unrolled terms; the
# unrolled form stopped paying between 32 and 64).
_MAX_UNROLLED_CHANNELS = 32

# The weight gradient is computed in this many slices of the input channels (of each
# group), so that only one slice's patches are live next to the gradient's
# positions-major buffer.
_WEIGHT_GRADIENT_SLICES = 4


@dataclasses.dataclass(frozen=True)
class LocalConfig:
    """The static arguments of the locally connected contraction (hashable: the
    non-differentiable argument of its custom JVP)."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    precision: Any
    preferred_element_type: Any
    patches_impl: PatchesLowering = "separable"

    def patches(self, xp: Array, out_shape: Sequence[int]) -> Array:
        return extract_padded(
            xp,
            self.kernel_size,
            self.stride,
            self.dilation,
            out_shape,
            impl=self.patches_impl,
            minor_first=True,
        )


def _contract(cfg: LocalConfig, weight: Array, patches: Array) -> Array:
    """`out[o, l] = sum_j weight[o, j, l] * patches[group(o) * J + j, l]`, one
    contraction with the positions `l` as a batch dimension."""
    out_channels, per_group = weight.shape[:2]
    w = weight.reshape((cfg.groups, out_channels // cfg.groups, per_group, -1))
    p = reshape(patches, (cfg.groups, per_group, -1))
    out = jnp.einsum(
        "gojl,gjl->gol",
        w,
        p,
        precision=cfg.precision,
        preferred_element_type=cfg.preferred_element_type,
    )
    return reshape(out, (out_channels, *weight.shape[2:]))


def _contract_by_channel(cfg: LocalConfig, weight: Array, patches: Array) -> Array:
    """[`_contract`][] as one multiply-and-sum over `j` per output channel of a
    group: transposed, `sum_o g[o, l] * weight[o, j, l]`, one fused loop reading the
    weight where it lies."""
    out_channels, per_group = weight.shape[:2]
    dtype = cfg.preferred_element_type
    if dtype is None:
        dtype = jnp.result_type(weight, patches)
    w = weight.reshape((cfg.groups, out_channels // cfg.groups, per_group, -1))
    p = reshape(patches, (cfg.groups, per_group, -1)).astype(dtype)
    w = w.astype(dtype)
    rows = [jnp.sum(w[:, q] * p, axis=1) for q in range(out_channels // cfg.groups)]
    return reshape(jnp.stack(rows, axis=1), (out_channels, *weight.shape[2:]))


def _weight_tangent(cfg: LocalConfig, weight_dot: Array, xp: Array) -> Array:
    """[`_contract`][] of `weight_dot` with the patches, summed over slices of the
    input channels, each with its own patches."""
    out_shape = weight_dot.shape[2:]
    per_group = xp.shape[0] // cfg.groups
    taps = math.prod(cfg.kernel_size)
    # Partitioned over devices, each slice's patches would need halos of their own.
    slices = 1 if cfg.patches_impl == "conv" else _WEIGHT_GRADIENT_SLICES
    step = -(-per_group // min(slices, per_group))
    by_group = xp.reshape((cfg.groups, per_group, *xp.shape[1:]))
    total = None
    for start in range(0, per_group, step):
        stop = min(per_group, start + step)
        x_slice = by_group[:, start:stop].reshape((-1, *xp.shape[1:]))
        w_slice = weight_dot[:, start * taps : stop * taps]
        term = _contract(cfg, w_slice, cfg.patches(x_slice, out_shape))
        total = term if total is None else total + term
    assert total is not None
    return total


def _local_forward(cfg: LocalConfig, weight: Array, xp: Array) -> Array:
    return _contract(cfg, weight, cfg.patches(xp, weight.shape[2:]))


def _input_tangent(cfg: LocalConfig, weight: Array, xp_dot: Array) -> Array:
    patches_dot = cfg.patches(xp_dot, weight.shape[2:])
    if weight.shape[0] // cfg.groups <= _MAX_UNROLLED_CHANNELS:
        return _contract_by_channel(cfg, weight, patches_dot)
    return _contract(cfg, weight, patches_dot)


_local = bilinear(_local_forward, _weight_tangent, _input_tangent)


def _chunk_rows(chunk_size: int | None, out_shape: Sequence[int]) -> int | None:
    """Output rows (first spatial dimension) per chunk, or `None` for no chunking."""
    if chunk_size is None:
        return None
    rows = max(1, chunk_size // math.prod(out_shape[1:]))
    if rows >= out_shape[0]:
        return None
    # As few chunks as that allows, of balanced sizes.
    n_chunks = -(-out_shape[0] // rows)
    return -(-out_shape[0] // n_chunks)


def local_conv(
    xp: Array,
    weight: Array,
    *,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    precision: Any = None,
    preferred_element_type: Any = None,
    chunk_size: int | None = None,
    patches_impl: PatchesLowering = "separable",
) -> Array:
    """The locally connected convolution of an already padded `(C, *spatial)` input
    `xp` with a weight `(O, (C // groups) * prod(kernel_size), *out)`, giving
    `(O, *out)`; `chunk_size` as for `eqxconv.conv_local`; `patches_impl` how the
    patches are taken."""
    cfg = LocalConfig(
        kernel_size,
        stride,
        dilation,
        groups,
        precision,
        preferred_element_type,
        patches_impl,
    )
    out_shape = weight.shape[2:]
    rows = _chunk_rows(chunk_size, out_shape)
    if rows is None:
        return _local(cfg, weight, xp)

    out_channels, per_group = weight.shape[:2]
    n_chunks = -(-out_shape[0] // rows)
    extra = n_chunks * rows - out_shape[0]
    rest = tuple(out_shape[1:])
    n = len(out_shape)
    w = jnp.pad(weight, ((0, 0), (0, 0), (0, extra)) + ((0, 0),) * (n - 1))
    w = w.reshape((out_channels, per_group, n_chunks, rows, *rest))
    w = jnp.moveaxis(w, 2, 0)
    step_rows = rows * stride[0]
    slab = window_extent(rows, kernel_size[0], stride[0], dilation[0])
    short = (n_chunks - 1) * step_rows + slab - xp.shape[1]
    if short > 0:
        xp = jnp.pad(xp, ((0, 0), (0, short)) + ((0, 0),) * (n - 1))

    # Rematerialised, so that the backward pass recomputes each slab's patches rather
    # than the scan stacking them all as residuals.
    @jax.checkpoint
    def step(carry: None, chunk: tuple[Array, Array]) -> tuple[None, Array]:
        w_chunk, index = chunk
        x_slab = lax.dynamic_slice_in_dim(xp, index * step_rows, slab, axis=1)
        return carry, _local(cfg, w_chunk, x_slab)

    _, outs = lax.scan(step, None, (w, jnp.arange(n_chunks)))
    out = jnp.moveaxis(outs, 0, 1).reshape((out_channels, n_chunks * rows, *rest))
    return out[:, : out_shape[0]]
