"""`input_dilation` on the patch ops and the locally connected layers equals
`lhs_dilation` of `lax.conv_general_dilated_patches` / `conv_general_dilated_local`
(padding strings resolved against the dilated extent), and Flax's
`ConvLocal(input_dilation=...)`."""

import math
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import flax.linen as fnn
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqxconv

from .oracles import explicit_pairs, lax_local, lax_patches


@dataclass(frozen=True)
class DilatedCase:
    spatial: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: object
    dilation: tuple[int, ...]
    input_dilation: tuple[int, ...]

    @property
    def id(self) -> str:
        return (
            f"{len(self.spatial)}d-k{self.kernel_size}-s{self.stride}-p{self.padding}"
            f"-d{self.dilation}-r{self.input_dilation}"
        )


CASES = [
    DilatedCase((7,), (3,), (1,), "VALID", (1,), (2,)),
    DilatedCase((6,), (4,), (3,), "SAME", (1,), (3,)),
    DilatedCase((5,), (2,), (2,), ((2, 1),), (2,), (2,)),
    DilatedCase((5, 6), (3, 2), (2, 1), "SAME", (1, 2), (2, 3)),
    DilatedCase((4, 5), (2, 2), (2, 2), "VALID", (1, 1), (2, 2)),  # tiling windows
    DilatedCase((4, 4), (3, 3), (1, 2), ((1, 0), (2, 2)), (1, 1), (1, 2)),
    DilatedCase((3, 4, 3), (2, 2, 2), (1, 2, 1), "SAME_LOWER", (1, 1, 2), (2, 1, 2)),
]
IN_CHANNELS, OUT_CHANNELS = 3, 4


def _window(case: DilatedCase) -> dict[str, Any]:
    """The window arguments of eqxconv's ops, but the kernel size."""
    return dict(
        stride=case.stride, padding=case.padding, dilation=case.dilation,
        input_dilation=case.input_dilation,
    )  # fmt: skip


def _oracle_window(case: DilatedCase) -> dict[str, Any]:
    """The oracles' arguments: explicit pairs, as `lax` takes no padding string with
    `lhs_dilation`."""
    k, s, d, r = case.kernel_size, case.stride, case.dilation, case.input_dilation
    pairs = explicit_pairs(case.padding, case.spatial, k, s, d, input_dilation=r)
    return dict(kernel_size=k, stride=s, pairs=pairs, dilation=d, input_dilation=r)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_extract_patches_matches_lax_lhs_dilation(case, getkey):
    x = jr.normal(getkey(), (IN_CHANNELS, *case.spatial))
    expected = lax_patches(x, **_oracle_window(case))
    layer = eqxconv.ExtractPatches(len(case.spatial), case.kernel_size, **_window(case))
    out = eqx.filter_jit(layer)(x)
    assert out.shape[1:] == layer.out_spatial_shape(case.spatial)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    functional = eqxconv.extract_patches(x, case.kernel_size, **_window(case))
    np.testing.assert_array_equal(functional, out)
    shape = eqxconv.conv_output_shape(case.spatial, case.kernel_size, **_window(case))
    assert shape == out.shape[1:]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_extract_patches_gradient_matches_lax(case, getkey):
    """The derivative of the extraction is that of lax's patches (a nonlinear loss,
    so the backward pass depends on the forward)."""
    x = jr.normal(getkey(), (IN_CHANNELS, *case.spatial))

    def ours(v):
        patches = eqxconv.extract_patches(v, case.kernel_size, **_window(case))
        return jnp.sum(jnp.sin(patches) ** 2)

    def reference(v):
        return jnp.sum(jnp.sin(lax_patches(v, **_oracle_window(case))) ** 2)

    np.testing.assert_allclose(
        jax.jit(jax.grad(ours))(x), jax.grad(reference)(x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("case", CASES[::2] + CASES[3:4], ids=lambda c: c.id)
def test_conv_local_matches_lax_local(case, getkey):
    layer = eqxconv.ConvLocal(
        len(case.spatial),
        IN_CHANNELS,
        OUT_CHANNELS,
        case.kernel_size,
        in_spatial_shape=case.spatial,
        key=getkey(),
        **_window(case),
    )
    x = jr.normal(getkey(), (IN_CHANNELS, *case.spatial))
    expected = lax_local(x, layer.weight, **_oracle_window(case))
    assert layer.bias is not None
    expected = expected + layer.bias
    np.testing.assert_allclose(eqx.filter_jit(layer)(x), expected, rtol=1e-5, atol=1e-5)

    def loss(v, w):
        y = eqxconv.conv_local(v, w, kernel_size=case.kernel_size, **_window(case))
        return jnp.sum(y**2)

    def reference_loss(v, w):
        return jnp.sum(lax_local(v, w, **_oracle_window(case)) ** 2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, layer.weight)
    expected_grads = jax.grad(reference_loss, argnums=(0, 1))(x, layer.weight)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-4)


def test_conv_local_matches_flax_input_dilation(getkey):
    x = jr.normal(getkey(), (IN_CHANNELS, 6, 5))
    flax_layer = fnn.ConvLocal(
        features=OUT_CHANNELS,
        kernel_size=(3, 2),
        strides=(2, 1),
        padding=((1, 2), (0, 1)),
        input_dilation=(2, 3),
        precision=lax.Precision.HIGHEST,
    )
    x_flax = jnp.moveaxis(x, 0, -1)[None]
    params: Any = flax_layer.init(getkey(), x_flax)["params"]
    expected = jnp.moveaxis(flax_layer.apply({"params": params}, x_flax)[0], -1, 0)
    layer = eqxconv.ConvLocal2d(
        IN_CHANNELS,
        OUT_CHANNELS,
        (3, 2),
        (2, 1),
        ((1, 2), (0, 1)),
        in_spatial_shape=(6, 5),
        input_dilation=(2, 3),
        key=getkey(),
    )
    weight = jnp.moveaxis(params["kernel"], (-1, -2), (0, 1))
    bias = jnp.moveaxis(params["bias"], -1, 0)
    assert weight.shape == layer.weight.shape
    layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, bias))
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_input_dilation_grows_the_output(getkey):
    layer = eqxconv.ConvLocal1d(
        2, 2, 3, in_spatial_shape=(5,), input_dilation=2, key=getkey()
    )
    # (5 - 1) * 2 + 1 = 9 dilated inputs, 7 windows of 3.
    assert layer.weight.shape == (2, 2 * 3, 7)
    assert layer.out_spatial_shape((5,)) == (7,)
    assert math.prod(layer.weight.shape) == 2 * 6 * 7


@pytest.mark.parametrize(
    "build",
    [
        lambda: eqxconv.ExtractPatches(2, 3, padding_mode="REFLECT", input_dilation=2),
        lambda: eqxconv.ExtractPatches(2, 3, padding="CIRCULAR", input_dilation=2),
        lambda: eqxconv.ConvLocal1d(
            1,
            1,
            3,
            padding_mode="CIRCULAR",
            in_spatial_shape=(8,),
            input_dilation=2,
            key=jr.key(0),
        ),
        lambda: eqxconv.extract_patches(
            jnp.ones((1, 8)), 3, padding_mode="REPLICATE", input_dilation=2
        ),
    ],
)
def test_input_dilation_needs_zero_padding(build):
    with pytest.raises(ValueError, match="input_dilation"):
        build()


@pytest.mark.parametrize("value", [0, (2, -1), (1, 2, 3)])
def test_bad_input_dilation_is_named(value):
    with pytest.raises((ValueError, TypeError), match="input_dilation"):
        eqxconv.ExtractPatches(2, 3, input_dilation=value)


def test_to_torch_refuses_input_dilation():
    layer = eqxconv.ExtractPatches(2, 3, input_dilation=2)
    with pytest.raises(ValueError, match="input_dilation"):
        eqxconv.to_torch(layer)
