"""Properties every layer has, swept over the one registry of layer cases
(`tests/cases.py`): `jax.vmap` equals a Python loop and `jax.jit` equals eager
execution; derivatives of every order pass `jax.test_util.check_grads` in forward
and reverse mode, and forward mode equals reverse mode; and each linear op is the
adjoint of its partner, computed by a separate code path (`conv` of
`conv_transpose`, `fold_patches` of `extract_patches`)."""

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.test_util import check_grads

import eqxconv

from .cases import LayerCase, REGISTRY
from .oracles import explicit_pairs, transpose_weight_layout


def _ids(cases):
    return [case.id for case in cases]


def _layer_and_input(case: LayerCase, key, batch=()) -> tuple[Any, jax.Array]:
    layer_key, x_key = jr.split(key)
    layer = case.build(layer_key)
    dtype = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
    return layer, jr.normal(x_key, (*batch, *case.input_shape(layer)), dtype)


@pytest.mark.parametrize("case", REGISTRY, ids=_ids(REGISTRY))
def test_vmap_equals_loop_and_jit_equals_eager(case, getkey):
    layer, xs = _layer_and_input(case, getkey(), batch=(3,))

    @eqx.filter_jit
    def batched_and_looped(layer, xs):
        return jax.vmap(layer)(xs), jnp.stack([layer(x) for x in xs])

    batched, looped = batched_and_looped(layer, xs)
    eager = np.stack([layer(x) for x in xs])
    assert batched.shape == (3, *eager.shape[1:])
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(looped, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", REGISTRY, ids=_ids(REGISTRY))
def test_check_grads(case):
    """In float64, of the parameters and the input together, to the case's
    `check_grads_order`."""
    with jax.enable_x64(True):
        layer, x = _layer_and_input(case, jr.key(0))
        params, static = eqx.partition(layer, eqx.is_inexact_array)
        f = jax.jit(lambda params, x: eqx.combine(params, static)(x))
        check_grads(f, (params, x), order=case.check_grads_order, modes=("fwd", "rev"))


@pytest.mark.parametrize("case", REGISTRY, ids=_ids(REGISTRY))
def test_forward_mode_equals_reverse_mode(case, getkey):
    layer, x = _layer_and_input(case, getkey())

    @eqx.filter_jit
    def jacobians(layer, x):
        return jax.jacfwd(layer)(x), jax.jacrev(layer)(x)

    forward, reverse = jacobians(layer, x)
    np.testing.assert_allclose(forward, reverse, rtol=1e-5, atol=1e-6)


def _conv_transpose_output_padding(case: LayerCase, out_spatial) -> tuple[int, ...]:
    """The `output_padding` that takes a convolution's output shape back to its
    input shape: the contract's size formulas, with the padding worked out by the
    oracle."""
    kernel, stride, dilation = (case.tuple_of(f) for f in ("kernel_size", "stride",
                                                           "dilation"))  # fmt: skip
    if isinstance(case.padding, str) and case.padding.upper() in (
        "SAME", "SAME_LOWER", "CIRCULAR"
    ):  # fmt: skip
        return tuple(m * s - n for m, s, n in zip(out_spatial, stride, case.spatial,
                                                  strict=True))  # fmt: skip
    pairs = explicit_pairs(case.padding, case.spatial, kernel, stride, dilation)
    return tuple(
        n + lo + hi - ((m - 1) * s + (k - 1) * d + 1)
        for n, (lo, hi), m, s, k, d in zip(
            case.spatial, pairs, out_spatial, stride, kernel, dilation, strict=True
        )
    )


ADJOINT_CASES = [
    case
    for case in REGISTRY
    if case.family in ("conv", "conv_transpose", "fold_patches")
    or (case.family == "extract_patches" and case.padding_mode == "ZEROS")
]


@pytest.mark.parametrize("case", ADJOINT_CASES, ids=_ids(ADJOINT_CASES))
def test_adjoint_of_its_partner_op(case, getkey):
    """`<A x, y> = <x, B y>` for the layer `A` (without bias) and its adjoint `B` in
    the contract, computed by another op: `conv_transpose` for `Conv` and `conv` for
    `ConvTranspose`, with the weight flipped and its channel axes swapped;
    `fold_patches` for `ExtractPatches`, and `extract_patches` for `FoldPatches`."""
    layer_key, x_key, y_key = jr.split(getkey(), 3)
    weighted = case.family in ("conv", "conv_transpose")
    if weighted:
        case = dataclasses.replace(case, use_bias=False)
    layer = case.build(layer_key)
    x = jr.normal(x_key, case.input_shape(layer))
    y = jr.normal(y_key, jax.eval_shape(layer, x).shape)
    window: dict[str, Any] = dict(
        stride=case.stride, padding=case.padding, dilation=case.dilation
    )
    if weighted:
        window.update(groups=case.groups, padding_mode=case.padding_mode)
    partner_weight: Any = (
        jnp.asarray(transpose_weight_layout(layer.weight, case.groups))
        if weighted
        else None
    )
    if case.family == "conv":
        output_padding = _conv_transpose_output_padding(case, y.shape[1:])

        def adjoint(y):
            return eqxconv.conv_transpose(
                y, partner_weight, output_padding=output_padding, **window
            )
    elif case.family == "conv_transpose":

        def adjoint(y):
            return eqxconv.conv(y, partner_weight, **window)
    elif case.family == "extract_patches":

        def adjoint(y):
            return eqxconv.fold_patches(y, case.spatial, case.kernel_size, **window)
    else:

        def adjoint(y):
            return eqxconv.extract_patches(y, case.kernel_size, **window)

    @jax.jit
    def both_sides(x, y):
        back = adjoint(y)
        assert back.shape == x.shape
        return jnp.vdot(layer(x), y), jnp.vdot(x, back)

    lhs, rhs = both_sides(x, y)
    scale = math.sqrt(x.size * y.size)
    np.testing.assert_allclose(lhs / scale, rhs / scale, rtol=1e-5, atol=1e-6)
