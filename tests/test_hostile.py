"""Hostile arguments and inputs: every one gets a clear error naming the argument (at
construction) or the layer and the shapes (at call time), identically eagerly, under
`jax.jit`, under `eqx.filter_jit` and inside `jax.vmap`. Grows with every case found."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqxconv


def _conv2d(**kwargs):
    return eqxconv.Conv2d(3, 6, 3, key=jr.key(0), **kwargs)


CONSTRUCTION_CASES = {
    "precision-bogus": (lambda: _conv2d(precision="bogus"), ValueError, "precision"),
    "preferred-int": (
        lambda: _conv2d(preferred_element_type=jnp.int32),
        TypeError,
        "preferred_element_type",
    ),
    "preferred-bool": (
        lambda: eqxconv.ConvTranspose1d(
            2, 2, 3, key=jr.key(0), preferred_element_type=bool
        ),
        TypeError,
        "preferred_element_type",
    ),
    "mask-string": (lambda: _conv2d(mask="abc"), TypeError, "mask"),
    "init-returns-none": (
        lambda: _conv2d(kernel_init=lambda key, shape, dtype: None),
        TypeError,
        "kernel_init.*NoneType",
    ),
    "init-returns-int": (
        lambda: _conv2d(bias_init=lambda key, shape, dtype: jnp.zeros(shape, int)),
        TypeError,
        "bias_init.*dtype",
    ),
    "bad-key": (
        lambda: eqxconv.Conv2d(3, 6, 3, key="key"),  # pyright: ignore
        TypeError,
        "`key`",
    ),
    "local-bad-key": (
        lambda: eqxconv.ConvLocal1d(2, 2, 3, in_spatial_shape=(8,), key=3),  # pyright: ignore
        TypeError,
        "`key`",
    ),
}


def test_valid_precisions_are_accepted():
    for precision in ("highest", ("high", "default"), jax.lax.Precision.HIGH):
        assert _conv2d(precision=precision).precision == precision


def _surgery(field, value):
    return eqx.tree_at(lambda m: getattr(m, field), _conv2d(), value)


# (layer, input, error, match): all call-time.
CALL_CASES = {
    "torch-style-bias": (
        _surgery("bias", jnp.arange(6.0)),
        jnp.ones((3, 8, 8)),
        ValueError,
        r"Conv2d\.bias has shape \(6,\).*\(6, 1, 1\)",
    ),
    "kernel-of-another-size": (
        _surgery("weight", jnp.ones((6, 3, 5, 5))),
        jnp.ones((3, 8, 8)),
        ValueError,
        r"Conv2d\.weight has shape \(6, 3, 5, 5\).*\(6, 3, 3, 3\)",
    ),
    "weight-with-fewer-channels": (
        _surgery("weight", jnp.ones((6, 2, 3, 3))),
        jnp.ones((3, 8, 8)),
        ValueError,
        r"Conv2d\.weight has shape \(6, 2, 3, 3\)",
    ),
    "mask-that-does-not-broadcast": (
        _surgery("mask", jnp.ones((2, 2))),
        jnp.ones((3, 8, 8)),
        ValueError,
        r"Conv2d\.mask has shape \(2, 2\)",
    ),
    "transpose-weight-swapped": (
        eqx.tree_at(
            lambda m: m.weight,
            eqxconv.ConvTranspose2d(4, 2, 3, key=jr.key(0)),
            jnp.ones((4, 2, 3, 3)),
        ),
        jnp.ones((4, 8, 8)),
        ValueError,
        r"ConvTranspose2d\.weight has shape \(4, 2, 3, 3\).*\(2, 4, 3, 3\)",
    ),
    "local-bias-per-channel": (
        eqx.tree_at(
            lambda m: m.bias,
            eqxconv.ConvLocal1d(2, 3, 3, in_spatial_shape=(8,), key=jr.key(0)),
            jnp.ones((3, 1)),
        ),
        jnp.ones((2, 8)),
        ValueError,
        r"ConvLocal1d\.bias has shape \(3, 1\).*\(3, 6\)",
    ),
    "channels-last": (
        _conv2d(),
        jnp.ones((32, 32, 3)),
        ValueError,
        "channels look like they are on the last axis",
    ),
}

_TRANSFORMS = {
    "eager": lambda layer: layer,
    "jit": lambda layer: jax.jit(lambda x: layer(x)),
    "filter_jit": lambda layer: eqx.filter_jit(lambda x: layer(x)),
    "vmap": lambda layer: lambda x: jax.vmap(layer)(x[None])[0],
}


@pytest.mark.parametrize("transform", _TRANSFORMS)
@pytest.mark.parametrize("case", CALL_CASES, ids=str)
def test_bad_call_names_layer_and_shapes(case, transform):
    layer, x, error, match = CALL_CASES[case]
    with pytest.raises(error, match=match):
        _TRANSFORMS[transform](layer)(x)


def test_batched_input_under_vmap_is_told_it_has_an_extra_axis():
    with pytest.raises(ValueError, match="already under `jax.vmap`"):
        jax.vmap(_conv2d())(jnp.ones((2, 8, 3, 9, 9)))


def test_shape_checks_hold_without_annotations(monkeypatch):
    """The library's own checks, not jaxtyping's, refuse a replaced weight."""
    layer = _surgery("weight", jnp.ones((6, 3, 5, 5)))
    with jax.disable_jit(), pytest.raises(ValueError, match=r"Conv2d\.weight"):
        layer(jnp.ones((3, 8, 8)))


class _Quantity:
    """Stands in for a unit-carrying array (brainunit/saiunit): not a JAX array."""

    def __init__(self, mantissa):
        self.mantissa = mantissa
        self.shape = mantissa.shape
        self.dtype = mantissa.dtype


def test_unit_carrying_array_gets_a_clear_type_error():
    with pytest.raises(TypeError, match=r"_Quantity.*\.mantissa"):
        _conv2d()(_Quantity(np.ones((3, 8, 8), np.float32)))  # pyright: ignore
    with pytest.raises(TypeError, match=r"_Quantity.*\.mantissa"):
        quantity: Any = _Quantity(np.ones((3, 8, 8), np.float32))
        eqxconv.conv(quantity, jnp.ones((6, 3, 3, 3)))


FUNCTIONAL_CASES = {
    "reflect-empty-axis": (
        lambda: eqxconv.conv(
            jnp.ones((1, 0, 4)),
            jnp.ones((1, 1, 1, 1)),
            padding=1,
            padding_mode="REFLECT",
        ),
        ValueError,
        r"eqxconv\.conv.*\(1, 0, 4\).*empty spatial axis",
    ),
    "circular-patches-empty-axis": (
        lambda: eqxconv.extract_patches(
            jnp.ones((1, 0, 4)), (1, 1), padding=1, padding_mode="CIRCULAR"
        ),
        ValueError,
        "empty spatial axis",
    ),
    "patches-batched-int-kernel": (
        lambda: eqxconv.extract_patches(jnp.ones((8, 3, 32, 32)), 3),
        ValueError,
        "num_spatial_dims",
    ),
    "local-weight-none": (
        lambda: eqxconv.conv_local(
            jnp.ones((2, 8, 8)),
            None,  # pyright: ignore
            kernel_size=3,
        ),
        TypeError,
        r"conv_local expected `weight`",
    ),
    "output-shape-wrong-rank": (
        lambda: eqxconv.conv_output_shape((-5,), 3, padding=10),
        ValueError,
        "in_spatial_shape",
    ),
}


@pytest.mark.parametrize("case", [*CONSTRUCTION_CASES, *FUNCTIONAL_CASES], ids=str)
def test_bad_argument_gets_an_error_naming_it(case):
    """At construction, or in a call of a functional op."""
    call, error, match = (CONSTRUCTION_CASES | FUNCTIONAL_CASES)[case]
    with pytest.raises(error, match=match):
        call()


def test_patches_of_a_volume_with_an_int_kernel_need_num_spatial_dims():
    x = jnp.arange(2 * 4 * 5 * 6, dtype=jnp.float32).reshape(2, 4, 5, 6)
    got = eqxconv.extract_patches(x, 2, num_spatial_dims=3)
    expected = jax.lax.conv_general_dilated_patches(
        x[None], (2, 2, 2), (1, 1, 1), "VALID"
    )
    np.testing.assert_array_equal(got, expected[0])


@pytest.mark.parametrize("shape", [(8,), (8, 8, 8), (-1, 8)])
def test_out_spatial_shape_refuses_a_shape_of_the_wrong_rank_or_sign(shape):
    for layer in (_conv2d(), eqxconv.ConvTranspose2d(3, 6, 3, key=jr.key(0))):
        with pytest.raises(ValueError, match="in_spatial_shape"):
            layer.out_spatial_shape(shape)
