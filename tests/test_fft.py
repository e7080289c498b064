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


JNP_MODES = {
    "ZEROS": "constant",
    "REFLECT": "reflect",
    "REPLICATE": "edge",
    "CIRCULAR": "wrap",
}


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


# (spatial, in_channels, groups, out_channels, kernel, stride, dilation, padding,
#  mode, input_dilation): every padding form and mode, strides, dilations, groups.
CASES = {
    "1d-same": ((20,), 3, 1, 4, (5,), (1,), (1,), "SAME", "ZEROS", (1,)),
    "1d-stride3-dil2-groups2": ((31,), 4, 2, 6, (4,), (3,), (2,), 3, "ZEROS", (1,)),
    "1d-causal-long": ((64,), 2, 1, 3, (33,), (1,), (1,), "CAUSAL", "ZEROS", (1,)),
    "1d-depthwise-long": ((50,), 4, 4, 8, (21,), (1,), (1,), "SAME", "ZEROS", (1,)),
    "1d-valid-prime-length": ((37,), 2, 1, 2, (6,), (2,), (1,), "VALID", "ZEROS", (1,)),
    "1d-pairs-reflect": ((17,), 2, 1, 3, (5,), (2,), (1,), ((3, 1),), "REFLECT", (1,)),
    "1d-replicate-dil3": ((19,), 3, 3, 3, (3,), (1,), (3,), "SAME", "REPLICATE", (1,)),
    "1d-circular": ((16,), 2, 1, 2, (7,), (1,), (1,), "SAME", "CIRCULAR", (1,)),
    "1d-input-dilation": ((9,), 2, 1, 3, (4,), (2,), (1,), 2, "ZEROS", (2,)),
    "2d-same_lower-stride2": (
        (11, 12), 3, 1, 4, (4, 3), (2, 2), (1, 1), "SAME_LOWER", "ZEROS", (1, 1),
    ),
    "2d-groups3-dil-reflect": (
        (10, 9), 6, 3, 6, (3, 3), (1, 2), (2, 1), 2, "REFLECT", (1, 1),
    ),
    "2d-pairs-replicate": (
        (9, 8), 2, 1, 4, (3, 5), (1, 3), (1, 1), ((0, 2), (3, 1)), "REPLICATE", (1, 1),
    ),
    "2d-circular-large-kernel": (
        (16, 16), 2, 2, 4, (9, 9), (1, 1), (1, 1), "SAME", "CIRCULAR", (1, 1),
    ),
    "2d-causal-input-dilation": (
        (6, 7), 2, 1, 2, (3, 2), (1, 2), (1, 1), "CAUSAL", "ZEROS", (2, 3),
    ),
    "3d-stride-groups": (
        (7, 6, 8), 4, 2, 4, (3, 2, 3), (2, 1, 2), (1, 2, 1), "SAME", "ZEROS", (1, 1, 1),
    ),
    "3d-replicate": (
        (5, 6, 5), 2, 1, 3, (2, 3, 2), (1, 1, 1), (1, 1, 1), 1, "REPLICATE", (1, 1, 1),
    ),
}  # fmt: skip


def _oracle(x, w, *, stride, pairs, dilation, groups, mode, input_dilation):
    """`jnp.pad` (non-zero modes) then `lax.conv_general_dilated`, unbatched."""
    if mode != "ZEROS":
        widths = ((0, 0), *pairs)
        x = jnp.pad(x, widths, mode=JNP_MODES[mode])  # pyright: ignore[reportArgumentType]
        pairs = ((0, 0),) * len(pairs)
    return lax.conv_general_dilated(
        x[None],
        w,
        window_strides=stride,
        padding=pairs,
        lhs_dilation=input_dilation,
        rhs_dilation=dilation,
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )[0]


def _setup(case, key, dtype=jnp.float32, batch=2):
    spatial, c_in, groups, c_out, kernel, stride, dilation, padding, mode, idil = case
    kx, kw, kr, kdx, kdw = jr.split(key, 5)

    def normal(key, shape):
        if jnp.issubdtype(dtype, jnp.complexfloating):
            k1, k2 = jr.split(key)
            real = jnp.finfo(dtype).dtype
            return lax.complex(jr.normal(k1, shape, real), jr.normal(k2, shape, real))
        return jr.normal(key, shape, dtype)

    xs = normal(kx, (batch, c_in, *spatial))
    w = normal(kw, (c_out, c_in // groups, *kernel))
    extent = tuple((size - 1) * i + 1 for size, i in zip(spatial, idil, strict=True))
    pairs = _pairs(padding, extent, kernel, stride, dilation)
    conf = dict(stride=stride, dilation=dilation, groups=groups)
    out_spatial = tuple(
        (size + lo + hi - d * (k - 1) - 1) // s + 1
        for size, (lo, hi), k, s, d in zip(
            extent, pairs, kernel, stride, dilation, strict=True
        )
    )
    r = normal(kr, (batch, c_out, *out_spatial))
    dxs = normal(kdx, xs.shape)
    dw = normal(kdw, w.shape)

    def ours(x, w):
        return eqxconv.conv(
            x,
            w,
            padding=padding,
            padding_mode=mode,
            input_dilation=idil,
            impl="fft",
            **conf,
        )

    def oracle(x, w):
        return _oracle(x, w, pairs=pairs, mode=mode, input_dilation=idil, **conf)

    return ours, oracle, (xs, w, r, dxs, dw)


def _derivatives(f):
    """Value, VJP (cotangent `r`) and JVP of `jax.vmap(f)`, in one jitted call."""

    @jax.jit
    def run(xs, w, r, dxs, dw):
        batched = jax.vmap(f, in_axes=(0, None))
        y, vjp = jax.vjp(batched, xs, w)
        _, ty = jax.jvp(batched, (xs, w), (dxs, dw))
        return y, vjp(r), ty

    return run


def _assert_close(actual, expected, rtol):
    wide = np.complex128 if jnp.iscomplexobj(actual) else np.float64
    actual = np.asarray(actual).astype(wide)
    expected = np.asarray(expected).astype(wide)
    assert actual.shape == expected.shape
    scale = np.max(np.abs(expected))
    error = np.max(np.abs(actual - expected))
    assert error <= rtol * scale, (error, scale)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_lax(name, getkey):
    ours, oracle, args = _setup(CASES[name], getkey())
    for a, b in zip(
        jax.tree.leaves(_derivatives(ours)(*args)),
        jax.tree.leaves(_derivatives(oracle)(*args)),
        strict=True,
    ):
        _assert_close(a, b, 1e-5)


def test_lowers_to_ffts_only(getkey):
    ours, _, (xs, w, *_) = _setup(CASES["2d-groups3-dil-reflect"], getkey())
    jaxpr = str(
        jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(ours(x, w) ** 2)))(xs[0], w)
    )
    assert "fft" in jaxpr
    assert "conv_general_dilated" not in jaxpr


@pytest.mark.parametrize("name", ["1d-stride3-dil2-groups2", "2d-pairs-replicate"])
def test_complex(name, getkey):
    ours, oracle, args = _setup(CASES[name], getkey(), jnp.complex64)
    results = _derivatives(ours)(*args)
    assert results[0].dtype == jnp.complex64
    for a, b in zip(
        jax.tree.leaves(results),
        jax.tree.leaves(_derivatives(oracle)(*args)),
        strict=True,
    ):
        _assert_close(a, b, 1e-5)


def test_float64(getkey):
    with jax.enable_x64(True):
        ours, oracle, args = _setup(
            CASES["2d-groups3-dil-reflect"], getkey(), jnp.float64
        )
        results = _derivatives(ours)(*args)
        assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(results))
        for a, b in zip(
            jax.tree.leaves(results),
            jax.tree.leaves(_derivatives(oracle)(*args)),
            strict=True,
        ):
            _assert_close(a, b, 1e-12)


def test_bfloat16_computes_in_float32(getkey):
    ours, oracle, args = _setup(CASES["1d-causal-long"], getkey(), jnp.bfloat16)
    y, (gx, gw), ty = _derivatives(ours)(*args)
    assert y.dtype == gx.dtype == gw.dtype == ty.dtype == jnp.bfloat16
    y0, (gx0, gw0), ty0 = _derivatives(oracle)(*(a.astype(jnp.float32) for a in args))
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
        ours, _, (xs, w, *_) = _setup(
            CASES["1d-stride3-dil2-groups2"], getkey(), jnp.float64, batch=1
        )
        f = jax.jit(jax.vmap(ours, in_axes=(0, None)))
        check_grads(f, (xs, w), order=2, modes=("fwd", "rev"))


def test_grad_of_nonlinear_loss_matches_lax(getkey):
    ours, oracle, (xs, w, *_) = _setup(CASES["2d-circular-large-kernel"], getkey())

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
    ours, oracle, (xs, w, *_) = _setup(CASES["1d-pairs-reflect"], getkey(), batch=3)
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
