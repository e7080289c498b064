"""`ConvLocal` and `conv_local` against `lax.conv_general_dilated_local` (per group for
groups > 1), Flax's `ConvLocal` (kernel converted) and torch `F.unfold` + a
per-position contraction; 1D/2D/3D, every padding mode, chunking; grads, vmap, jit,
initialisation, extras and errors."""

import math
from typing import cast

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import torch.nn.functional as F

import eqxconv

from .cases import conv_local
from .helpers import with_parameters
from .oracles import explicit_mode, explicit_pairs, lax_local, to_torch


CASES = [
    conv_local((12,), out_channels=3, stride=2, padding=1),
    conv_local((10,), in_channels=4, out_channels=6, padding="CAUSAL", dilation=2,
               groups=2, chunk_size=3),
    conv_local((9, 8), in_channels=3, out_channels=4),
    conv_local((8, 9), kernel_size=(2, 3), stride=(2, 1), padding="SAME",
               dilation=(1, 2), padding_mode="REFLECT"),
    conv_local((9, 7), in_channels=4, out_channels=6, padding=1, groups=2,
               padding_mode="REPLICATE", chunk_size=15),  # 5 chunks of 2 rows
    conv_local((6, 6), out_channels=3, padding="CIRCULAR"),
    conv_local((8, 8), in_channels=3, kernel_size=4,
               stride=4),  # non-overlapping patches
    conv_local((4, 5, 4), kernel_size=2, padding="SAME_LOWER", chunk_size=8),
    conv_local((4, 4, 4), in_channels=4, out_channels=4, kernel_size=2, stride=2,
               padding=1, groups=4, padding_mode="CIRCULAR"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_values_and_gradients_match_lax_local(case, getkey):
    cin, cout, in_shape, groups = (case.in_channels, case.out_channels, case.spatial,
                                   case.groups)  # fmt: skip
    k, s, d = (case.tuple_of(f) for f in ("kernel_size", "stride", "dilation"))
    pairs = explicit_pairs(case.padding, in_shape, k, s, d)
    oracle_mode = explicit_mode(case.padding, case.padding_mode)
    layer = case.build(getkey())
    out_shape = layer.out_spatial_shape(in_shape)
    per_position = (cin // groups) * math.prod(k)
    assert layer.weight.shape == (cout, per_position, *out_shape)
    assert layer.bias is not None and layer.bias.shape == (cout, *out_shape)
    xs = jr.normal(getkey(), (2, cin, *in_shape))
    r = jr.normal(getkey(), (2, cout, *out_shape))

    def oracle(weight, bias, x):
        return lax_local(x, weight, k, s, pairs, d, groups, oracle_mode) + bias

    def loss(f):
        return lambda w, b, xs: jnp.sum(jax.vmap(f, (None, None, 0))(w, b, xs) * r)

    def ours(weight, bias, x):
        return with_parameters(layer, weight, bias)(x)

    @jax.jit
    def run(w, b, xs):
        return (
            (jax.vmap(ours, (None, None, 0))(w, b, xs),
             jax.vmap(oracle, (None, None, 0))(w, b, xs)),
            (jax.grad(loss(ours), (0, 1, 2))(w, b, xs),
             jax.grad(loss(oracle), (0, 1, 2))(w, b, xs)),
        )  # fmt: skip

    (y, y_expected), (grads, grads_expected) = run(layer.weight, layer.bias, xs)
    assert y.shape == (2, cout, *out_shape)
    np.testing.assert_allclose(y, y_expected, rtol=1e-5, atol=1e-5)
    for g, g_expected in zip(grads, grads_expected, strict=True):
        np.testing.assert_allclose(g, g_expected, rtol=1e-4, atol=1e-4)


# 3 output channels per group take the unrolled input tangent, 34 the contraction.
@pytest.mark.parametrize("cout, groups", [(6, 2), (34, 1)])
def test_forward_mode_and_second_order(cout, groups, getkey):
    """conv_local's custom JVP against lax's autodiff: `jax.jvp` (forward mode), and
    a Hessian-vector product (forward over reverse), in the weight and the input."""
    k, s, d, pairs = (3, 2), (1, 2), (2, 1), ((1, 0), (2, 1))
    weight = jr.normal(getkey(), (cout, (4 // groups) * 6, 4, 5))
    xs = jr.normal(getkey(), (2, 4, 7, 8))
    r = jr.normal(getkey(), (2, cout, 4, 5))

    def ours(w, x):
        return eqxconv.conv_local(
            x, w, kernel_size=k, stride=s, padding=pairs, dilation=d, groups=groups,
            padding_mode="REFLECT", precision="highest",
        )  # fmt: skip

    def oracle(w, x):
        return lax_local(x, w, k, s, pairs, d, groups, "REFLECT")

    def loss(f):
        return lambda w, xs: jnp.sum(jax.vmap(f, (None, 0))(w, xs) ** 2 * r)

    tangents = (jr.normal(getkey(), weight.shape), jr.normal(getkey(), xs.shape))

    @jax.jit
    def run(w, xs):
        results = []
        for f in (ours, oracle):
            batched = jax.vmap(f, (None, 0))
            _, jvp_out = jax.jvp(batched, (w, xs), tangents)
            _, hvp = jax.jvp(jax.grad(loss(f), (0, 1)), (w, xs), tangents)
            results.append((jvp_out, *hvp))
        return results

    got, expected = run(weight, xs)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_functional_and_flax(chunk_size, getkey):
    """conv_local == Flax's ConvLocal with the kernel converted to its
    `(*out_spatial, in * prod(kernel), out)` layout (and NHWC inputs)."""
    in_shape, k, s, d = (9, 10), (3, 2), (2, 1), (1, 2)
    weight = jr.normal(getkey(), (5, 3 * 6, 5, 11))
    bias = jr.normal(getkey(), (5, 5, 11))
    xs = jr.normal(getkey(), (2, 3, *in_shape))
    flax_layer = nn.ConvLocal(
        5, k, strides=s, padding=((1, 1), (2, 1)), kernel_dilation=d
    )
    params = {
        "params": {
            "kernel": jnp.transpose(weight, (2, 3, 1, 0)),
            "bias": jnp.transpose(bias, (1, 2, 0)),
        }
    }
    expected = cast(jax.Array, flax_layer.apply(params, jnp.moveaxis(xs, 1, -1)))
    ours = jax.jit(
        jax.vmap(
            lambda x: eqxconv.conv_local(
                x,
                weight,
                kernel_size=k,
                stride=s,
                padding=((1, 1), (2, 1)),
                dilation=d,
                chunk_size=chunk_size,
                precision="highest",
            )  # fmt: skip
        )
    )
    got = ours(xs) + bias[None]
    np.testing.assert_allclose(got, jnp.moveaxis(expected, -1, 1), rtol=1e-4, atol=1e-4)


def test_torch_unfold_contraction(getkey):
    layer = eqxconv.ConvLocal2d(
        3, 4, 3, stride=2, padding=1, dilation=2, in_spatial_shape=(9, 8), key=getkey()
    )
    x = jr.normal(getkey(), (3, 9, 8))
    unfolded = F.unfold(to_torch(x)[None], 3, dilation=2, padding=1, stride=2)[0]
    assert layer.bias is not None
    weight = np.asarray(layer.weight).reshape(4, 27, -1)
    expected = np.einsum("ojl,jl->ol", weight, unfolded.numpy())
    expected = expected.reshape(layer.bias.shape) + np.asarray(layer.bias)
    np.testing.assert_allclose(eqx.filter_jit(layer)(x), expected, rtol=1e-5, atol=1e-5)


def test_init_and_extras(getkey):
    layer = eqxconv.ConvLocal1d(4, 8, 5, groups=2, in_spatial_shape=(40,), key=getkey())
    bound = 1 / math.sqrt(2 * 5)  # fan_in = (in_channels // groups) * prod(kernel)
    assert layer.bias is not None
    for array in (layer.weight, layer.bias):
        assert float(jnp.max(jnp.abs(array))) <= bound
        assert float(jnp.max(jnp.abs(array))) > 0.9 * bound
    assert layer.weight.dtype == jnp.float32
    assert layer.weight.shape == (8, 10, 36)

    ones = eqxconv.ConvLocal3d(
        1, 2, 2, use_bias=False, dtype=jnp.bfloat16, in_spatial_shape=(3, 3, 3),
        kernel_init=lambda key, shape, dtype: jnp.ones(shape, dtype), key=getkey(),
    )  # fmt: skip
    assert ones.bias is None and ones.weight.dtype == jnp.bfloat16
    x = jnp.ones((1, 3, 3, 3), jnp.float32)
    out = eqx.filter_jit(ones)(x)  # bfloat16 weight, float32 input: in float32
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, 8.0)

    # A boolean mask: masked weights get no gradient and do not matter.
    mask = jnp.zeros((2, 4, 3, 3), bool).at[:, :2].set(True)
    masked = eqxconv.ConvLocal2d(
        1, 2, 2, in_spatial_shape=(4, 4), mask=mask, key=getkey()
    )
    params, static = eqx.partition(masked, eqx.is_inexact_array)
    assert params.mask is None  # a boolean mask is not trained
    x = jr.normal(getkey(), (1, 4, 4))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(eqx.combine(p, static)(x) ** 2)))(params)
    assert not np.any(np.asarray(grads.weight)[:, 2:])
    assert np.any(np.asarray(grads.weight)[:, :2])
    assert "ConvLocal2d" in repr(masked)


def test_errors(getkey):
    with pytest.raises(ValueError, match=r"in_spatial_shape.*\(2, 5\)"):
        eqxconv.ConvLocal2d(1, 1, 3, in_spatial_shape=(2, 5), key=getkey())
    with pytest.raises(ValueError, match="in_spatial_shape"):
        eqxconv.ConvLocal2d(1, 1, 3, in_spatial_shape=(5,), key=getkey())
    with pytest.raises(TypeError, match="in_spatial_shape"):
        eqxconv.ConvLocal2d(1, 1, 3, key=getkey())  # pyright: ignore[reportCallIssue]
    with pytest.raises(ValueError, match="groups"):
        eqxconv.ConvLocal2d(4, 3, 3, groups=2, in_spatial_shape=(5, 5), key=getkey())
    with pytest.raises(ValueError, match="chunk_size"):
        eqxconv.ConvLocal1d(1, 1, 3, in_spatial_shape=(5,), chunk_size=0, key=getkey())
    layer = eqxconv.ConvLocal2d(2, 3, 3, in_spatial_shape=(6, 5), key=getkey())
    with pytest.raises(ValueError, match=r"ConvLocal2d.*\(6, 5\).*\(2, 7, 5\)"):
        layer(jnp.zeros((2, 7, 5)))
    with pytest.raises(ValueError, match=r"ConvLocal2d.*2 input channels"):
        layer(jnp.zeros((3, 6, 5)))
    with pytest.raises(ValueError, match=r"jax\.vmap"):
        layer(jnp.zeros((4, 2, 6, 5)))
    with pytest.raises(
        ValueError, match=r"conv_local.*\(O, 18, 4, 3\).*\(3, 18, 4, 2\)"
    ):
        eqxconv.conv_local(
            jnp.zeros((2, 6, 5)), jnp.zeros((3, 18, 4, 2)), kernel_size=3
        )
    with pytest.raises(ValueError, match="groups"):
        eqxconv.conv_local(
            jnp.zeros((3, 6, 5)), jnp.zeros((2, 9, 4, 3)), kernel_size=3, groups=2
        )
