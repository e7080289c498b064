"""The FFT lowering (`impl='fft'`) against independent oracles: `jnp.pad` then
`lax.conv_general_dilated` (values, VJPs, JVPs), `equinox.nn.Conv`, and properties.

Tolerances are relative to the scale of the oracle's result (its largest entry), as
FFT rounding is spread over every output rather than proportional to each.
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.test_util import check_grads

import eqxconv

from .cases import conv, LayerCase
from .helpers import value_vjp_jvp
from .oracles import explicit_mode, explicit_pairs, lax_conv


# Every padding form and mode, strides, dilations, groups, input dilation.
CASES = {
    case.fields_id: case
    for case in [
        conv((20,), in_channels=3, out_channels=4, kernel_size=5, padding="SAME"),
        conv(
            (31,), in_channels=4, groups=2, out_channels=6, kernel_size=4, stride=3,
            dilation=2, padding=3,
        ),
        conv((64,), out_channels=3, kernel_size=33, padding="CAUSAL"),
        conv((50,), in_channels=4, groups=4, out_channels=8, kernel_size=21,
             padding="SAME"),
        conv((37,), kernel_size=6, stride=2, padding="VALID"),
        conv((17,), out_channels=3, kernel_size=5, stride=2, padding=((3, 1),),
             padding_mode="REFLECT"),
        conv((19,), in_channels=3, groups=3, out_channels=3, dilation=3,
             padding="SAME", padding_mode="REPLICATE"),
        conv((16,), kernel_size=7, padding="SAME", padding_mode="CIRCULAR"),
        conv((9,), out_channels=3, kernel_size=4, stride=2, padding=2,
             input_dilation=2),
        conv((11, 12), in_channels=3, out_channels=4, kernel_size=(4, 3), stride=2,
             padding="SAME_LOWER"),
        conv((10, 9), in_channels=6, groups=3, out_channels=6, stride=(1, 2),
             dilation=(2, 1), padding=2, padding_mode="REFLECT"),
        conv((9, 8), out_channels=4, kernel_size=(3, 5), stride=(1, 3),
             padding=((0, 2), (3, 1)), padding_mode="REPLICATE"),
        conv((16, 16), groups=2, out_channels=4, kernel_size=9, padding="SAME",
             padding_mode="CIRCULAR"),
        conv((6, 7), kernel_size=(3, 2), stride=(1, 2), padding="CAUSAL",
             input_dilation=(2, 3)),
        conv((7, 6, 8), in_channels=4, groups=2, out_channels=4, kernel_size=(3, 2, 3),
             stride=(2, 1, 2), dilation=(1, 2, 1), padding="SAME"),
        conv((5, 6, 5), out_channels=3, kernel_size=(2, 3, 2), padding=1,
             padding_mode="REPLICATE"),
    ]
}  # fmt: skip


def _case(fields: str) -> LayerCase:
    """The case whose non-default fields contain `fields`."""
    (case,) = [c for name, c in CASES.items() if fields in name]
    return case


def _setup(case: LayerCase, key, dtype=jnp.float32, batch=2):
    kx, kw, kr, kdx, kdw = jr.split(key, 5)

    def normal(key, shape):
        if jnp.issubdtype(dtype, jnp.complexfloating):
            k1, k2 = jr.split(key)
            real = jnp.finfo(dtype).dtype
            return lax.complex(jr.normal(k1, shape, real), jr.normal(k2, shape, real))
        return jr.normal(key, shape, dtype)

    kernel = case.tuple_of("kernel_size")
    xs = normal(kx, (batch, case.in_channels, *case.spatial))
    w = normal(kw, (case.out_channels, case.in_channels // case.groups, *kernel))
    stride = case.tuple_of("stride")
    dilation = case.tuple_of("dilation")
    input_dilation = case.tuple_of("input_dilation")
    pairs = explicit_pairs(
        case.padding, case.spatial, kernel, stride, dilation, input_dilation
    )
    mode = explicit_mode(case.padding, case.padding_mode)

    def ours(x, w):
        return eqxconv.conv(
            x,
            w,
            padding=case.padding,
            padding_mode=case.padding_mode,
            input_dilation=input_dilation,
            impl="fft",
            stride=stride,
            dilation=dilation,
            groups=case.groups,
        )

    def oracle(x, w):
        return lax_conv(
            x, w, stride=stride, pairs=pairs, dilation=dilation, groups=case.groups,
            mode=mode, input_dilation=input_dilation,
        )  # fmt: skip

    out_spatial = jax.eval_shape(oracle, xs[0], w).shape[1:]
    r = normal(kr, (batch, case.out_channels, *out_spatial))
    dxs = normal(kdx, xs.shape)
    dw = normal(kdw, w.shape)
    return ours, oracle, (xs, w, r, dxs, dw)


def _assert_close(actual, expected, rtol):
    wide = np.complex128 if jnp.iscomplexobj(actual) else np.float64
    actual = np.asarray(actual).astype(wide)
    expected = np.asarray(expected).astype(wide)
    assert actual.shape == expected.shape
    scale = np.max(np.abs(expected))
    error = np.max(np.abs(actual - expected))
    assert error <= rtol * scale, (error, scale)


def _assert_all_close(actual, expected, rtol):
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        _assert_close(a, b, rtol)


@pytest.mark.parametrize("name", list(CASES))
def test_values_vjp_and_jvp_match_lax(name, getkey):
    ours, oracle, args = _setup(CASES[name], getkey())
    _assert_all_close(value_vjp_jvp(ours)(*args), value_vjp_jvp(oracle)(*args), 1e-5)


def test_lowers_to_ffts_only(getkey):
    ours, _, (xs, w, *_) = _setup(_case("dilation=(2, 1)"), getkey())
    jaxpr = str(
        jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(ours(x, w) ** 2)))(xs[0], w)
    )
    assert "fft" in jaxpr
    assert "conv_general_dilated" not in jaxpr


@pytest.mark.parametrize("name", ["stride=3", "stride=(1, 3)"])
def test_complex(name, getkey):
    ours, oracle, args = _setup(_case(name), getkey(), jnp.complex64)
    results = value_vjp_jvp(ours)(*args)
    assert results[0].dtype == jnp.complex64
    _assert_all_close(results, value_vjp_jvp(oracle)(*args), 1e-5)


def test_float64(getkey):
    with jax.enable_x64(True):
        ours, oracle, args = _setup(_case("dilation=(2, 1)"), getkey(), jnp.float64)
        results = value_vjp_jvp(ours)(*args)
        assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(results))
        _assert_all_close(results, value_vjp_jvp(oracle)(*args), 1e-12)


def test_bfloat16_computes_in_float32(getkey):
    ours, oracle, args = _setup(_case("kernel_size=33"), getkey(), jnp.bfloat16)
    y, (gx, gw), ty = value_vjp_jvp(ours)(*args)
    assert y.dtype == gx.dtype == gw.dtype == ty.dtype == jnp.bfloat16
    y0, (gx0, gw0), ty0 = value_vjp_jvp(oracle)(*(a.astype(jnp.float32) for a in args))
    # Only the result's rounding to bfloat16 (2**-8): the sum is taken in float32.
    for a, b in [(y, y0), (gx, gx0), (gw, gw0), (ty, ty0)]:
        _assert_close(a, b, 2e-2)
    # A float32 result of bfloat16 inputs is exact to float32 FFT rounding.
    xs, w = args[0], args[1]
    wide = jax.vmap(
        lambda x: eqxconv.conv(
            x, w, padding="CAUSAL", impl="fft", preferred_element_type=jnp.float32
        )
    )(xs)
    assert wide.dtype == jnp.float32
    _assert_close(wide, y0, 1e-5)


def test_check_grads_second_order(getkey):
    with jax.enable_x64(True):
        ours, _, (xs, w, *_) = _setup(_case("stride=3"), getkey(), jnp.float64, batch=1)
        f = jax.jit(jax.vmap(ours, in_axes=(0, None)))
        check_grads(f, (xs, w), order=2, modes=("fwd", "rev"))


def test_grad_of_nonlinear_loss_matches_lax(getkey):
    ours, oracle, (xs, w, *_) = _setup(_case("kernel_size=9"), getkey())

    def grad(f):
        return jax.jit(
            jax.grad(
                lambda x, w: jnp.sum(jax.vmap(f, in_axes=(0, None))(x, w) ** 2),
                argnums=(0, 1),
            )
        )(xs, w)

    for a, b in zip(grad(ours), grad(oracle), strict=True):
        _assert_close(a, b, 1e-5)


def test_vmap_equals_loop_and_jit_equals_eager(getkey):
    ours, oracle, (xs, w, *_) = _setup(_case("padding=((3, 1),)"), getkey(), batch=3)
    batched = jax.jit(jax.vmap(ours, in_axes=(0, None)))(xs, w)
    for i in range(xs.shape[0]):
        eager = ours(xs[i], w)
        np.testing.assert_allclose(batched[i], eager, rtol=1e-6, atol=1e-6)
        _assert_close(eager, oracle(xs[i], w), 1e-5)


def test_layer_matches_equinox(getkey):
    layer = eqxconv.Conv2d(
        4, 6, (7, 5), stride=2, padding=3, groups=2, padding_mode="REFLECT",
        impl="fft", key=getkey(),
    )  # fmt: skip
    reference = eqx.nn.Conv2d(
        4, 6, (7, 5), stride=2, padding=3, groups=2, padding_mode="REFLECT",
        key=getkey(),
    )  # fmt: skip
    reference = eqx.tree_at(
        lambda m: (m.weight, m.bias), reference, (layer.weight, layer.bias)
    )
    xs = jr.normal(getkey(), (2, 4, 15, 14))
    ours = jax.jit(jax.vmap(layer))(xs)
    _assert_close(ours, jax.jit(jax.vmap(reference))(xs), 1e-5)
    assert ours.shape == (2, 6, *layer.out_spatial_shape((15, 14)))
