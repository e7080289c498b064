"""`SpectralNorm` against the top singular value (numpy's SVD) of the explicit matrix
of each layer's linear map, built without eqxconv: `np.pad` + `lax.conv_general_dilated`
on basis vectors for `Conv`, PyTorch's `conv_transpose` or the transpose of the forward
convolution's matrix for `ConvTranspose`, `lax.conv_general_dilated_local` for
`ConvLocal`. Also: where `equinox.nn.SpectralNorm`'s reshaped-kernel σ is not the
operator norm; inference mode; `vmap` with an unbatched state; gradients; errors."""

import math
from typing import Any, cast

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.test_util import check_grads

import eqxconv

from .oracles import (
    explicit_pairs,
    lax_local,
    PAD_MODES,
    torch_conv_transpose,
    transpose_weight_layout,
)


def _basis(channels: int, spatial: tuple[int, ...], dtype: Any) -> np.ndarray:
    size = channels * math.prod(spatial)
    return np.eye(size, dtype=dtype).reshape(size, channels, *spatial)


def conv_matrix(weight, in_shape, *, stride, pairs, dilation, groups, mode):
    """The matrix of a convolution on `(in_channels, *in_shape)` inputs: every basis
    vector padded by `np.pad`, then a VALID `lax.conv_general_dilated`."""
    weight = np.asarray(weight)
    basis = _basis(weight.shape[1] * groups, in_shape, weight.dtype)
    padded = np.pad(
        basis, [(0, 0), (0, 0), *pairs], mode=cast(Any, PAD_MODES[mode].numpy)
    )
    out = lax.conv_general_dilated(
        jnp.asarray(padded), jnp.asarray(weight), tuple(stride), "VALID",
        rhs_dilation=tuple(dilation), feature_group_count=groups,
        precision="highest",
    )  # fmt: skip
    return np.asarray(out).reshape(len(basis), -1).T


def _weight(layer) -> np.ndarray:
    weight = np.asarray(layer.weight)
    return weight if layer.mask is None else weight * np.asarray(layer.mask)


def _conv_oracle(layer, in_shape):
    pairs = explicit_pairs(
        layer.padding, in_shape, layer.kernel_size, layer.stride, layer.dilation
    )
    return conv_matrix(
        _weight(layer), in_shape, stride=layer.stride, pairs=pairs,
        dilation=layer.dilation, groups=layer.groups, mode=layer.padding_mode,
    )  # fmt: skip


def _transpose_oracle_torch(layer, in_shape):
    """`F.conv_transposeNd` on every basis vector (ZEROS padding, symmetric ints)."""
    columns = [
        torch_conv_transpose(
            e, np.asarray(layer.weight), stride=layer.stride,
            padding=[low for low, _ in layer.padding],
            output_padding=layer.output_padding, dilation=layer.dilation,
            groups=layer.groups,
        ).ravel()
        for e in _basis(layer.in_channels, in_shape, np.float32)
    ]  # fmt: skip
    return np.stack(columns, axis=1)


def _transpose_oracle_adjoint(layer, in_shape):
    """The transpose of the equivalent forward convolution's matrix, on the
    transposed layer's output shape (any padding mode)."""
    out_shape = layer.out_spatial_shape(in_shape)
    pairs = explicit_pairs(
        layer.padding, out_shape, layer.kernel_size, layer.stride, layer.dilation
    )
    forward = conv_matrix(
        transpose_weight_layout(layer.weight, layer.groups), out_shape,
        stride=layer.stride, pairs=pairs, dilation=layer.dilation,
        groups=layer.groups, mode=layer.padding_mode,
    )  # fmt: skip
    assert forward.shape[0] == layer.in_channels * math.prod(in_shape)
    return forward.T


def _local_oracle(layer, in_shape):
    pairs = explicit_pairs(
        layer.padding, in_shape, layer.kernel_size, layer.stride, layer.dilation
    )
    out = jax.vmap(
        lambda e: lax_local(
            e, layer.weight, layer.kernel_size, layer.stride, pairs, layer.dilation,
            layer.groups, layer.padding_mode,
        )
    )(_basis(layer.in_channels, in_shape, np.float32))  # fmt: skip
    return np.asarray(out).reshape(out.shape[0], -1).T


def _mask_2d():
    mask = np.ones((4, 2, 3, 3), bool)
    mask[:, :, 2, :] = False
    return mask


# (id, layer constructor given a key, in_spatial_shape, oracle)
CASES = [
    ("conv1d-stride2", lambda k: eqxconv.Conv1d(2, 3, 3, 2, 1, use_bias=False, key=k),
     (8,), _conv_oracle),
    ("conv2d-reflect-same", lambda k: eqxconv.Conv2d(
        2, 2, 3, padding="SAME", padding_mode="REFLECT", use_bias=False, key=k),
     (5, 5), _conv_oracle),
    ("conv2d-circular-stride2", lambda k: eqxconv.Conv2d(
        2, 4, 3, 2, "CIRCULAR", use_bias=False, key=k), (6, 6), _conv_oracle),
    ("conv1d-dilation-groups-replicate", lambda k: eqxconv.Conv1d(
        4, 4, 3, padding="SAME", dilation=2, groups=2, padding_mode="REPLICATE",
        use_bias=False, key=k), (9,), _conv_oracle),
    ("conv2d-groups-asymmetric-masked", lambda k: eqxconv.Conv2d(
        4, 4, 3, (1, 2), ((1, 0), (2, 1)), groups=2, use_bias=False,
        mask=_mask_2d(), key=k), (5, 5), _conv_oracle),
    ("conv1d-complex-circular", lambda k: eqxconv.Conv1d(
        2, 2, 3, padding=1, padding_mode="CIRCULAR", use_bias=False,
        dtype=jnp.complex64, key=k), (6,), _conv_oracle),
    ("transpose1d-stride2-torch", lambda k: eqxconv.ConvTranspose1d(
        3, 2, 4, 2, 1, output_padding=1, use_bias=False, key=k), (6,),
     _transpose_oracle_torch),
    ("transpose2d-stride2-circular", lambda k: eqxconv.ConvTranspose2d(
        2, 2, 3, 2, 1, output_padding=1, padding_mode="CIRCULAR", use_bias=False,
        key=k), (4, 4), _transpose_oracle_adjoint),
    ("local1d-reflect", lambda k: eqxconv.ConvLocal1d(
        2, 2, 3, padding=1, padding_mode="REFLECT", use_bias=False,
        in_spatial_shape=(7,), key=k), (7,), _local_oracle),
]  # fmt: skip


@eqx.filter_jit
def _call(model, x, state):
    return model(x, state)


def _clone(state):
    """A copy of `state`, for a test that calls twice from the same state (a call in
    training mode marks the state it was given as used)."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _top_singular_value(matrix) -> float:
    return float(np.linalg.svd(np.asarray(matrix, np.complex128), compute_uv=False)[0])


@pytest.mark.parametrize(
    "make, in_shape, oracle", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_matches_svd_of_explicit_matrix(make, in_shape, oracle, getkey):
    layer = make(getkey())
    matrix = oracle(layer, in_shape)
    sigma = _top_singular_value(matrix)
    model, state = eqx.nn.make_with_state(eqxconv.SpectralNorm)(
        layer, in_shape, num_power_iterations=100, key=getkey()
    )
    u, v = state.get(model.uv_index)
    assert v.shape == (layer.in_channels, *in_shape)
    assert u.shape == (layer.out_channels, *layer.out_spatial_shape(in_shape))
    dtype = layer.weight.dtype
    x = jr.normal(getkey(), (layer.in_channels, *in_shape), dtype)
    _, state = _call(model, x, state)
    y, state = _call(model, x, state)
    expected = (matrix @ np.asarray(x).ravel()) / sigma
    scale = np.abs(expected).max()
    np.testing.assert_allclose(
        np.asarray(y).ravel(), expected, rtol=2e-4, atol=2e-4 * scale
    )
    # The pair has converged to the top singular vectors, whose Rayleigh quotient
    # (computed here with the oracle's matrix) is the top singular value.
    u, v = state.get(model.uv_index)
    quotient = np.vdot(np.asarray(u).ravel(), matrix @ np.asarray(v).ravel())
    np.testing.assert_allclose(quotient.real, sigma, rtol=1e-4)


def test_differs_from_equinox_reshaped_kernel_norm(getkey):
    """Stride 1 with overlapping windows: the kernel reshaped to a matrix has a
    smaller norm than the convolution, so `equinox.nn.SpectralNorm` leaves a layer
    whose Lipschitz constant is well above 1."""
    eqx_layer = eqx.nn.Conv2d(2, 3, 3, padding=1, use_bias=False, key=getkey())
    layer = eqx.tree_at(
        lambda m: m.weight,
        eqxconv.Conv2d(2, 3, 3, padding=1, use_bias=False, key=getkey()),
        eqx_layer.weight,
    )
    in_shape = (6, 6)
    matrix = _conv_oracle(layer, in_shape)
    sigma = _top_singular_value(matrix)
    reshaped = float(np.linalg.norm(np.asarray(layer.weight).reshape(3, -1), 2))
    assert sigma > 1.3 * reshaped  # 1.48 for this weight

    x = jr.normal(getkey(), (2, *in_shape))
    eqx_model, eqx_state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(
        eqx_layer, "weight", num_power_iterations=50, key=getkey()
    )
    model, state = eqx.nn.make_with_state(eqxconv.SpectralNorm)(
        layer, in_shape, num_power_iterations=100, key=getkey()
    )
    eqx_y, _ = eqx_model(x, eqx_state)
    y, _ = _call(model, x, state)
    mx = matrix @ np.asarray(x).ravel()
    np.testing.assert_allclose(np.asarray(eqx_y).ravel(), mx / reshaped, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(y).ravel(), mx / sigma, rtol=2e-4, atol=2e-4 * np.abs(mx).max()
    )


def _conv_lax(x, weight):
    return lax.conv_general_dilated(
        x[None], weight, (2,), ((1, 1),), precision="highest"
    )[0]


def test_inference_mode_keeps_state_and_uses_it(getkey):
    layer = eqxconv.Conv1d(2, 3, 3, 2, 1, key=getkey())
    model, state = eqx.nn.make_with_state(eqxconv.SpectralNorm)(
        layer, (8,), key=getkey()
    )
    x = jr.normal(getkey(), (2, 8))
    u0, v0 = state.get(model.uv_index)

    inference_model = eqx.nn.inference_mode(model)
    assert inference_model.inference and not model.inference
    y, new_state = _call(inference_model, x, state)
    for old, new in zip((u0, v0), new_state.get(model.uv_index), strict=True):
        np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
    # σ from the stored pair: <u, A v>, the weight divided by it, the bias added.
    assert layer.bias is not None
    sigma = jnp.vdot(u0, _conv_lax(v0, layer.weight))
    expected = _conv_lax(x, layer.weight / sigma) + layer.bias
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5)
    # The call-time flag overrides the field, both ways.
    _, kept = model(x, _clone(state), inference=True)
    np.testing.assert_array_equal(
        np.asarray(kept.get(model.uv_index)[1]), np.asarray(v0)
    )
    _, moved = inference_model(x, _clone(state), inference=False)
    assert not np.array_equal(np.asarray(moved.get(model.uv_index)[1]), v0)
    training_model = eqx.nn.inference_mode(inference_model, value=False)
    _, moved = _call(training_model, x, _clone(state))
    assert not np.array_equal(np.asarray(moved.get(model.uv_index)[1]), v0)


def test_vmap_shares_state(getkey):
    layer = eqxconv.Conv1d(2, 3, 3, 2, 1, key=getkey())
    model, state = eqx.nn.make_with_state(eqxconv.SpectralNorm)(
        layer, (8,), num_power_iterations=2, key=getkey()
    )
    xs = jr.normal(getkey(), (4, 2, 8))

    @eqx.filter_jit
    def batched(model, xs, state):
        return jax.vmap(
            model, in_axes=(0, None), out_axes=(0, None), axis_name="batch"
        )(xs, state)

    ys, new_state = batched(model, xs, state)
    assert ys.shape == (4, 3, 4)
    # One state for the whole batch: the same as one unbatched call gives.
    _, single_state = model(xs[0], state)
    for a, b in zip(
        new_state.get(model.uv_index), single_state.get(model.uv_index), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    u, v = single_state.get(model.uv_index)
    sigma = jnp.vdot(u, _conv_lax(v, layer.weight))
    bias = layer.bias
    assert bias is not None
    expected = jax.vmap(lambda x: _conv_lax(x, layer.weight / sigma) + bias)(xs)
    np.testing.assert_allclose(np.asarray(ys), np.asarray(expected), rtol=1e-5)


def test_in_sequential(getkey):
    layer = eqxconv.Conv1d(2, 3, 3, 2, 1, key=getkey())
    model, state = eqx.nn.make_with_state(eqx.nn.Sequential)(
        [eqxconv.SpectralNorm(layer, (8,), key=getkey()), eqx.nn.Lambda(jnp.tanh)]
    )
    y, new_state = model(jr.normal(getkey(), (2, 8)), state)
    assert y.shape == (3, 4)
    assert isinstance(new_state, eqx.nn.State)


def test_gradient_with_respect_to_weight(getkey):
    """The pair carries no gradient: the weight's gradient is that of
    `W -> f(conv(x, W / <u, conv(v, W)>))` with the call's updated `(u, v)` fixed."""
    layer = eqxconv.Conv1d(2, 3, 3, 2, 1, use_bias=False, key=getkey())
    model, state = eqx.nn.make_with_state(eqxconv.SpectralNorm)(
        layer, (8,), key=getkey()
    )
    x = jr.normal(getkey(), (2, 8))

    @eqx.filter_jit
    @eqx.filter_value_and_grad(has_aux=True)
    def loss(model, state):
        y, state = model(x, state)
        return jnp.sum(jnp.sin(y)), state

    (_, new_state), grads = loss(model, state)
    u, v = new_state.get(model.uv_index)

    def oracle(weight):
        sigma = jnp.vdot(u, _conv_lax(v, weight))
        return jnp.sum(jnp.sin(_conv_lax(x, weight / sigma)))

    expected = jax.grad(oracle)(layer.weight)
    assert np.all(np.isfinite(np.asarray(grads.layer.weight)))
    np.testing.assert_allclose(
        np.asarray(grads.layer.weight), np.asarray(expected), rtol=1e-4, atol=1e-5
    )
    # And against finite differences, with the state fixed (inference mode).
    inference_model = eqx.nn.inference_mode(model)

    def of_weight(weight):
        normalised = eqx.tree_at(lambda m: m.layer.weight, inference_model, weight)
        return jnp.sum(jnp.sin(normalised(x, state)[0]))

    check_grads(of_weight, (layer.weight,), order=1, modes=("rev",), eps=1e-2)


def test_errors(getkey):
    conv = eqxconv.Conv2d(2, 3, 5, key=getkey())
    make = eqxconv.SpectralNorm
    for bad in (
        eqx.nn.Conv2d(2, 3, 3, key=getkey()),
        eqxconv.ExtractPatches(2, 3),
    ):
        with pytest.raises(TypeError, match="SpectralNorm wraps one of eqxconv.Conv"):
            make(bad, (6, 6), key=getkey())  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="`in_spatial_shape` must have 2 entries"):
        make(conv, (6,), key=getkey())
    with pytest.raises(ValueError, match=r"`in_spatial_shape`=\(3, 3\) does not fit"):
        make(conv, (3, 3), key=getkey())
    local = eqxconv.ConvLocal1d(2, 2, 3, in_spatial_shape=(7,), key=getkey())
    with pytest.raises(ValueError, match=r"ConvLocal's own `in_spatial_shape`=\(7,\)"):
        make(local, (8,), key=getkey())
    with pytest.raises(ValueError, match="`num_power_iterations` must be a positive"):
        make(conv, (6, 6), num_power_iterations=0, key=getkey())
    with pytest.raises(ValueError, match="`eps` must be a finite float > 0"):
        make(conv, (6, 6), eps=0.0, key=getkey())
    with pytest.raises(TypeError, match="`eps` must be a positive float"):
        make(conv, (6, 6), eps="small", key=getkey())  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="`inference` must be a bool"):
        make(conv, (6, 6), inference=1, key=getkey())  # pyright: ignore[reportArgumentType]

    model, state = eqx.nn.make_with_state(make)(conv, (6, 6), key=getkey())
    with pytest.raises(
        ValueError,
        match=r"SpectralNorm was built for inputs of spatial shape \(6, 6\).*got "
        r"shape \(2, 7, 6\)",
    ):
        model(jnp.zeros((2, 7, 6)), state)
    with pytest.raises(ValueError, match="SpectralNorm expected 2 input channels"):
        model(jnp.zeros((3, 6, 6)), state)
    with pytest.raises(ValueError, match="SpectralNorm expected an unbatched"):
        model(jnp.zeros((4, 2, 6, 6)), state)
