"""The shift-and-multiply-add lowering of depthwise and small-group convolutions.

Every check compares `impl="shift"` (or `"auto"`) against independent oracles:
`lax.conv_general_dilated` on an input padded by `jnp.pad`, and PyTorch.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqxconv

from .cases import conv, LayerCase
from .helpers import uses_lax_conv, value_vjp_jvp
from .oracles import explicit_mode, explicit_pairs, lax_conv, torch_conv


DEPTHWISE = conv((7, 8), in_channels=4, groups=4, out_channels=4, padding=1)
MULTIPLIER_STRIDED = conv(
    (9, 8), groups=2, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding="VALID"
)
# Depthwise, channel multipliers, small groups; every padding form and mode.
CASES = {
    case.id: case
    for case in [
        conv((11,), in_channels=3, groups=3, out_channels=3, padding="SAME"),
        conv((12,), groups=2, out_channels=4, padding="CAUSAL", dilation=2),
        conv((13,), in_channels=4, groups=4, out_channels=4, kernel_size=5,
             stride=2, padding=2, padding_mode="REFLECT"),
        conv((10,), in_channels=4, groups=2, out_channels=6, padding=1),
        DEPTHWISE,
        MULTIPLIER_STRIDED,
        conv((8, 7), in_channels=3, groups=3, out_channels=3, dilation=(2, 1),
             padding="SAME", padding_mode="CIRCULAR"),
        conv((9, 7), groups=2, stride=(2, 3), dilation=(1, 2),
             padding=((0, 2), (1, 1)), padding_mode="REPLICATE"),
        conv((7, 9), in_channels=3, groups=3, out_channels=3, kernel_size=(4, 3),
             stride=2, padding="SAME_LOWER"),
        conv((12, 10), groups=2, out_channels=4, padding="SAME"),
        conv((7, 8), groups=2, kernel_size=7, padding=3),
        conv((6, 7), in_channels=4, groups=2, out_channels=4, stride=(1, 2),
             padding=1, padding_mode="REFLECT"),
        conv((5, 6, 4), groups=2, kernel_size=(3, 3, 2), padding=1),
        conv((7, 6, 5), groups=2, out_channels=4, kernel_size=(3, 2, 2),
             stride=(2, 1, 1), dilation=(1, 2, 1), padding="SAME",
             padding_mode="REPLICATE"),
    ]
}  # fmt: skip


def _setup(case: LayerCase, key, dtype=jnp.float32, batch=2):
    kx, kw, kr, kdx, kdw = jr.split(key, 5)
    kernel, stride, dilation = (case.tuple_of(f) for f in ("kernel_size", "stride",
                                                           "dilation"))  # fmt: skip
    xs = jr.normal(kx, (batch, case.in_channels, *case.spatial), dtype)
    w = jr.normal(kw, (case.out_channels, case.in_channels // case.groups, *kernel),
                  dtype)  # fmt: skip
    pairs = explicit_pairs(case.padding, case.spatial, kernel, stride, dilation)
    mode = explicit_mode(case.padding, case.padding_mode)
    conf: dict[str, Any] = dict(stride=stride, dilation=dilation, groups=case.groups)
    out_spatial = tuple(
        (size + lo + hi - d * (k - 1) - 1) // s + 1
        for size, (lo, hi), k, s, d in zip(
            case.spatial, pairs, kernel, stride, dilation, strict=True
        )
    )
    r = jr.normal(kr, (batch, case.out_channels, *out_spatial), dtype)
    dxs = jr.normal(kdx, xs.shape, dtype)
    dw = jr.normal(kdw, w.shape, dtype)

    def ours(x, w):
        return eqxconv.conv(
            x, w, padding=case.padding, padding_mode=case.padding_mode,
            impl="shift", **conf,
        )  # fmt: skip

    def oracle(x, w):
        return lax_conv(x, w, pairs=pairs, mode=mode, **conf)

    return ours, oracle, (xs, w, r, dxs, dw), pairs


@pytest.mark.parametrize("name", list(CASES))
def test_matches_lax_and_torch(name, getkey):
    ours, oracle, args, pairs = _setup(CASES[name], getkey())
    y, (gx, gw), ty = value_vjp_jvp(ours)(*args)
    y0, (gx0, gw0), ty0 = value_vjp_jvp(oracle)(*args)
    np.testing.assert_allclose(y, y0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gx, gx0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, gw0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ty, ty0, rtol=1e-4, atol=1e-4)
    case = CASES[name]
    xs, w = args[0], args[1]
    expected = torch_conv(
        xs[0],
        w,
        stride=case.tuple_of("stride"),
        pairs=pairs,
        dilation=case.tuple_of("dilation"),
        groups=case.groups,
        mode=explicit_mode(case.padding, case.padding_mode),
    )
    np.testing.assert_allclose(y[0], expected, rtol=1e-4, atol=1e-4)


def test_higher_order_matches_lax(getkey):
    """Hessian-vector products (reverse over reverse, forward over reverse) and
    `jacfwd` equal those of the lax oracle."""
    ours, oracle, (xs, w, r, dxs, dw), _ = _setup(MULTIPLIER_STRIDED, getkey())

    def hvps(f):
        def loss(x, w):
            return jnp.sum(jnp.sin(jax.vmap(f, in_axes=(0, None))(x, w)) * r)

        @jax.jit
        def run(x, w):
            grad = jax.grad(loss, argnums=(0, 1))

            def directional(x, w):
                gx, gw = grad(x, w)
                return jnp.vdot(gx, dxs) + jnp.vdot(gw, dw)

            rr = jax.grad(directional, argnums=(0, 1))(x, w)
            fr = jax.jvp(grad, (x, w), (dxs, dw))[1]
            jf = jax.jacfwd(lambda w: f(x[0], w))(w)
            return rr, fr, jf

        return run(xs, w)

    for a, b in zip(
        jax.tree.leaves(hvps(ours)), jax.tree.leaves(hvps(oracle)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
def test_dtypes(dtype, getkey):
    with jax.enable_x64(dtype == jnp.float64):
        ours, oracle, (xs, w, r, dxs, dw), _ = _setup(DEPTHWISE, getkey(), dtype)
        y, (gx, gw), ty = value_vjp_jvp(ours)(xs, w, r, dxs, dw)
        f32 = [a.astype(jnp.float32) for a in (xs, w, r, dxs, dw)]
        y0, (gx0, gw0), ty0 = value_vjp_jvp(oracle)(*f32)
        assert y.dtype == gx.dtype == gw.dtype == ty.dtype == dtype
        tol = 5e-2 if dtype == jnp.bfloat16 else 1e-4
        for a, b in [(y, y0), (gx, gx0), (gw, gw0), (ty, ty0)]:
            np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=tol, atol=tol * 4)


def test_auto_heuristic(getkey):
    x = jr.normal(getkey(), (8, 6, 6))
    depthwise = jr.normal(getkey(), (16, 1, 3, 3))
    dense = jr.normal(getkey(), (4, 8, 3, 3))

    def conv(impl, w, groups):
        return lambda x: eqxconv.conv(x, w, groups=groups, padding=1, impl=impl)

    on_cpu = jax.default_backend() == "cpu"
    assert uses_lax_conv(conv("auto", depthwise, 8), x) != on_cpu
    assert uses_lax_conv(conv("xla", depthwise, 8), x)
    assert not uses_lax_conv(conv("shift", depthwise, 8), x)
    assert uses_lax_conv(conv("auto", dense, 1), x)
    # 2 and 4 input channels per group (3x3: 18 and 36 products) take the shift path
    # by default on CPU.
    small = jr.normal(getkey(), (8, 2, 3, 3))
    assert uses_lax_conv(conv("auto", small, 4), x) != on_cpu
    four = jax.make_jaxpr(conv("auto", dense[:, :4], 2))(x)
    assert "fft" not in str(four)
    assert uses_lax_conv(conv("auto", dense[:, :4], 2), x) != on_cpu

    # Beyond 36 products per output the shift lowering is only taken when asked for
    # (the FFT's on CPU); with input dilation, lax.
    big, x9 = jr.normal(getkey(), (8, 1, 9, 9)), jr.normal(getkey(), (8, 9, 9))
    assert "fft" in str(jax.make_jaxpr(conv("auto", big, 8))(x9)) or not on_cpu
    assert not uses_lax_conv(conv("shift", big, 8), x9)

    def dilated(x):
        return eqxconv.conv(x, depthwise, groups=8, input_dilation=2, impl="AUTO")

    assert uses_lax_conv(dilated, x)


def test_layer_impl(getkey):
    layer = eqxconv.Conv2d(
        4, 8, 3, padding="SAME", groups=4, key=getkey(), impl="shift"
    )
    assert layer.impl == "shift"
    x = jr.normal(getkey(), (2, 4, 6, 5))
    out = jax.jit(jax.vmap(layer))(x)
    assert layer.bias is not None
    expected = jax.vmap(
        lambda x: lax_conv(
            x, layer.weight, stride=(1, 1), pairs=((1, 1), (1, 1)), dilation=(1, 1),
            groups=4,
        )
    )(x) + layer.bias[None]  # fmt: skip
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    for cls in [eqxconv.Conv1d, eqxconv.Conv3d]:
        assert cls(2, 2, 1, groups=2, key=getkey(), impl="xla").impl == "xla"
    assert eqxconv.Conv(2, 2, 2, 1, key=getkey()).impl == "auto"


def test_impl_errors(getkey):
    x = jnp.ones((2, 5, 5))
    w = jnp.ones((2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"`impl`.*'auto', 'xla', 'shift'.*'fast'"):
        eqxconv.conv(x, w, groups=2, impl="fast")
    with pytest.raises(TypeError, match=r"`impl`"):
        eqxconv.conv(x, w, groups=2, impl=None)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match=r"`impl`.*'bogus'"):
        eqxconv.Conv2d(2, 2, 3, groups=2, key=getkey(), impl="bogus")
    with pytest.raises(ValueError, match=r"impl='shift'.*input_dilation"):
        eqxconv.conv(x, w, groups=2, input_dilation=2, impl="shift")


def test_shift_dense_groups_also_correct(getkey):
    """Forced on an ordinary (groups=1) conv, the lowering is still exact."""
    case = conv((6, 5), in_channels=3, kernel_size=(2, 3), stride=(1, 2),
                padding="SAME")  # fmt: skip
    ours, oracle, args, _ = _setup(case, getkey())
    y, (gx, gw), ty = value_vjp_jvp(ours)(*args)
    y0, (gx0, gw0), ty0 = value_vjp_jvp(oracle)(*args)
    for a, b in [(y, y0), (gx, gx0), (gw, gw0), (ty, ty0)]:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert math.prod(y.shape) > 0
