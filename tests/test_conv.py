"""`Conv` against `equinox.nn.Conv`, PyTorch and lax, plus its properties and errors."""

import dataclasses
import os
import subprocess
import sys
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
import torch

import eqxconv

from .cases import conv, LayerCase
from .helpers import apply, with_parameters
from .oracles import explicit_mode, explicit_pairs, to_torch, torch_conv


CONV_CLASSES = {1: eqxconv.Conv1d, 2: eqxconv.Conv2d, 3: eqxconv.Conv3d}
SPATIAL = {1: (13,), 2: (9, 10), 3: (6, 7, 5)}


# Every padding form and mode, with strides, dilations and groups mixed in; written
# in 3D, and cut to fewer dimensions by `_in_dims`.
CONFIGS = {
    case.fields_id: case
    for case in [
        conv(SPATIAL[3], padding=1),
        conv(SPATIAL[3], padding=[1, 2, 0], stride=2, padding_mode="REFLECT"),
        conv(SPATIAL[3], padding=[(0, 2), (1, 0), (2, 1)], stride=[1, 2, 1],
             dilation=[2, 1, 1], groups=2, padding_mode="REPLICATE"),
        conv(SPATIAL[3], padding=[(1, 2), (2, 1), (0, 1)], padding_mode="CIRCULAR"),
        conv(SPATIAL[3], padding="VALID", stride=3),
        conv(SPATIAL[3], padding="same", dilation=2, groups=2),
        conv(SPATIAL[3], padding="SAME", stride=2, padding_mode="reflect"),
        conv(SPATIAL[3], padding="SAME_LOWER", stride=2),
        conv(SPATIAL[3], padding="CIRCULAR"),
        conv(SPATIAL[3], padding="CAUSAL", dilation=2),
        conv(SPATIAL[3], padding="causal", stride=2, padding_mode="REPLICATE"),
    ]
}  # fmt: skip


# Padding strings `equinox.nn.Conv` does not take.
EQUINOX_LACKS = ("CAUSAL", "CIRCULAR")


def _in_dims(case: LayerCase, n: int) -> LayerCase:
    """`case` in `n` spatial dimensions: per-dimension lists cut to `n`."""
    fields = ("padding", "stride", "dilation")
    cut = {
        f: getattr(case, f)[:n] for f in fields if isinstance(getattr(case, f), list)
    }
    return dataclasses.replace(
        case, spatial=SPATIAL[n], in_channels=4, out_channels=6, **cut
    )


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_torch(n, name, getkey):
    case = _in_dims(CONFIGS[name], n)
    layer = case.build(getkey())
    x = jr.normal(getkey(), (4, *SPATIAL[n]))
    kernel, stride, dilation = (case.tuple_of(f) for f in ("kernel_size", "stride",
                                                           "dilation"))  # fmt: skip
    expected = torch_conv(
        x,
        layer.weight,
        layer.bias,
        stride=stride,
        pairs=explicit_pairs(case.padding, SPATIAL[n], kernel, stride, dilation),
        dilation=dilation,
        groups=case.groups,
        mode=explicit_mode(case.padding, case.padding_mode),
    )
    out = apply(layer, x)
    assert out.shape == expected.shape
    assert out.shape[1:] == layer.out_spatial_shape(SPATIAL[n])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize(
    "name",
    [k for k, c in CONFIGS.items() if str(c.padding).upper() not in EQUINOX_LACKS],
)
def test_matches_equinox(n, name, getkey):
    case = _in_dims(CONFIGS[name], n)
    layer = case.build(getkey())
    arguments = case.weighted_arguments()
    reference = with_parameters(
        eqx.nn.Conv(**arguments, key=getkey()), layer.weight, layer.bias
    )
    x = jr.normal(getkey(), (4, *SPATIAL[n]))
    np.testing.assert_allclose(
        apply(layer, x), apply(reference, x), rtol=1e-5, atol=1e-6
    )


def test_circular_string_matches_equinox(getkey):
    layer = eqxconv.Conv2d(3, 5, (3, 4), padding="circular", key=getkey())
    assert layer.padding_mode == "CIRCULAR"
    reference = eqx.nn.Conv2d(
        3, 5, (3, 4), padding="SAME", padding_mode="CIRCULAR", key=getkey()
    )
    reference = with_parameters(reference, layer.weight, layer.bias)
    x = jr.normal(getkey(), (3, 8, 9))
    np.testing.assert_allclose(layer(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2])
def test_causal_sees_no_future(n, getkey):
    layer = CONV_CLASSES[n](2, 3, 3, dilation=2, padding="CAUSAL", key=getkey())
    x = jr.normal(getkey(), (2, *SPATIAL[n]))
    out = layer(x)
    assert out.shape[1:] == x.shape[1:]
    # The gradient of output position t with respect to the input is zero past t.
    t = tuple(s // 2 for s in SPATIAL[n])
    grad = jax.grad(lambda x: layer(x)[(0, *t)])(x)
    index = np.indices(SPATIAL[n])
    future = np.zeros(SPATIAL[n], bool)
    for axis in range(n):
        future |= index[axis] > t[axis]
    assert np.all(np.asarray(grad)[:, future] == 0)
    assert np.any(np.asarray(grad)[:, ~future] != 0)


def test_weight_and_bias_shapes(getkey):
    layer = eqxconv.Conv(3, 6, 9, (1, 2, 3), groups=3, key=getkey())
    assert layer.weight.shape == (9, 2, 1, 2, 3)
    assert layer.bias is not None and layer.bias.shape == (9, 1, 1, 1)
    assert eqxconv.Conv2d(2, 4, 3, use_bias=False, key=getkey()).bias is None


@pytest.mark.parametrize(
    ("n", "in_channels", "out_channels", "kernel_size", "groups"),
    [(1, 4, 6, 5, 1), (2, 6, 4, (3, 2), 2), (3, 3, 3, 2, 3)],
)
def test_init_matches_torch_fan_in_and_bounds(
    n, in_channels, out_channels, kernel_size, groups, getkey
):
    torch_layer = getattr(torch.nn, f"Conv{n}d")(
        in_channels, out_channels, kernel_size, groups=groups
    )
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(torch_layer.weight)
    bound = 1 / np.sqrt(fan_in)
    weights, biases = [], []
    for _ in range(20):
        layer = CONV_CLASSES[n](
            in_channels, out_channels, kernel_size, groups=groups, key=getkey()
        )
        assert layer.weight.shape == tuple(torch_layer.weight.shape)
        weights.append(np.asarray(layer.weight).ravel())
        biases.append(np.asarray(layer.bias).ravel())
    for sample in (np.concatenate(weights), np.concatenate(biases)):
        assert np.all(np.abs(sample) <= bound)
        # Uniform on [-bound, bound]: the extremes are reached, the variance is b²/3.
        assert np.abs(sample).max() > 0.9 * bound
        np.testing.assert_allclose(sample.var(), bound**2 / 3, rtol=0.3)


def test_init_uses_threefry_or_rbg_keys_alike(getkey):
    # The same key gives the same parameters.
    key = getkey()
    a = eqxconv.Conv1d(2, 3, 3, key=key)
    b = eqxconv.Conv1d(2, 3, 3, key=key)
    np.testing.assert_array_equal(a.weight, b.weight)


def test_complex_dtype(getkey):
    layer = eqxconv.Conv2d(2, 3, 3, padding=1, dtype=jnp.complex64, key=getkey())
    assert layer.weight.dtype == jnp.complex64
    real, imag = np.real(layer.weight), np.imag(layer.weight)
    bound = 1 / np.sqrt(2 * 9)
    assert np.all(np.abs(real) <= bound) and np.all(np.abs(imag) <= bound)
    assert not np.allclose(real, imag)
    x = lax.complex(jr.normal(getkey(), (2, 5, 6)), jr.normal(getkey(), (2, 5, 6)))
    reference = eqx.nn.Conv2d(2, 3, 3, padding=1, dtype=jnp.complex64, key=getkey())
    reference = with_parameters(reference, layer.weight, layer.bias)
    np.testing.assert_allclose(layer(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_parameter_dtypes(dtype, getkey):
    layer = eqxconv.Conv1d(3, 2, 3, dtype=dtype, key=getkey())
    assert layer.weight.dtype == dtype and layer.bias is not None
    assert layer.bias.dtype == dtype
    x = jr.normal(getkey(), (3, 8)).astype(dtype)
    out = layer(x)
    assert out.dtype == dtype
    expected = torch_conv(
        x.astype(jnp.float32),
        layer.weight.astype(jnp.float32),
        layer.bias.astype(jnp.float32),
        stride=(1,),
        pairs=[(0, 0)],
        dilation=(1,),
    )
    np.testing.assert_allclose(out.astype(jnp.float32), expected, rtol=0.05, atol=0.05)


def test_float64(getkey):
    with jax.enable_x64(True):
        layer = eqxconv.Conv2d(2, 3, 3, key=jr.key(0))
        assert layer.weight.dtype == jnp.float64
        x = jr.normal(jr.key(1), (2, 6, 6), jnp.float64)
        out = layer(x)
        assert out.dtype == jnp.float64
        expected = torch_conv(
            x, layer.weight, layer.bias, stride=(1, 1), pairs=[(0, 0)] * 2,
            dilation=(1, 1),
        )  # fmt: skip
        np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_mixed_input_dtype_is_promoted(getkey):
    layer = eqxconv.Conv1d(3, 2, 3, key=getkey())
    x = jr.normal(getkey(), (3, 8))
    out = layer(x.astype(jnp.bfloat16))
    assert out.dtype == jnp.float32
    expected = layer(x.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(out, expected)


def test_preferred_element_type_and_precision(getkey):
    layer = eqxconv.Conv2d(
        3, 4, 3, dtype=jnp.bfloat16, preferred_element_type=jnp.float32,
        precision=lax.Precision.HIGHEST, key=getkey(),
    )  # fmt: skip
    assert layer.bias is not None
    x = jr.normal(getkey(), (3, 7, 7)).astype(jnp.bfloat16)
    out = layer(x)
    assert out.dtype == jnp.float32
    expected = lax.conv_general_dilated(
        x[None], layer.weight, (1, 1), "VALID", preferred_element_type=jnp.float32,
        precision=lax.Precision.HIGHEST,
    )[0] + layer.bias.astype(jnp.float32)  # fmt: skip
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_kernel_and_bias_init(getkey):
    layer = eqxconv.Conv1d(
        2, 3, 4,
        kernel_init=lambda key, shape, dtype: jnp.full(shape, 0.5, dtype),
        bias_init=lambda key, shape, dtype: jnp.arange(3, dtype=dtype).reshape(shape),
        key=getkey(),
    )  # fmt: skip
    assert layer.bias is not None
    np.testing.assert_array_equal(layer.weight, np.full((3, 2, 4), 0.5))
    np.testing.assert_array_equal(np.ravel(layer.bias), [0, 1, 2])
    with pytest.raises(ValueError, match="kernel_init.*shape \\(2,\\).*\\(3, 2, 4\\)"):
        eqxconv.Conv1d(
            2, 3, 4, kernel_init=lambda k, s, d: jnp.zeros(2, d), key=getkey()
        )
    with pytest.raises(TypeError, match="bias_init"):
        eqxconv.Conv1d(2, 3, 4, bias_init="zeros", key=getkey())  # type: ignore


@pytest.mark.parametrize("boolean", [True, False])
def test_mask(boolean, getkey):
    mask = np.zeros((3, 3), bool)
    mask[1, :] = True  # only the middle row of the 3x3 kernel
    layer = eqxconv.Conv2d(
        2, 4, 3, padding=1, mask=mask if boolean else mask.astype(np.float32),
        key=getkey(),
    )  # fmt: skip
    x = jr.normal(getkey(), (2, 6, 7))
    expected = torch_conv(
        x, np.asarray(layer.weight) * mask, layer.bias, stride=(1, 1),
        pairs=[(1, 1)] * 2, dilation=(1, 1),
    )  # fmt: skip
    np.testing.assert_allclose(apply(layer, x), expected, rtol=1e-5, atol=1e-5)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    assert np.all(np.asarray(grads.weight)[:, :, ~mask] == 0)
    assert np.all(np.asarray(grads.weight)[:, :, mask] != 0)
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    assert (params.mask is None) == boolean


def test_mask_must_broadcast(getkey):
    with pytest.raises(ValueError, match="mask.*\\(4,\\).*\\(2, 2, 3, 3\\)"):
        eqxconv.Conv2d(2, 2, 3, mask=np.ones(4), key=getkey())


def test_functional_conv_matches_lax(getkey):
    x = jr.normal(getkey(), (4, 7, 6))
    weight = jr.normal(getkey(), (6, 2, 3, 2))
    out = eqxconv.conv(
        x, weight, stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2),
        input_dilation=(2, 1), groups=2,
    )  # fmt: skip
    expected = lax.conv_general_dilated(
        x[None], weight, (2, 1), ((1, 0), (2, 1)), lhs_dilation=(2, 1),
        rhs_dilation=(1, 2), feature_group_count=2,
    )[0]  # fmt: skip
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    same = eqxconv.conv(x, weight, padding="same", input_dilation=2, groups=2)
    # SAME is resolved against the input-dilated extent (13, 11).
    pads = lax.padtype_to_pads((13, 11), (3, 2), (1, 1), "SAME")
    expected = lax.conv_general_dilated(
        x[None], weight, (1, 1), pads, lhs_dilation=(2, 2), feature_group_count=2
    )[0]
    assert same.shape == (6, 13, 11)
    np.testing.assert_allclose(same, expected, rtol=1e-5, atol=1e-5)


def test_grads_match_torch(getkey):
    layer = eqxconv.Conv2d(
        3, 4, 3, stride=2, padding=1, padding_mode="circular", groups=1, key=getkey()
    )
    x = jr.normal(getkey(), (3, 8, 9))
    cotangent = jr.normal(getkey(), (4, 4, 5))
    grads = jax.grad(lambda m, x: jnp.sum(m(x) * cotangent), argnums=(0, 1))(layer, x)
    xt = to_torch(x)[None].requires_grad_()
    wt = to_torch(layer.weight).requires_grad_()
    bt = to_torch(layer.bias).reshape(-1).requires_grad_()
    padded = torch.nn.functional.pad(xt, (1, 1, 1, 1), mode="circular")
    out = torch.nn.functional.conv2d(padded, wt, bt, stride=2)
    (out[0] * to_torch(cotangent)).sum().backward()
    assert xt.grad is not None and wt.grad is not None and bt.grad is not None
    np.testing.assert_allclose(grads[1], xt.grad[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[0].weight, wt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        np.ravel(grads[0].bias), bt.grad.numpy(), rtol=1e-4, atol=1e-5
    )


def test_tree_surgery_serialisation_and_optax(getkey, tmp_path):
    layer = eqxconv.Conv2d(2, 3, 3, padding=1, key=getkey())
    assert layer.bias is not None
    zeros = eqx.tree_at(lambda m: m.weight, layer, jnp.zeros_like(layer.weight))
    x = jr.normal(getkey(), (2, 5, 5))
    np.testing.assert_allclose(zeros(x), jnp.broadcast_to(layer.bias, (3, 5, 5)))
    eqx.tree_serialise_leaves(tmp_path / "conv.eqx", layer)
    loaded = eqx.tree_deserialise_leaves(tmp_path / "conv.eqx", zeros)
    np.testing.assert_array_equal(loaded.weight, layer.weight)

    optimiser = optax.sgd(0.1)
    state = optimiser.init(eqx.filter(layer, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(layer, state):
        grads = eqx.filter_grad(lambda m: jnp.mean(m(x) ** 2))(layer)
        updates, state = optimiser.update(grads, state)
        return eqx.apply_updates(layer, updates), state

    new, _ = step(layer, state)
    assert not np.allclose(new.weight, layer.weight)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(groups=4), ValueError, "groups.*=4.*in_channels.*=6"),
        (dict(groups=3, out_channels=4), ValueError, "groups.*=3.*out_channels.*=4"),
        (dict(groups=0), ValueError, "groups.*positive"),
        (dict(groups=1.0), TypeError, "groups"),
        (dict(in_channels=0), ValueError, "in_channels.*positive"),
        (dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size.*length 3"),
        (dict(kernel_size=0), ValueError, "kernel_size.*positive"),
        (dict(stride=0), ValueError, "stride.*positive"),
        (dict(dilation=(1, -2)), ValueError, "dilation.*positive"),
        (dict(padding="full"), ValueError, "padding.*SAME.*'full'"),
        (dict(padding=(1, 2, 3)), ValueError, "padding"),
        (dict(padding_mode="mirror"), ValueError, "padding_mode.*REFLECT.*'mirror'"),
        (dict(dtype=jnp.int32), TypeError, "dtype.*int32"),
        (dict(use_bias="yes"), TypeError, "use_bias"),
        (dict(num_spatial_dims=0), ValueError, "num_spatial_dims"),
    ],
)
def test_construction_errors(kwargs, error, match, getkey):
    arguments = (
        dict(num_spatial_dims=2, in_channels=6, out_channels=6, kernel_size=3) | kwargs
    )
    with pytest.raises(error, match=match):
        eqxconv.Conv(**arguments, key=getkey())


CALLERS = {
    "eager": lambda layer, x: layer(x),
    "jax.jit": lambda layer, x: jax.jit(lambda x: layer(x))(x),
    "eqx.filter_jit": lambda layer, x: eqx.filter_jit(lambda m, x: m(x))(layer, x),
    "jax.vmap": lambda layer, x: jax.vmap(layer)(x[None]),
}


@pytest.mark.parametrize(
    ("shape", "error", "match"),
    [
        ((8, 3, 9, 9), ValueError, r"Conv2d.*rank 3.*\(C=3, dim_1, dim_2\).*"
         r"\(8, 3, 9, 9\).*jax.vmap"),
        ((4, 9, 9), ValueError, r"Conv2d.*3 input channels.*\(4, 9, 9\)"),
        ((3, 9), ValueError, r"Conv2d.*rank 3.*\(3, 9\)"),
        ((3, 2, 9), ValueError, r"Conv2d.*\(3, 2, 9\).*smaller than the dilated "
         r"kernel \(5, 3\)"),
    ],
)  # fmt: skip
def test_call_errors(shape, error, match, getkey):
    layer = eqxconv.Conv2d(3, 4, 3, dilation=(2, 1), key=getkey())
    x = jnp.zeros(shape)
    # Under vmap the input gains a batch axis that the layer never sees; the rank
    # cases then go through the other callers only.
    callers = [c for c in CALLERS if c != "jax.vmap" or len(shape) == 3]
    for caller in callers:
        with pytest.raises(error, match=match):
            CALLERS[caller](layer, x)


def test_integer_input_error(getkey):
    layer = eqxconv.Conv1d(2, 2, 3, key=getkey())
    with pytest.raises(TypeError, match="Conv1d.*floating.*int32"):
        layer(jnp.zeros((2, 5), jnp.int32))


def test_functional_errors(getkey):
    x = jnp.zeros((4, 9))
    with pytest.raises(ValueError, match=r"eqxconv.conv.*4 input channels.*\(3, 9\)"):
        eqxconv.conv(jnp.zeros((3, 9)), jnp.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="weight.*shape"):
        eqxconv.conv(x, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="groups.*=3.*out_channels"):
        eqxconv.conv(x, jnp.zeros((4, 4, 3)), groups=3)
    with pytest.raises(ValueError, match="input_dilation"):
        eqxconv.conv(x, jnp.zeros((2, 4, 3)), input_dilation=2, padding_mode="reflect")


def test_tree_surgery_shape_errors_hold_without_annotation_checks(getkey):
    """A weight and bias that break the layer's static configuration are refused,
    naming the layer and the field, by the library's own checks: also with
    `JAXTYPING_DISABLE=1`, which turns the annotation checks off."""
    script = """
import equinox as eqx, jax.numpy as jnp, jax.random as jr, eqxconv
layer = eqxconv.Conv1d(2, 3, 3, key=jr.key(0))
broken = eqx.tree_at(lambda m: (m.weight, m.bias), layer,
                     (jnp.zeros((5, 2, 3)), jnp.zeros((5, 1))))
try:
    broken(jnp.zeros((2, 8)))
except ValueError as e:
    print("caught", "Conv1d.weight" in str(e) and "(3, 2, 3)" in str(e))
else:
    print("unchecked")
"""
    env = dict(os.environ)
    for disable in ("0", "1"):
        env["JAXTYPING_DISABLE"] = disable
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True
        )
        assert result.stdout.strip() == "caught True", result.stderr[-2000:]


@pytest.mark.parametrize("padding_mode", ["ZEROS", "CIRCULAR"])
def test_grouped_conv_by_patches(getkey, padding_mode):
    """The patches lowering (which `impl='auto'` takes for strided 3D convolutions,
    and for grouped ones where the input may be partitioned over devices): `lax`'s
    values, and derivatives in both modes."""
    from jax.test_util import check_grads

    from eqxconv import _ops

    x = jr.normal(getkey(), (6, 9, 7))
    w = jr.normal(getkey(), (4, 3, 3, 2))
    arguments: dict[str, Any] = dict(
        stride=(2, 1),
        padding=((1, 1), (0, 1)),
        dilation=(1, 2),
        input_dilation=(1, 1),
        groups=2,
        padding_mode=padding_mode,
        precision=None,
        preferred_element_type=None,
    )

    def by_patches(x, w):
        return _ops.run_conv("test", x, w, impl="patches", **arguments)  # pyright: ignore

    want = _ops.run_conv("test", x, w, impl="xla", **arguments)
    assert jnp.allclose(by_patches(x, w), want, atol=1e-5)
    check_grads(by_patches, (x, w), order=2, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2)
