"""`ConvTranspose` and `conv_transpose` against Equinox, PyTorch, lax and the adjoint of
the forward convolution, every lowering with its gradients, and errors."""

from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

import eqxconv
from eqxconv._lowering_transpose import transposed_conv

from .helpers import to_torch, torch_conv_transpose, transpose_weight_layout


CLASSES = {1: eqxconv.ConvTranspose1d, 2: eqxconv.ConvTranspose2d,
           3: eqxconv.ConvTranspose3d}  # fmt: skip
TORCH_CLASSES = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d,
                 3: torch.nn.ConvTranspose3d}  # fmt: skip


def _spatial(size, n):
    return (size,) * n if isinstance(size, int) else tuple(size)


@eqx.filter_jit
def apply(layer, x):
    return layer(x)


def _with_params(layer, weight, bias):
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, bias))


# (n, in, out, kernel, stride, padding, output_padding, dilation, groups, mode, size)
EQUINOX_CONFIGS = [
    (1, 2, 3, 4, 3, "SAME", 2, 1, 1, "ZEROS", 5),
    (1, 2, 2, 5, 2, [(3, 1)], 1, 2, 1, "ZEROS", 6),
    (1, 2, 2, 3, 2, 3, 0, 1, 1, "ZEROS", 6),  # padding > extent - 1: a crop
    (1, 2, 2, 2, 5, "SAME", 1, 1, 1, "ZEROS", 5),  # stride > kernel extent
    (1, 2, 3, 3, 2, "SAME_LOWER", 0, 1, 1, "CIRCULAR", 5),
    (2, 4, 6, 3, 2, 1, 1, 1, 2, "ZEROS", 5),
    (2, 3, 2, 3, 1, 1, 0, 1, 1, "ZEROS", 5),  # stride 1
    (2, 2, 2, 3, (2, 1), "SAME", 0, 2, 1, "CIRCULAR", (5, 4)),
    (2, 2, 4, (2, 3), (3, 2), "VALID", (2, 1), 1, 2, "ZEROS", (4, 5)),
    (3, 2, 2, 3, 2, "VALID", 1, 1, 1, "ZEROS", 4),
    (3, 2, 3, 2, (1, 2, 3), 0, 0, (1, 1, 2), 1, "ZEROS", 3),
]


@pytest.mark.parametrize("config", EQUINOX_CONFIGS, ids=str)
def test_matches_equinox(config, getkey):
    n, cin, cout, k, s, p, a, d, g, mode, size = config
    reference = eqx.nn.ConvTranspose(
        n, cin, cout, k, s, p, a, d, g, padding_mode=mode, key=getkey()
    )
    layer = CLASSES[n](cin, cout, k, s, p, a, d, g, padding_mode=mode, key=getkey())
    layer = _with_params(layer, reference.weight, reference.bias)
    x = jr.normal(getkey(), (cin, *_spatial(size, n)))
    out, expected = apply(layer, x), apply(reference, x)
    assert out.shape == expected.shape
    assert out.shape[1:] == layer.out_spatial_shape(x.shape[1:])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# (n, in, out, kernel, stride, padding, output_padding, dilation, groups, size)
TORCH_CONFIGS = [
    (1, 4, 6, 5, 3, 2, 1, 2, 2, 7),
    (1, 2, 3, 3, 1, 1, 2, 3, 1, 6),  # output_padding >= stride (dilation > stride)
    (1, 3, 2, 16, 8, 4, 0, 1, 1, 9),
    (2, 4, 6, 3, (2, 3), (1, 2), (1, 2), (1, 2), 2, (5, 6)),
    (2, 3, 3, 4, 2, 1, 0, 1, 3, (6, 5)),  # depthwise
    (3, 2, 4, 3, 2, 1, 1, 1, 1, (4, 3, 5)),
    (3, 4, 4, (2, 3, 1), (2, 1, 3), (0, 1, 0), (1, 0, 2), (1, 2, 1), 2, 3),
]


@pytest.mark.parametrize("config", TORCH_CONFIGS, ids=str)
def test_matches_torch(config, getkey):
    n, cin, cout, k, s, p, a, d, g, size = config
    layer = CLASSES[n](cin, cout, k, s, p, a, d, g, key=getkey())
    x = jr.normal(getkey(), (cin, *_spatial(size, n)))
    out = apply(layer, x)
    expected = torch_conv_transpose(
        x, layer.weight, layer.bias, stride=layer.stride,
        padding=_spatial(p, n), output_padding=_spatial(a, n),
        dilation=layer.dilation, groups=g,
    )  # fmt: skip
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _padding_form(form, n):
    """Every padding form of the contract, with a stride/dilation/output_padding that
    exercises it: `(padding, stride, dilation, output_padding)`."""
    return {
        "int": (2, 2, 1, 1),
        "ints": (tuple(range(1, n + 1)), 3, 1, 2),
        "pairs": (((3, 0),) + ((0, 2),) * (n - 1), 2, 2, 1),
        "valid": ("VALID", 3, 1, 1),
        "same": ("SAME", 2, 1, 1),
        "same_lower": ("same_lower", 3, 2, 2),
        "causal": ("CAUSAL", 1, 2, 1),  # output_padding >= stride: truncated conv
        "circular": ("CIRCULAR", 2, 1, 1),
    }[form]


FORMS = ("int", "ints", "pairs", "valid", "same", "same_lower", "causal", "circular")
MODES = ("ZEROS", "REFLECT", "REPLICATE", "CIRCULAR")
ADJOINT_CASES = (
    [(1, form, mode) for form in FORMS for mode in MODES]
    + [(2, form, mode) for form, mode in zip(FORMS, MODES * 2, strict=True)]
    + [
        (2, form, mode)
        for form, mode in zip(FORMS, MODES[2:] + MODES + MODES[:2], strict=True)
    ]
    + [(3, form, mode) for form, mode in zip(FORMS[::2], MODES, strict=True)]
)


@pytest.mark.parametrize("n, form, mode", ADJOINT_CASES)
def test_adjoint_of_forward_conv(n, form, mode):
    """`conv_transpose` is `jax.linear_transpose` of `eqxconv.conv` with the flipped,
    swapped weight, and `<conv(x), y> = <x, conv_transpose(y)>`."""
    padding, s, d, a = _padding_form(form, n)
    if form == "circular" and mode in ("REFLECT", "REPLICATE"):
        mode = "ZEROS"  # 'CIRCULAR' padding sets the mode itself
    groups = 2 if n == 2 else 1
    keys = jr.split(jr.key(n), 2)
    y = jr.normal(keys[0], (2 * groups, *(4, 5, 3)[:n]))
    weight = jr.normal(keys[1], (3 * groups, 2, *(3, 2, 3)[:n]))
    forward_weight = jnp.asarray(transpose_weight_layout(weight, groups))
    args: dict[str, Any] = dict(
        stride=s, padding=padding, dilation=d, groups=groups, padding_mode=mode
    )

    @jax.jit
    def both(y, weight, forward_weight):
        out = eqxconv.conv_transpose(y, weight, output_padding=a, **args)

        def forward(x):
            window = (slice(None), *(slice(0, m) for m in y.shape[1:]))
            return eqxconv.conv(x, forward_weight, **args)[window]

        primal = jax.ShapeDtypeStruct(out.shape, out.dtype)
        (expected,) = jax.linear_transpose(forward, primal)(y)
        x = jr.normal(jr.key(7), out.shape)
        return out, expected, jnp.vdot(forward(x), y), jnp.vdot(x, out)

    out, expected, lhs, rhs = both(y, weight, forward_weight)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize(
    "padding", [0, 2, [(3, 1)], "VALID", "SAME", "SAME_LOWER", "CAUSAL", "CIRCULAR"]
)
def test_conv_round_trip_shapes(stride, dilation, padding, getkey):
    """`Conv` then `ConvTranspose` with the same arguments returns the input's shape
    for exactly one `output_padding < stride`, for every input size."""
    k = 3
    conv = eqxconv.Conv1d(2, 3, k, stride, padding, dilation, key=getkey())
    size, matches = 0, []
    for size in range(dilation * (k - 1) + 1, 12):
        (m,) = conv.out_spatial_shape((size,))
        matches = []
        for a in range(stride):
            t = eqxconv.ConvTranspose1d(3, 2, k, stride, padding, a, dilation,
                                        key=jr.key(0))  # fmt: skip
            if t.out_spatial_shape((m,)) == (size,):
                matches.append(t)
        assert len(matches) == 1, (size, m)
    (t,) = matches
    x = jax.ShapeDtypeStruct((2, size), jnp.float32)
    y = jax.eval_shape(conv, x)
    assert jax.eval_shape(t, y).shape == (2, size)


@pytest.mark.parametrize("n", [2, 3])
def test_conv_round_trip_shapes_nd(n, getkey):
    strides, paddings, dilations = (1, 2, 3)[:n], (0, "SAME", 1)[:n], (2, 1, 1)[:n]
    for padding in (paddings[1], 1):
        conv = eqxconv.Conv(n, 2, 2, 3, strides, padding, dilations, key=getkey())
        shape = (9, 10, 11)[:n]
        out = conv.out_spatial_shape(shape)
        ambiguous = [
            tuple(a) for a in np.ndindex(*strides)
            if eqxconv.ConvTranspose(n, 2, 2, 3, strides, padding, a, dilations,
                                     key=jr.key(0)).out_spatial_shape(out) == shape
        ]  # fmt: skip
        assert len(ambiguous) == 1


# Every lowering against `lax.conv_general_dilated` with `lhs_dilation`.
# (n, channels, out, kernel, stride, dilation, padding pairs, groups, size)
CORE_CONFIGS = [
    (1, 2, 3, 4, 2, 1, ((3, 3),), 1, 5),
    (1, 2, 2, 3, 3, 2, ((-1, 5),), 2, 4),  # negative low padding: a crop
    (1, 1, 2, 2, 4, 1, ((0, 2),), 1, 3),  # stride > kernel extent
    (2, 4, 2, (3, 2), (2, 1), (1, 2), ((2, 1), (2, 0)), 2, (4, 3)),
    (3, 2, 2, 3, 2, 1, ((1, 2),) * 3, 1, 3),
]
LOWERING_IDS = ("phase", "interior", "lhs_dilation")


def _core_case(config, dtype=jnp.float32):
    n, c, o, k, s, d, pairs, g, size = config
    kernel, stride, dilation = (_spatial(v, n) for v in (k, s, d))
    keys = jr.split(jr.key(sum(_spatial(size, n))), 3)
    y = jr.normal(keys[0], (c, *_spatial(size, n)), dtype)
    w = jr.normal(keys[1], (o, c // g, *kernel), dtype)
    static: dict[str, Any] = dict(
        stride=stride, dilation=dilation, padding=pairs, groups=g
    )

    def oracle(y, w):
        return lax.conv_general_dilated(
            y[None], w, (1,) * n, pairs, lhs_dilation=stride, rhs_dilation=dilation,
            feature_group_count=g, precision=lax.Precision.HIGHEST,
        )[0]  # fmt: skip

    return y, w, static, oracle


@pytest.mark.parametrize("lowering", LOWERING_IDS)
@pytest.mark.parametrize("config", CORE_CONFIGS, ids=str)
def test_lowering_values_and_derivatives(lowering, config):
    y, w, static, oracle = _core_case(config)

    def ours(y, w):
        return transposed_conv(y, w, impl=lowering, **static,
                               precision=lax.Precision.HIGHEST)  # fmt: skip

    @jax.jit
    def everything(y, w, ct, y_dot, w_dot):
        results = []
        for f in (ours, oracle):
            out, vjp = jax.vjp(f, y, w)
            _, tangent = jax.jvp(f, (y, w), (y_dot, w_dot))
            results.append((out, *vjp(ct), tangent))
        return results

    out_shape = jax.eval_shape(oracle, y, w).shape
    ct = jr.normal(jr.key(3), out_shape)
    got, expected = everything(y, w, ct, jnp.cos(y), jnp.sin(w))
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


CHECK_GRADS_CASES = [(lowering, CORE_CONFIGS[1]) for lowering in LOWERING_IDS] + [
    ("phase", (2, 2, 2, (3, 2), (2, 3), 1, ((2, 1), (1, 0)), 2, (2, 2)))
]


@pytest.mark.parametrize("lowering, config", CHECK_GRADS_CASES, ids=str)
def test_lowering_check_grads(lowering, config):
    with jax.enable_x64(True):
        y, w, static, _ = _core_case(config, jnp.float64)
        f = jax.jit(lambda y, w: transposed_conv(y, w, impl=lowering, **static))
        check_grads(f, (y, w), order=2, modes=("fwd", "rev"))


def test_layer_check_grads():
    with jax.enable_x64(True):
        layer = eqxconv.ConvTranspose1d(
            4, 2, 3, 2, "SAME", 1, groups=2, padding_mode="REFLECT", key=jr.key(0)
        )
        x = jr.normal(jr.key(1), (4, 3), jnp.float64)
        params, static = eqx.partition(layer, eqx.is_inexact_array)
        f = jax.jit(lambda params, x: eqx.combine(params, static)(x))
        check_grads(f, (params, x), order=2, modes=("fwd", "rev"))


def test_grads_match_torch(getkey):
    layer = eqxconv.ConvTranspose2d(4, 6, 3, 2, 1, 1, groups=2, key=getkey())
    x = jr.normal(getkey(), (4, 5, 6))
    cotangent = jr.normal(getkey(), (6, 10, 12))

    @jax.jit
    def grads(layer, x):
        loss = lambda m, x: jnp.sum(m(x) * cotangent)  # noqa: E731
        return jax.grad(loss, argnums=(0, 1))(layer, x)

    layer_grad, x_grad = grads(layer, x)
    xt = to_torch(x)[None].requires_grad_()
    wt = torch.from_numpy(transpose_weight_layout(layer.weight, 2)).requires_grad_()
    bt = to_torch(layer.bias).reshape(-1).requires_grad_()
    out = torch.nn.functional.conv_transpose2d(
        xt, wt, bt, stride=2, padding=1, output_padding=1, groups=2
    )
    (out[0] * to_torch(cotangent)).sum().backward()
    assert xt.grad is not None and wt.grad is not None and bt.grad is not None
    np.testing.assert_allclose(x_grad, xt.grad[0].numpy(), rtol=1e-4, atol=1e-4)
    weight_grad = transpose_weight_layout(wt.grad.numpy(), 2)
    np.testing.assert_allclose(layer_grad.weight, weight_grad, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        layer_grad.bias.reshape(-1), bt.grad.numpy(), rtol=1e-4, atol=1e-4
    )


def test_forward_mode_equals_reverse_mode(getkey):
    layer = eqxconv.ConvTranspose1d(2, 3, 4, 2, 1, key=getkey())
    x = jr.normal(getkey(), (2, 4))
    forward = jax.jit(jax.jacfwd(lambda x: layer(x)))(x)
    reverse = jax.jit(jax.jacrev(lambda x: layer(x)))(x)
    np.testing.assert_allclose(forward, reverse, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_vmap_jit_and_filter_jit(n, getkey):
    layer = CLASSES[n](3, 2, 3, 2, "SAME", 1, padding_mode="REPLICATE", key=getkey())
    xs = jr.normal(getkey(), (3, 3, *(4, 3, 2)[:n]))
    batched = eqx.filter_jit(lambda m, xs: jax.vmap(m)(xs))(layer, xs)
    jitted = jax.jit(lambda xs: jnp.stack([layer(x) for x in xs]))(xs)
    assert batched.shape == (3, 2, *(layer.out_spatial_shape(xs.shape[2:])))
    np.testing.assert_allclose(batched, jitted, rtol=1e-5, atol=1e-6)


def test_default_init_is_pytorch_transposed_fan_in(getkey):
    layer = eqxconv.ConvTranspose2d(4, 6, (3, 2), groups=2, key=getkey())
    reference = torch.nn.ConvTranspose2d(4, 6, (3, 2), groups=2)
    # PyTorch's bound for this layer, from its own fan-in computation.
    fan_in = torch.nn.init._calculate_fan_in_and_fan_out(reference.weight)[0]
    bound = 1 / np.sqrt(fan_in)
    assert fan_in == (6 // 2) * 3 * 2
    assert layer.weight.shape == (6, 2, 3, 2) and layer.bias is not None
    assert layer.bias.shape == (6, 1, 1)
    for array in (layer.weight, layer.bias):
        assert np.all(np.abs(array) <= bound)
    assert np.max(np.abs(layer.weight)) > 0.8 * bound


def test_kernel_init_bias_init_mask_and_dtypes(getkey):
    mask = np.ones((3, 2, 3), bool)
    mask[:, :, 1] = False
    layer = eqxconv.ConvTranspose1d(
        2, 3, 3, 2, kernel_init=lambda k, s, d: jnp.full(s, 0.5, d),
        bias_init=lambda k, s, d: jnp.zeros(s, d), mask=mask, key=getkey(),
    )  # fmt: skip
    assert np.all(layer.weight == 0.5) and layer.bias is not None
    x = jr.normal(getkey(), (2, 5))
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2)))(layer)
    assert np.all(grads.weight[:, :, 1] == 0) and np.any(grads.weight[:, :, 0] != 0)
    reference = eqx.nn.ConvTranspose1d(2, 3, 3, 2, key=getkey())
    reference = _with_params(
        reference, layer.weight * mask.astype(np.float32), layer.bias
    )
    np.testing.assert_allclose(apply(layer, x), apply(reference, x), rtol=1e-6)
    # Mixed dtypes promote; preferred_element_type is passed through.
    out = apply(layer, x.astype(jnp.bfloat16))
    assert out.dtype == jnp.float32
    half = eqxconv.ConvTranspose1d(2, 3, 3, 2, dtype=jnp.bfloat16, key=getkey(),
                                   preferred_element_type=jnp.float32)  # fmt: skip
    assert half.weight.dtype == jnp.bfloat16
    assert apply(half, x.astype(jnp.bfloat16)).dtype == jnp.float32
    half_grads = eqx.filter_jit(eqx.filter_grad(lambda m, x: jnp.sum(m(x))))(
        half, x.astype(jnp.bfloat16)
    )
    assert half_grads.weight.dtype == jnp.bfloat16


def test_functional_op_matches_layer_and_lowerings_agree(getkey):
    layer = eqxconv.ConvTranspose2d(
        2, 4, 3, (2, 3), ((1, 0), (2, 1)), (1, 2), use_bias=False, key=getkey()
    )
    x = jr.normal(getkey(), (2, 4, 3))

    @jax.jit
    def outs(x, w):
        args: dict[str, Any] = dict(
            stride=(2, 3), padding=((1, 0), (2, 1)), output_padding=(1, 2)
        )
        return [
            eqxconv.conv_transpose(x, w, impl=lowering, **args)
            for lowering in ("auto", *LOWERING_IDS)
        ]

    # PyTorch's symmetric padding cannot say ((1, 0), (2, 1)): crop its full output.
    expected = torch_conv_transpose(
        x, layer.weight, stride=(2, 3), padding=(0, 0), output_padding=(1, 2),
        dilation=(1, 1),
    )[:, 1:10, 2:10]  # fmt: skip
    for out in outs(x, layer.weight):
        assert out.shape == (4, 9, 8) == apply(layer, x).shape
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # The layer takes the same choice of lowering.
    interior = eqxconv.ConvTranspose2d(
        2, 4, 3, (2, 3), ((1, 0), (2, 1)), (1, 2), use_bias=False, impl="interior",
        key=getkey(),
    )  # fmt: skip
    interior = eqx.tree_at(lambda m: m.weight, interior, layer.weight)
    np.testing.assert_allclose(apply(interior, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(groups=2, in_channels=3), "groups"),
        (dict(groups=2, out_channels=3), "groups"),
        (dict(stride=2, output_padding=2), "output_padding"),
        (dict(stride=1, dilation=3, output_padding=1, padding="SAME"), "stride"),
        (dict(output_padding=-1), "output_padding"),
        (dict(padding="full"), "padding"),
        (dict(padding="circular", padding_mode="reflect"), "padding_mode"),
        (dict(padding_mode="mirror"), "padding_mode"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(stride=(1, 2, 3)), "stride"),
    ],
)
def test_construction_errors(kwargs, match, getkey):
    args = dict(in_channels=4, out_channels=4, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=match):
        eqxconv.ConvTranspose2d(**args, key=getkey())


def test_output_padding_allowed_below_dilation(getkey):
    layer = eqxconv.ConvTranspose1d(1, 1, 3, 1, 0, 2, 3, key=getkey())
    assert layer.out_spatial_shape((4,)) == (4 - 1 + 6 + 1 + 2,)
    with pytest.raises(TypeError, match="output_padding"):
        eqxconv.ConvTranspose1d(1, 1, 3, output_padding=0.5, key=getkey())  # pyright: ignore


def test_call_errors(getkey):
    layer = eqxconv.ConvTranspose2d(3, 2, 3, padding=4, key=getkey())
    with pytest.raises(ValueError, match=r"ConvTranspose2d.*vmap"):
        layer(jnp.zeros((5, 3, 6, 6)))
    with pytest.raises(ValueError, match=r"ConvTranspose2d.*3 input channels.*\(2, 6"):
        layer(jnp.zeros((2, 6, 6)))
    with pytest.raises(ValueError, match=r"ConvTranspose2d.*\(3, 2, 2\).*empty"):
        layer(jnp.zeros((3, 2, 2)))
    with pytest.raises(TypeError, match="floating"):
        layer(jnp.zeros((3, 6, 6), jnp.int32))
    with pytest.raises(ValueError, match="impl.*'phase'.*'x'"):
        eqxconv.conv_transpose(jnp.zeros((3, 6)), jnp.zeros((2, 3, 3)), impl="x")
    with pytest.raises(ValueError, match=r"eqxconv.conv_transpose.*channels"):
        eqxconv.conv_transpose(jnp.zeros((2, 6)), jnp.zeros((2, 3, 3)))


def test_repr_and_tree_surgery(getkey):
    layer = eqxconv.ConvTranspose3d(2, 2, 2, 2, key=getkey())
    assert "ConvTranspose3d" in repr(layer)
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    leaves = jax.tree_util.tree_leaves(params)
    assert len(leaves) == 2
    assert layer.out_spatial_shape((3, 4, 5)) == (6, 8, 10)
