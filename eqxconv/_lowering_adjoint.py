"""The transposed convolution as the adjoint of the forward one, for inputs that XLA's
SPMD partitioner may split along spatial axes.

XLA partitions the `lhs_dilation` form of a transposed convolution, but gathers its
weight gradient (a convolution of two lhs-dilated operands). The adjoint form
computes the same values as the reverse-mode derivative of the strided forward
convolution in its input, and its custom JVP writes the weight tangent as the
transpose of the forward convolution's weight gradient, so that reverse mode, which
transposes it back, computes the weight gradient as XLA computes a forward
convolution's, which it partitions with halo exchanges.
"""

import dataclasses
from typing import Any

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array

from ._bilinear import bilinear


@dataclasses.dataclass(frozen=True)
class AdjointConfig:
    """The forward convolution (hashable: the non-differentiable argument of the
    custom JVP): its input's spatial shape (the transposed output's), stride,
    padding, dilation, groups and precision."""

    domain: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    precision: Any


def _forward(cfg: AdjointConfig, v: Array, forward_weight: Array) -> Array:
    out = lax.conv_general_dilated(
        v[None],
        forward_weight,
        window_strides=cfg.stride,
        padding=cfg.padding,
        rhs_dilation=cfg.dilation,
        feature_group_count=cfg.groups,
        precision=cfg.precision,
    )
    return out[0]


def _channels(cfg: AdjointConfig, forward_weight: Array) -> int:
    return forward_weight.shape[1] * cfg.groups


def _adjoint_primal(cfg: AdjointConfig, y: Array, forward_weight: Array) -> Array:
    zero = jnp.zeros((_channels(cfg, forward_weight), *cfg.domain), y.dtype)
    _, pullback = jax.vjp(lambda v: _forward(cfg, v, forward_weight), zero)
    (out,) = pullback(y)
    return out


def _weight_tangent(cfg: AdjointConfig, y: Array, weight_dot: Array) -> Array:
    domain = jax.ShapeDtypeStruct(
        (_channels(cfg, weight_dot), *cfg.domain), weight_dot.dtype
    )

    def weight_gradient(g: Array) -> Array:
        _, pullback = jax.vjp(lambda w: _forward(cfg, g, w), weight_dot)
        (out,) = pullback(y)
        return out

    (out,) = jax.linear_transpose(weight_gradient, domain)(weight_dot)
    return out


adjoint_transposed_conv = bilinear(_adjoint_primal, _adjoint_primal, _weight_tangent)
"""`adjoint_transposed_conv(cfg, y, forward_weight)`: the adjoint of the forward
convolution `cfg` with `forward_weight` `(in_channels, out_channels // groups,
*kernel_size)`, applied to `y` `(in_channels, *spatial)`, giving `(out_channels,
*cfg.domain)`."""
