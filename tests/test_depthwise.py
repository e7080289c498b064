"""The shift-and-multiply-add lowering of depthwise and small-group convolutions.

Every check compares `impl="shift"` (or `"auto"`) against independent oracles:
`lax.conv_general_dilated` on an input padded by `jnp.pad`, and PyTorch.
"""

import math

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.test_util import check_grads

import eqxconv

from .helpers import torch_conv


JNP_MODES = {"ZEROS": "constant", "REFLECT": "reflect", "REPLICATE": "edge"}
JNP_MODES["CIRCULAR"] = "wrap"


def _pairs(padding, spatial, kernel, stride, dilation):
    """Explicit `(low, high)` pairs, computed here independently of eqxconv."""
    n = len(spatial)
    if isinstance(padding, int):
        return ((padding, padding),) * n
    if isinstance(padding, str):
        pairs = []
        for size, k, s, d in zip(spatial, kernel, stride, dilation, strict=True):
            extent = d * (k - 1) + 1
            if padding == "VALID":
                pairs.append((0, 0))
            elif padding == "CAUSAL":
                pairs.append((extent - 1, 0))
            else:
                total = max((-(-size // s) - 1) * s + extent - size, 0)
                lo, hi = total // 2, total - total // 2
                pairs.append((lo, hi) if padding == "SAME" else (hi, lo))
        return tuple(pairs)
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _oracle(x, w, *, stride, pairs, dilation, groups, mode):
    """`jnp.pad` then a VALID `lax.conv_general_dilated` on an unbatched input."""
    widths = ((0, 0), *pairs)
    xp = jnp.pad(x, widths, mode=JNP_MODES[mode])  # pyright: ignore[reportArgumentType]
    return lax.conv_general_dilated(
        xp[None],
        w,
        window_strides=stride,
        padding="VALID",
        rhs_dilation=dilation,
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )[0]


# (n, spatial, in_channels, groups, out_channels, kernel, stride, dilation, padding,
#  mode): depthwise, channel multipliers, small groups; every padding form and mode.
CASES = {
    "1d-depthwise-same": (1, (11,), 3, 3, 3, (3,), (1,), (1,), "SAME", "ZEROS"),
    "1d-mult2-causal-dil2": (1, (12,), 2, 2, 4, (3,), (1,), (2,), "CAUSAL", "ZEROS"),
    "1d-stride2-reflect": (1, (13,), 4, 4, 4, (5,), (2,), (1,), 2, "REFLECT"),
    "1d-smallgroup": (1, (10,), 4, 2, 6, (3,), (1,), (1,), 1, "ZEROS"),
    "2d-depthwise-pad1": (2, (7, 8), 4, 4, 4, (3, 3), (1, 1), (1, 1), 1, "ZEROS"),
    "2d-mult3-valid-stride2": (
        2, (9, 8), 2, 2, 6, (3, 2), (2, 1), (1, 1), "VALID", "ZEROS",
    ),
    "2d-dil2-circular": (
        2, (8, 7), 3, 3, 3, (3, 3), (1, 1), (2, 1), "SAME", "CIRCULAR",
    ),
    "2d-pairs-replicate-stride": (
        2, (9, 7), 2, 2, 2, (3, 3), (2, 3), (1, 2), ((0, 2), (1, 1)), "REPLICATE",
    ),
    "2d-same_lower-stride2": (
        2, (7, 9), 3, 3, 3, (4, 3), (2, 2), (1, 1), "SAME_LOWER", "ZEROS",
    ),
    "2d-blocks-mult2": (2, (12, 10), 2, 2, 4, (3, 3), (1, 1), (1, 1), "SAME", "ZEROS"),
    "2d-7x7": (2, (7, 8), 2, 2, 2, (7, 7), (1, 1), (1, 1), 3, "ZEROS"),
    "2d-smallgroup-mult": (2, (6, 7), 4, 2, 4, (3, 3), (1, 2), (1, 1), 1, "REFLECT"),
    "3d-depthwise": (
        3, (5, 6, 4), 2, 2, 2, (3, 3, 2), (1, 1, 1), (1, 1, 1), 1, "ZEROS",
    ),
    "3d-mult2-stride-dil": (
        3, (7, 6, 5), 2, 2, 4, (3, 2, 2), (2, 1, 1), (1, 2, 1), "SAME", "REPLICATE",
    ),
}  # fmt: skip


def _setup(case, key, dtype=jnp.float32, batch=2):
    n, spatial, c_in, groups, c_out, kernel, stride, dilation, padding, mode = case
    kx, kw, kr, kdx, kdw = jr.split(key, 5)
    xs = jr.normal(kx, (batch, c_in, *spatial), dtype)
    w = jr.normal(kw, (c_out, c_in // groups, *kernel), dtype)
    pairs = _pairs(padding, spatial, kernel, stride, dilation)
    conf = dict(stride=stride, dilation=dilation, groups=groups)
    out_spatial = tuple(
        (size + lo + hi - d * (k - 1) - 1) // s + 1
        for size, (lo, hi), k, s, d in zip(
            spatial, pairs, kernel, stride, dilation, strict=True
        )
    )
    r = jr.normal(kr, (batch, c_out, *out_spatial), dtype)
    dxs = jr.normal(kdx, xs.shape, dtype)
    dw = jr.normal(kdw, w.shape, dtype)

    def ours(x, w):
        return eqxconv.conv(
            x, w, padding=padding, padding_mode=mode, impl="shift", **conf
        )

    def oracle(x, w):
        return _oracle(x, w, pairs=pairs, mode=mode, **conf)

    return ours, oracle, (xs, w, r, dxs, dw), pairs


def _derivatives(f):
    """Value, VJP (of `sum(y * r)`) and JVP of `jax.vmap(f)`, in one jitted call."""

    @jax.jit
    def run(xs, w, r, dxs, dw):
        batched = jax.vmap(f, in_axes=(0, None))
        y, vjp = jax.vjp(batched, xs, w)
        _, ty = jax.jvp(batched, (xs, w), (dxs, dw))
        return y, vjp(r), ty

    return run


@pytest.mark.parametrize("name", list(CASES))
def test_matches_lax_and_torch(name, getkey):
    ours, oracle, args, pairs = _setup(CASES[name], getkey())
    y, (gx, gw), ty = _derivatives(ours)(*args)
    y0, (gx0, gw0), ty0 = _derivatives(oracle)(*args)
    np.testing.assert_allclose(y, y0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gx, gx0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, gw0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ty, ty0, rtol=1e-4, atol=1e-4)
    _, _, c_in, groups, _, _, stride, dilation, _, mode = CASES[name]
    xs, w = args[0], args[1]
    expected = torch_conv(
        xs[0],
        w,
        stride=stride,
        pairs=pairs,
        dilation=dilation,
        groups=groups,
        mode=mode,
    )
    np.testing.assert_allclose(y[0], expected, rtol=1e-4, atol=1e-4)


# Second-order checks in float64, fwd and rev, on a few small cases.
GRAD_CASES = {
    "1d-mult2-blocks": (1, (68,), 2, 2, 4, (3,), (1,), (2,), "SAME", "REFLECT"),
    "2d-smallgroup": (2, (5, 4), 4, 2, 2, (2, 2), (1, 2), (2, 1), 1, "CIRCULAR"),
    "3d-depthwise": (
        3, (3, 3, 4), 2, 2, 2, (2, 1, 2), (1, 1, 2), (1, 1, 1), 1, "ZEROS",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_check_grads_second_order(name, getkey):
    with jax.enable_x64(True):
        ours, _, (xs, w, *_), _ = _setup(GRAD_CASES[name], getkey(), jnp.float64, 1)
        f = jax.jit(jax.vmap(ours, in_axes=(0, None)))
        check_grads(f, (xs, w), order=2, modes=("fwd", "rev"))


def test_higher_order_matches_lax(getkey):
    """Hessian-vector products (reverse over reverse, forward over reverse) and
    `jacfwd` equal those of the lax oracle."""
    ours, oracle, (xs, w, r, dxs, dw), _ = _setup(
        CASES["2d-mult3-valid-stride2"], getkey()
    )

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


def test_vmap_equals_loop(getkey):
    ours, oracle, (xs, w, *_), _ = _setup(
        CASES["2d-smallgroup-mult"], getkey(), batch=3
    )
    batched = jax.jit(jax.vmap(ours, in_axes=(0, None)))(xs, w)
    single = jax.jit(ours)
    for i in range(xs.shape[0]):
        np.testing.assert_allclose(batched[i], single(xs[i], w), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(batched[i], oracle(xs[i], w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
def test_dtypes(dtype, getkey):
    with jax.enable_x64(dtype == jnp.float64):
        ours, oracle, (xs, w, r, dxs, dw), _ = _setup(
            CASES["2d-depthwise-pad1"], getkey(), dtype
        )
        y, (gx, gw), ty = _derivatives(ours)(xs, w, r, dxs, dw)
        f32 = [a.astype(jnp.float32) for a in (xs, w, r, dxs, dw)]
        y0, (gx0, gw0), ty0 = _derivatives(oracle)(*f32)
        assert y.dtype == gx.dtype == gw.dtype == ty.dtype == dtype
        tol = 5e-2 if dtype == jnp.bfloat16 else 1e-4
        for a, b in [(y, y0), (gx, gx0), (gw, gw0), (ty, ty0)]:
            np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=tol, atol=tol * 4)


def _uses_lax_conv(f, *args) -> bool:
    return "conv_general_dilated" in str(jax.make_jaxpr(f)(*args))


def test_auto_heuristic(getkey):
    x = jr.normal(getkey(), (8, 6, 6))
    depthwise = jr.normal(getkey(), (16, 1, 3, 3))
    dense = jr.normal(getkey(), (4, 8, 3, 3))

    def conv(impl, w, groups):
        return lambda x: eqxconv.conv(x, w, groups=groups, padding=1, impl=impl)

    on_cpu = jax.default_backend() == "cpu"
    assert _uses_lax_conv(conv("auto", depthwise, 8), x) != on_cpu
    assert _uses_lax_conv(conv("xla", depthwise, 8), x)
    assert not _uses_lax_conv(conv("shift", depthwise, 8), x)
    assert _uses_lax_conv(conv("auto", dense, 1), x)
    # Small groups: 2 or 4 input channels per group (3x3: 18 or 36 products) take the
    # shift path by default; 8 (the dense case above) do not.
    small = jr.normal(getkey(), (8, 2, 3, 3))
    assert _uses_lax_conv(conv("auto", small, 4), x) != on_cpu
    assert _uses_lax_conv(conv("auto", dense[:, :4], 2), x) != on_cpu

    # Beyond 49 products per output (compile time) and input dilation: lax.
    big, x9 = jr.normal(getkey(), (8, 1, 9, 9)), jr.normal(getkey(), (8, 9, 9))
    assert _uses_lax_conv(conv("auto", big, 8), x9)
    assert not _uses_lax_conv(conv("shift", big, 8), x9)

    def dilated(x):
        return eqxconv.conv(x, depthwise, groups=8, input_dilation=2, impl="AUTO")

    assert _uses_lax_conv(dilated, x)


def test_layer_impl(getkey):
    layer = eqxconv.Conv2d(
        4, 8, 3, padding="SAME", groups=4, key=getkey(), impl="shift"
    )
    assert layer.impl == "shift"
    x = jr.normal(getkey(), (2, 4, 6, 5))
    out = jax.jit(jax.vmap(layer))(x)
    assert layer.bias is not None
    expected = jax.vmap(
        lambda x: _oracle(
            x, layer.weight, stride=(1, 1), pairs=((1, 1), (1, 1)), dilation=(1, 1),
            groups=4, mode="ZEROS",
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
    case = (2, (6, 5), 3, 1, 2, (2, 3), (1, 2), (1, 1), "SAME", "ZEROS")
    ours, oracle, args, _ = _setup(case, getkey())
    y, (gx, gw), ty = _derivatives(ours)(*args)
    y0, (gx0, gw0), ty0 = _derivatives(oracle)(*args)
    for a, b in [(y, y0), (gx, gx0), (gw, gw0), (ty, ty0)]:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert math.prod(y.shape) > 0
