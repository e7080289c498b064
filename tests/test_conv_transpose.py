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

from .cases import conv_transpose, LayerCase
from .helpers import apply, with_parameters
from .oracles import (
    lax_conv_transpose_core,
    to_torch,
    torch_conv_transpose,
    transpose_weight_layout,
)


EQUINOX_CASES = [
    conv_transpose((5,), out_channels=3, kernel_size=4, stride=3, padding="SAME",
                   output_padding=2),
    conv_transpose((6,), kernel_size=5, stride=2, padding=[(3, 1)], output_padding=1,
                   dilation=2),
    conv_transpose((6,), stride=2, padding=3),  # padding > extent - 1: a crop
    conv_transpose((5,), kernel_size=2, stride=5, padding="SAME",
                   output_padding=1),  # stride > kernel extent
    conv_transpose((5,), out_channels=3, stride=2, padding="SAME_LOWER",
                   padding_mode="CIRCULAR"),
    conv_transpose((5, 5), in_channels=4, out_channels=6, stride=2, padding=1,
                   output_padding=1, groups=2),
    conv_transpose((5, 5), in_channels=3, padding=1),  # stride 1
    conv_transpose((5, 4), stride=(2, 1), padding="SAME", dilation=2,
                   padding_mode="CIRCULAR"),
    conv_transpose((4, 5), out_channels=4, kernel_size=(2, 3), stride=(3, 2),
                   padding="VALID", output_padding=(2, 1), groups=2),
    conv_transpose((4, 4, 4), stride=2, padding="VALID", output_padding=1),
    conv_transpose((3, 3, 3), out_channels=3, kernel_size=2, stride=(1, 2, 3),
                   dilation=(1, 1, 2)),
]  # fmt: skip


@pytest.mark.parametrize("case", EQUINOX_CASES, ids=lambda c: c.id)
def test_matches_equinox(case, getkey):
    reference = eqx.nn.ConvTranspose(
        **case.weighted_arguments(), output_padding=case.output_padding, key=getkey()
    )
    layer = with_parameters(case.build(getkey()), reference.weight, reference.bias)
    x = jr.normal(getkey(), (case.in_channels, *case.spatial))
    out, expected = apply(layer, x), apply(reference, x)
    assert out.shape == expected.shape
    assert out.shape[1:] == layer.out_spatial_shape(x.shape[1:])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


TORCH_CASES = [
    conv_transpose((7,), in_channels=4, out_channels=6, kernel_size=5, stride=3,
                   padding=2, output_padding=1, dilation=2, groups=2),
    conv_transpose((6,), out_channels=3, padding=1, output_padding=2,
                   dilation=3),  # output_padding >= stride (dilation > stride)
    conv_transpose((9,), in_channels=3, kernel_size=16, stride=8, padding=4),
    conv_transpose((5, 6), in_channels=4, out_channels=6, stride=(2, 3),
                   padding=(1, 2), output_padding=(1, 2), dilation=(1, 2), groups=2),
    conv_transpose((6, 5), in_channels=3, out_channels=3, kernel_size=4, stride=2,
                   padding=1, groups=3),  # depthwise
    conv_transpose((4, 3, 5), out_channels=4, stride=2, padding=1, output_padding=1),
    conv_transpose((3, 3, 3), in_channels=4, out_channels=4, kernel_size=(2, 3, 1),
                   stride=(2, 1, 3), padding=(0, 1, 0), output_padding=(1, 0, 2),
                   dilation=(1, 2, 1), groups=2),
]  # fmt: skip


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.id)
def test_matches_torch(case, getkey):
    layer = case.build(getkey())
    x = jr.normal(getkey(), (case.in_channels, *case.spatial))
    out = apply(layer, x)
    expected = torch_conv_transpose(
        x, layer.weight, layer.bias, stride=layer.stride,
        padding=case.tuple_of("padding"), output_padding=layer.output_padding,
        dilation=layer.dilation, groups=case.groups,
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


# Every lowering against `lax.conv_general_dilated` with `lhs_dilation`, on explicit
# padding pairs of the zero-padded core.
CORE_CASES = [
    conv_transpose((5,), out_channels=3, kernel_size=4, stride=2, padding=((3, 3),)),
    conv_transpose((4,), stride=3, dilation=2, padding=((-1, 5),),
                   groups=2),  # negative low padding: a crop
    conv_transpose((3,), in_channels=1, kernel_size=2, stride=4,
                   padding=((0, 2),)),  # stride > kernel extent
    conv_transpose((4, 3), in_channels=4, kernel_size=(3, 2), stride=(2, 1),
                   dilation=(1, 2), padding=((2, 1), (2, 0)), groups=2),
    conv_transpose((3, 3, 3), stride=2, padding=((1, 2), (1, 2), (1, 2))),
]  # fmt: skip
LOWERING_IDS = ("phase", "interior", "lhs_dilation")


def _core_case(case: LayerCase, dtype=jnp.float32):
    keys = jr.split(jr.key(sum(case.spatial)), 3)
    kernel = case.tuple_of("kernel_size")
    y = jr.normal(keys[0], (case.in_channels, *case.spatial), dtype)
    w = jr.normal(keys[1], (case.out_channels, case.in_channels // case.groups,
                            *kernel), dtype)  # fmt: skip
    static: dict[str, Any] = dict(
        stride=case.tuple_of("stride"), dilation=case.tuple_of("dilation"),
        padding=case.padding, groups=case.groups,
    )  # fmt: skip

    def oracle(y, w):
        return lax_conv_transpose_core(
            y, w, stride=static["stride"], pairs=case.padding,
            dilation=static["dilation"], groups=case.groups,
        )  # fmt: skip

    return y, w, static, oracle


@pytest.mark.parametrize("lowering", LOWERING_IDS)
@pytest.mark.parametrize("case", CORE_CASES, ids=lambda c: c.id)
def test_lowering_values_and_derivatives(lowering, case):
    y, w, static, oracle = _core_case(case)

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


CHECK_GRADS_CASES = [(lowering, CORE_CASES[1]) for lowering in LOWERING_IDS] + [
    (
        "phase",
        conv_transpose((2, 2), kernel_size=(3, 2), stride=(2, 3),
                       padding=((2, 1), (1, 0)), groups=2),
    )
]  # fmt: skip


@pytest.mark.parametrize(
    "lowering, case",
    CHECK_GRADS_CASES,
    ids=[f"{lowering}-{case.id}" for lowering, case in CHECK_GRADS_CASES],
)
def test_lowering_check_grads(lowering, case):
    with jax.enable_x64(True):
        y, w, static, _ = _core_case(case, jnp.float64)
        f = jax.jit(lambda y, w: transposed_conv(y, w, impl=lowering, **static))
        check_grads(f, (y, w), order=2, modes=("fwd", "rev"))


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
    reference = with_parameters(
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


@pytest.mark.parametrize("padding_mode", ["ZEROS", "REFLECT"])
@pytest.mark.parametrize("groups", [1, 2])
def test_partitioned_adjoint_lowering(getkey, padding_mode, groups):
    """The adjoint form `impl='auto'` takes where the input may be partitioned over
    devices: the default lowering's values, and derivatives in both modes."""
    from eqxconv import _ops

    x = jr.normal(getkey(), (2 * groups, 5, 4))
    w = jr.normal(getkey(), (2 * groups, 2, 3, 2))
    stride, dilation, padding = (2, 1), (1, 2), ((1, 1), (1, 0))
    out_shape, pairs, _ = _ops.transposed_geometry(
        x.shape[1:], padding, w.shape[2:], stride, dilation, (0, 0)
    )

    def adjoint(x, w):
        out = _ops._partitioned_transpose(
            x, w, out_shape, pairs, stride, dilation, groups, padding_mode, None
        )
        assert out is not None
        return out

    def default(x, w):
        return eqxconv.conv_transpose(
            x, w, stride=stride, padding=padding, dilation=dilation,
            groups=groups, padding_mode=padding_mode, impl="lhs_dilation",
        )  # fmt: skip

    assert jnp.allclose(adjoint(x, w), default(x, w), atol=1e-5)
    check_grads(adjoint, (x, w), order=2, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2)
