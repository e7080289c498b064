"""Flax's `'CIRCULAR'` padding string: eqxconv's `Conv` and `ConvLocal` equal
`flax.linen.Conv` / `ConvLocal` given the same parameters, at every stride; and
`conv_transpose` with `'CIRCULAR'` is the adjoint of Flax's forward convolution."""

import math
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqxconv

from .cases import LayerCase
from .helpers import with_parameters


IN_CHANNELS, OUT_CHANNELS = 4, 6


def _circular(family, spatial, kernel_size, stride, **fields) -> LayerCase:
    return LayerCase(
        family, spatial, kernel_size=kernel_size, stride=stride, padding="CIRCULAR",
        in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, **fields,
    )  # fmt: skip


# Even and odd inputs and kernels, strides 1-3: where Flax's padding differs from
# 'SAME' resolved for the stride.
CONV_CASES = [
    _circular("conv", (8,), 3, 1),
    _circular("conv", (8,), 4, 2),
    _circular("conv", (9,), 3, 3, dilation=2),
    _circular("conv", (8,), 5, 3, groups=2),
    _circular("conv", (8, 7), 3, 2),
    _circular("conv", (8, 8), 4, 3),
    _circular("conv", (6, 9), 2, 2, dilation=3, groups=2),
    _circular("conv", (4, 5, 6), 3, 2),
]
LOCAL_CASES = [
    _circular("conv_local", (8,), 4, 2),
    _circular("conv_local", (9,), 3, 3, dilation=2),
    _circular("conv_local", (8, 8), 3, 2),
    _circular("conv_local", (7, 8), 4, 3),
]


def _channels_last(x):
    return jnp.moveaxis(x, 0, -1)[None]


def _flax_layer(case: LayerCase, local: bool):
    n = len(case.spatial)
    layer_class = fnn.ConvLocal if local else fnn.Conv
    return layer_class(
        features=OUT_CHANNELS,
        kernel_size=(case.kernel_size,) * n,
        strides=case.stride,
        padding="CIRCULAR",
        kernel_dilation=case.dilation,
        feature_group_count=case.groups,
        precision="highest",
    )


def _flax_and_eqxconv(case: LayerCase, getkey):
    """Flax's layer and eqxconv's, given Flax's parameters, on one input: `(x, Flax's
    output channels-first, eqxconv's layer)`. Flax's kernel is `(*kernel_size,
    in // groups, out)` for `Conv` and `(*out_spatial, in * prod(kernel_size), out)`
    for `ConvLocal` (the fused axis channel-major as eqxconv's): its last two axes
    moved first give eqxconv's layout."""
    x = jr.normal(getkey(), (IN_CHANNELS, *case.spatial))
    flax_layer = _flax_layer(case, local=case.family == "conv_local")
    params: Any = flax_layer.init(getkey(), _channels_last(x))["params"]
    expected = flax_layer.apply({"params": params}, _channels_last(x))[0]
    layer = case.build(getkey(), precision="highest")
    weight = jnp.moveaxis(params["kernel"], (-1, -2), (0, 1))
    bias = jnp.reshape(jnp.moveaxis(params["bias"], -1, 0), layer.bias.shape)
    assert weight.shape == layer.weight.shape
    return x, jnp.moveaxis(expected, -1, 0), with_parameters(layer, weight, bias)


@pytest.mark.parametrize("case", CONV_CASES + LOCAL_CASES, ids=lambda c: c.id)
def test_conv_and_conv_local_match_flax(case, getkey):
    x, expected, layer = _flax_and_eqxconv(case, getkey)
    out = layer(x)
    assert out.shape[1:] == layer.out_spatial_shape(case.spatial)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CONV_CASES[1:4] + CONV_CASES[5:7], ids=lambda c: c.id)
def test_conv_transpose_is_adjoint_of_flax_conv(case, getkey):
    """`<flax_conv(x), y> == <x, conv_transpose(y)>` for every `x` of the forward
    convolution's input shape and `y` of its output shape, `conv_transpose` returning
    that input shape by default (`in * stride`) or with `output_padding`."""
    n = len(case.spatial)
    flax_layer = _flax_layer(case, local=False).copy(use_bias=False)
    x = jr.normal(getkey(), (IN_CHANNELS, *case.spatial))
    params: Any = flax_layer.init(getkey(), _channels_last(x))["params"]
    y_shape = jax.eval_shape(
        lambda v: flax_layer.apply({"params": params}, _channels_last(v)), x
    ).shape
    y = jr.normal(getkey(), (OUT_CHANNELS, *y_shape[1:-1]))
    m = y.shape[1:]
    output_padding = tuple(
        mi * case.stride - size for mi, size in zip(m, case.spatial, strict=True)
    )
    # The transposed convolution's weight is (in, out // groups, *k) of the forward
    # layer's (out, in // groups, *k), channel groups kept.
    forward_weight = jnp.moveaxis(params["kernel"], (-1, -2), (0, 1))
    g = case.groups
    k = forward_weight.shape[2:]
    grouped = forward_weight.reshape(g, OUT_CHANNELS // g, IN_CHANNELS // g, *k)
    transpose_weight = jnp.swapaxes(grouped, 1, 2).reshape(
        IN_CHANNELS, OUT_CHANNELS // g, *k
    )
    back = eqxconv.conv_transpose(
        y,
        jnp.flip(transpose_weight, tuple(range(2, 2 + n))),
        stride=case.stride,
        padding="CIRCULAR",
        output_padding=output_padding,
        dilation=case.dilation,
        groups=g,
        precision="highest",
    )
    assert back.shape == x.shape
    forward = jnp.moveaxis(
        flax_layer.apply({"params": params}, _channels_last(x))[0], -1, 0
    )
    lhs = jnp.vdot(forward, y)
    rhs = jnp.vdot(x, back)
    scale = math.sqrt(x.size * y.size)
    np.testing.assert_allclose(lhs / scale, rhs / scale, atol=1e-5)


def test_circular_transpose_default_size_is_in_times_stride(getkey):
    layer = eqxconv.ConvTranspose1d(2, 3, 4, stride=2, padding="CIRCULAR", key=getkey())
    assert layer.out_spatial_shape((5,)) == (10,)
