"""PyTorch interop: `from_torch`, `to_torch` and `load_torch_state_dict`, checked
against PyTorch itself (the torch module's output is the oracle), bit-exact weight
round trips, refusals, and `import eqxconv` without torch."""

import subprocess
import sys
import textwrap
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import torch

import eqxconv

from .cases import conv, conv_transpose
from .helpers import apply, as_tuple
from .oracles import transpose_weight_layout


def _close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def _input(seed, shape, dtype: Any = np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _randomise(module, seed):
    """Fill a torch module's parameters with standard normals (seeded), so that a
    wrong layout cannot hide behind small default weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(
                torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            )
    return module


def _torch_out(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)[None])[0].numpy()


def _bias_flat(layer):
    return None if layer.bias is None else np.asarray(layer.bias).reshape(-1)


def _assert_same_params(torch_module, weight, bias):
    assert np.array_equal(torch_module.weight.detach().numpy(), weight)
    if bias is None:
        assert torch_module.bias is None
    else:
        assert np.array_equal(torch_module.bias.detach().numpy(), bias)


def _single_or_sequential(back, single: bool, torch_class, children: list[str]):
    """The convolution of the module `to_torch` returned, having checked that it is
    one `torch_class` if `single`, else a `Sequential` of `children`."""
    if single:
        assert type(back) is torch_class
        return back
    assert isinstance(back, torch.nn.Sequential)
    assert [name for name, _ in back.named_children()] == children
    return back.get_submodule("conv")


# ----------------------------------------------------------------------------------
# Conv
# ----------------------------------------------------------------------------------

CONV_CASES = [
    conv((9,), in_channels=3, out_channels=4, padding=1),
    conv((11,), in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=2,
         dilation=2, groups=2, use_bias=False, padding_mode="REFLECT"),
    conv((10,), kernel_size=4, padding="same", dilation=3, groups=2,
         padding_mode="CIRCULAR"),  # even kernel: odd total
    conv((12,), in_channels=3, out_channels=3, kernel_size=5, stride=3,
         padding="valid", groups=3, padding_mode="REPLICATE"),
    conv((6,), out_channels=4, padding="same", padding_mode="REFLECT"),
    conv((9, 8), in_channels=4, out_channels=6, stride=2, padding=(1, 2),
         dilation=(2, 1), groups=2),
    conv((7, 6), in_channels=3, out_channels=4, kernel_size=(2, 3), padding="same",
         dilation=(2, 1), use_bias=False),
    conv((6, 7), out_channels=4, stride=(1, 2), padding=(2, 1),
         padding_mode="REFLECT"),
    conv((7, 5), in_channels=4, out_channels=4, padding="same", dilation=2,
         groups=4, padding_mode="REPLICATE"),  # depthwise
    conv((8, 6), in_channels=3, kernel_size=(3, 2), stride=(2, 1), padding="valid",
         padding_mode="CIRCULAR"),
    conv((6, 5), out_channels=3, kernel_size=2, stride=2, padding=1,
         padding_mode="CIRCULAR"),
    conv((5, 6, 4), out_channels=4, stride=2, padding=1, groups=2),
    conv((4, 5, 3), kernel_size=(2, 3, 1), padding="same", dilation=(1, 1, 2),
         padding_mode="REFLECT"),
    conv((4, 4, 4), in_channels=3, out_channels=3, kernel_size=2, stride=(1, 2, 1),
         padding=(1, 0, 1), dilation=(2, 1, 1), groups=3, use_bias=False,
         padding_mode="REPLICATE"),
    conv((4, 5, 3), padding="valid", padding_mode="CIRCULAR"),
]  # fmt: skip
TORCH_CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.id)
def test_conv_from_torch_and_back(case):
    n, mode = case.n, case.padding_mode.lower()
    module = TORCH_CONV[n](
        case.in_channels, case.out_channels, case.kernel_size, case.stride,
        case.padding, case.dilation, case.groups, case.use_bias, mode,
    )  # fmt: skip
    module = _randomise(module, seed=len(CONV_CASES) + n)
    x = _input(0, (case.in_channels, *case.spatial))
    expected = _torch_out(module, x)

    layer = eqxconv.from_torch(module)
    assert isinstance(layer, eqxconv.Conv)
    assert layer.weight.dtype == jnp.float32
    out = np.asarray(apply(layer, jnp.asarray(x)))
    assert out.shape == expected.shape
    _close(out, expected)

    # Bit-exact weights both ways, and a single torch module back.
    weight = module.weight.detach().numpy()
    bias_ = None if module.bias is None else module.bias.detach().numpy()
    assert np.array_equal(np.asarray(layer.weight), weight)
    if bias_ is None:
        assert layer.bias is None
    else:
        assert np.array_equal(np.asarray(layer.bias).reshape(-1), bias_)
    back = eqxconv.to_torch(layer)
    assert type(back) is TORCH_CONV[n]
    assert back.padding_mode == mode
    _assert_same_params(back, weight, bias_)
    _close(_torch_out(back, x), expected)


# Layers torch cannot express with its own padding: (n, kernel, stride, padding,
# dilation, padding_mode, size, single torch module?)
# Layers torch expresses as one module of its own ...
CONV_EXPORT_SINGLE = [
    conv((7,), out_channels=4, groups=2, padding="SAME_LOWER", dilation=2,
         padding_mode="REFLECT"),  # even total: symmetric
    conv((5,), out_channels=4, groups=2, kernel_size=1, padding="CAUSAL"),
    conv((9,), out_channels=4, groups=2, stride=2, padding="SAME",
         padding_mode="REFLECT"),  # total 2 at size 9
    conv((5, 6), out_channels=4, groups=2, padding="CIRCULAR"),
]  # fmt: skip
# ... and those it needs a pad module for.
CONV_EXPORT_SEQUENTIAL = [
    conv((7,), out_channels=4, groups=2, kernel_size=4, padding="SAME_LOWER"),
    conv((8,), out_channels=4, groups=2, padding="CAUSAL", dilation=2,
         padding_mode="REPLICATE"),
    conv((9,), out_channels=4, groups=2, stride=2, padding=[(2, 0)],
         padding_mode="CIRCULAR"),
    conv((8,), out_channels=4, groups=2, stride=2,
         padding="SAME"),  # total 1 at size 8
    conv((6, 7), out_channels=4, groups=2, padding="CAUSAL", dilation=(1, 2),
         padding_mode="CIRCULAR"),
    conv((7, 8), out_channels=4, groups=2, kernel_size=(2, 3), stride=2,
         padding="SAME", padding_mode="REPLICATE"),
    conv((8, 6), out_channels=4, groups=2, stride=(2, 1), padding="SAME_LOWER"),
    conv((5, 6), out_channels=4, groups=2, padding=[(0, 2), (1, 1)],
         padding_mode="REFLECT"),
    conv((4, 5, 3), out_channels=4, groups=2, kernel_size=2, padding="SAME_LOWER",
         padding_mode="REFLECT"),
    conv((5, 4, 4), out_channels=4, groups=2, stride=2,
         padding=[(1, 0), (0, 1), (2, 2)]),
]  # fmt: skip
CONV_EXPORT_CASES = [(c, True) for c in CONV_EXPORT_SINGLE] + [
    (c, False) for c in CONV_EXPORT_SEQUENTIAL
]


@pytest.mark.parametrize(
    "case, single", CONV_EXPORT_CASES, ids=[c.id for c, _ in CONV_EXPORT_CASES]
)
def test_conv_to_torch_explicit_padding(case, single, getkey):
    n, spatial = case.n, case.spatial
    layer = case.build(getkey())
    x = _input(1, (2, *spatial))
    back = eqxconv.to_torch(layer, in_spatial_shape=spatial)
    conv = _single_or_sequential(back, single, TORCH_CONV[n], ["pad", "conv"])
    if not single:
        assert conv.padding == (0,) * n
    _assert_same_params(conv, np.asarray(layer.weight), _bias_flat(layer))
    expected = _torch_out(back, x)
    out = np.asarray(apply(layer, jnp.asarray(x)))
    _close(out, expected)
    # And back again, from the Sequential too: bit-exact weights, and the torch pad
    # module's padding (last axis first in torch) as explicit pairs.
    again = eqxconv.from_torch(back)
    assert isinstance(again, eqxconv.Conv)
    assert again.padding_mode == layer.padding_mode
    assert np.array_equal(np.asarray(again.weight), np.asarray(layer.weight))
    assert np.array_equal(np.asarray(again.bias), np.asarray(layer.bias))
    if not single:
        pad: Any = back.get_submodule("pad")
        flat = pad.padding
        pairs = tuple((flat[2 * i], flat[2 * i + 1]) for i in range(n))[::-1]
        assert again.padding == pairs


# ----------------------------------------------------------------------------------
# ConvTranspose
# ----------------------------------------------------------------------------------

TRANSPOSE_CASES = [
    conv_transpose((7,), in_channels=4, out_channels=6, kernel_size=5, stride=3,
                   padding=2, output_padding=1, dilation=2, groups=2),
    conv_transpose((6,), out_channels=3, padding=1, output_padding=2,
                   dilation=3),  # output_padding >= stride
    conv_transpose((5,), in_channels=3, out_channels=3, kernel_size=4, stride=2,
                   groups=3, use_bias=False),
    conv_transpose((5, 6), in_channels=4, out_channels=6, stride=(2, 3),
                   padding=(1, 2), output_padding=(1, 2), dilation=(1, 2), groups=2),
    conv_transpose((4, 5), out_channels=4, kernel_size=(2, 3), stride=2,
                   output_padding=1),
    conv_transpose((5, 4), in_channels=6, out_channels=4, padding=2, groups=2,
                   use_bias=False),  # padding > extent - 1: a crop
    conv_transpose((4, 3, 5), out_channels=4, stride=2, padding=1, output_padding=1),
    conv_transpose((3, 3, 3), in_channels=4, out_channels=4, kernel_size=(2, 3, 1),
                   stride=(2, 1, 3), padding=(0, 1, 0), output_padding=(1, 0, 2),
                   dilation=(1, 2, 1), groups=2),
]  # fmt: skip
TORCH_TRANSPOSE = {
    1: torch.nn.ConvTranspose1d,
    2: torch.nn.ConvTranspose2d,
    3: torch.nn.ConvTranspose3d,
}


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: c.id)
def test_conv_transpose_from_torch_and_back(case):
    n, cin, cout, g = case.n, case.in_channels, case.out_channels, case.groups
    module = TORCH_TRANSPOSE[n](
        cin, cout, case.kernel_size, case.stride, case.padding, case.output_padding,
        g, case.use_bias, case.dilation,
    )  # fmt: skip
    module = _randomise(module, seed=n)
    x = _input(2, (cin, *case.spatial))
    expected = _torch_out(module, x)

    layer = eqxconv.from_torch(module)
    assert isinstance(layer, eqxconv.ConvTranspose)
    assert layer.weight.shape == (cout, cin // g, *case.tuple_of("kernel_size"))
    out = np.asarray(apply(layer, jnp.asarray(x)))
    assert out.shape == expected.shape
    _close(out, expected)

    weight = module.weight.detach().numpy()
    bias_ = None if module.bias is None else module.bias.detach().numpy()
    back = eqxconv.to_torch(layer)
    assert type(back) is TORCH_TRANSPOSE[n]
    assert tuple(back.output_padding) == case.tuple_of("output_padding")
    _assert_same_params(back, weight, bias_)
    _close(_torch_out(back, x), expected)


# (n, kernel, stride, padding, output_padding, dilation, size, single?)
TRANSPOSE_EXPORT_SINGLE = [
    conv_transpose((4,), in_channels=4, groups=2, kernel_size=2, stride=5,
                   padding="SAME",
                   output_padding=1),  # stride > extent: output padding remains
    conv_transpose((4,), in_channels=4, groups=2, stride=2, padding="VALID",
                   output_padding=1),
    conv_transpose((3, 2, 3), in_channels=4, groups=2, stride=2, padding="SAME",
                   output_padding=1),
]  # fmt: skip
TRANSPOSE_EXPORT_SEQUENTIAL = [
    conv_transpose((5,), in_channels=4, groups=2, kernel_size=4, stride=3,
                   padding="SAME", output_padding=2),  # total 3: (1, 2)
    conv_transpose((5,), in_channels=4, groups=2, stride=2, padding="SAME_LOWER",
                   dilation=2),
    conv_transpose((5,), in_channels=4, groups=2, stride=2, padding="CAUSAL",
                   output_padding=1),
    conv_transpose((6,), in_channels=4, groups=2, kernel_size=5, stride=2,
                   padding=[(3, 1)], output_padding=1, dilation=2),
    conv_transpose((5, 4), in_channels=4, groups=2, stride=(2, 1), padding="SAME",
                   dilation=2),
    conv_transpose((3, 4), in_channels=4, groups=2, kernel_size=4, stride=2,
                   padding="SAME_LOWER", output_padding=1),
    conv_transpose((4, 5), in_channels=4, groups=2, kernel_size=(3, 2),
                   stride=(1, 2), padding=[(0, 2), (1, 0)], output_padding=(0, 1)),
    conv_transpose((3, 4, 3), in_channels=4, groups=2, kernel_size=2,
                   padding="CAUSAL", dilation=(1, 2, 1)),
]  # fmt: skip
TRANSPOSE_EXPORT_CASES = [(c, True) for c in TRANSPOSE_EXPORT_SINGLE] + [
    (c, False) for c in TRANSPOSE_EXPORT_SEQUENTIAL
]


@pytest.mark.parametrize(
    "case, single",
    TRANSPOSE_EXPORT_CASES,
    ids=[c.id for c, _ in TRANSPOSE_EXPORT_CASES],
)
def test_conv_transpose_to_torch_explicit_padding(case, single, getkey):
    n = case.n
    layer = case.build(getkey())
    x = _input(3, (4, *case.spatial))
    back = eqxconv.to_torch(layer)
    conv = _single_or_sequential(back, single, TORCH_TRANSPOSE[n], ["conv", "crop"])
    expected = _torch_out(back, x)
    out = np.asarray(apply(layer, jnp.asarray(x)))
    assert out.shape == expected.shape
    _close(out, expected)
    # The weight round trip through torch's layout is bit-exact, and the Sequential
    # converts back to one layer.
    torch_layout = transpose_weight_layout(layer.weight, groups=2)
    _assert_same_params(conv, torch_layout, _bias_flat(layer))
    again = eqxconv.from_torch(back)
    assert isinstance(again, eqxconv.ConvTranspose)
    assert np.array_equal(np.asarray(again.weight), np.asarray(layer.weight))
    assert np.array_equal(np.asarray(again.bias), np.asarray(layer.bias))
    _close(apply(again, jnp.asarray(x)), expected)


# ----------------------------------------------------------------------------------
# Unfold / Fold
# ----------------------------------------------------------------------------------

# (kernel, stride, padding, dilation, size)
PATCH_CONFIGS = [
    (3, 1, 1, 1, (6, 5)),
    (2, 2, 0, 1, (6, 8)),  # non-overlapping
    ((2, 3), (2, 1), (1, 0), (2, 1), (7, 6)),
    (3, 2, 2, 2, (7, 7)),
]


@pytest.mark.parametrize("config", PATCH_CONFIGS, ids=str)
def test_unfold_from_torch_and_back(config):
    k, s, p, d, size = config
    module = torch.nn.Unfold(k, d, p, s)
    x = _input(4, (3, *size))
    expected = _torch_out(module, x)
    layer = eqxconv.from_torch(module)
    assert isinstance(layer, eqxconv.ExtractPatches)
    out = np.asarray(apply(layer, jnp.asarray(x)))
    assert out.shape[1:] == layer.out_spatial_shape(size)
    np.testing.assert_array_equal(out.reshape(out.shape[0], -1), expected)
    back = eqxconv.to_torch(layer)
    assert type(back) is torch.nn.Unfold
    np.testing.assert_array_equal(_torch_out(back, x), expected)


@pytest.mark.parametrize("config", PATCH_CONFIGS, ids=str)
def test_fold_from_torch_and_back(config):
    k, s, p, d, size = config
    module = torch.nn.Fold(size, k, d, p, s)
    layer = eqxconv.from_torch(module)
    assert isinstance(layer, eqxconv.FoldPatches)
    grid = layer.in_spatial_shape
    kk = np.prod(as_tuple(k, 2))
    patches = _input(5, (2 * kk, *grid))
    expected = _torch_out(module, patches.reshape(2 * kk, -1))
    out = np.asarray(apply(layer, jnp.asarray(patches)))
    _close(out, expected)
    back = eqxconv.to_torch(layer)
    assert type(back) is torch.nn.Fold
    np.testing.assert_array_equal(
        _torch_out(back, patches.reshape(2 * kk, -1)), expected
    )


@pytest.mark.parametrize(
    "padding, padding_mode, stride",
    [
        ([(1, 0), (0, 2)], "ZEROS", 1),
        (1, "REFLECT", 2),
        ("SAME", "CIRCULAR", 2),
        ("CAUSAL", "REPLICATE", 1),
    ],
    ids=str,
)
def test_extract_patches_to_torch_sequential(padding, padding_mode, stride):
    layer = eqxconv.ExtractPatches(
        2, 3, stride=stride, padding=padding, padding_mode=padding_mode
    )
    x = _input(6, (2, 7, 6))
    back = eqxconv.to_torch(layer, in_spatial_shape=(7, 6))
    assert [name for name, _ in back.named_children()] == ["pad", "unfold"]
    expected = _torch_out(back, x)
    out = np.asarray(apply(layer, jnp.asarray(x)))
    np.testing.assert_array_equal(out.reshape(out.shape[0], -1), expected)
    again = eqxconv.from_torch(back)
    assert isinstance(again, eqxconv.ExtractPatches)
    out = np.asarray(apply(again, jnp.asarray(x)))
    np.testing.assert_array_equal(out.reshape(out.shape[0], -1), expected)


@pytest.mark.parametrize("padding", [[(1, 0), (0, 2)], "SAME_LOWER"], ids=str)
def test_fold_patches_to_torch_sequential(padding):
    layer = eqxconv.FoldPatches(2, (7, 6), (2, 3), stride=2, padding=padding)
    patches = _input(7, (2 * 6, *layer.in_spatial_shape))
    back = eqxconv.to_torch(layer)
    assert [name for name, _ in back.named_children()] == ["fold", "crop"]
    expected = _torch_out(back, patches.reshape(12, -1))
    _close(apply(layer, jnp.asarray(patches)), expected)
    again = eqxconv.from_torch(back)
    assert isinstance(again, eqxconv.FoldPatches)
    assert again.output_size == (7, 6)
    _close(apply(again, jnp.asarray(patches)), expected)


# ----------------------------------------------------------------------------------
# dtypes
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["conv", "transpose"])
def test_float64(kind):
    with jax.enable_x64(True):
        if kind == "conv":
            module = torch.nn.Conv2d(2, 4, 3, 2, 1, groups=2, dtype=torch.float64)
        else:
            module = torch.nn.ConvTranspose2d(
                2, 4, 3, 2, 1, 1, groups=2, dtype=torch.float64
            )
        module = _randomise(module, seed=3)
        x = _input(8, (2, 5, 6), np.float64)
        layer = eqxconv.from_torch(module)
        assert isinstance(layer, eqxconv.Conv | eqxconv.ConvTranspose)
        assert layer.weight.dtype == jnp.float64
        out = np.asarray(layer(jnp.asarray(x)))
        assert out.dtype == np.float64
        np.testing.assert_allclose(out, _torch_out(module, x), rtol=1e-12, atol=1e-12)
        back = eqxconv.to_torch(layer)
        assert back.weight.dtype == torch.float64
        assert torch.equal(back.weight, module.weight)


def test_bfloat16_round_trip_is_exact():
    module = _randomise(torch.nn.Conv1d(2, 3, 3, dtype=torch.bfloat16), seed=4)
    layer = eqxconv.from_torch(module)
    assert isinstance(layer, eqxconv.Conv)
    assert layer.weight.dtype == jnp.bfloat16
    back = eqxconv.to_torch(layer)
    assert back.weight.dtype == torch.bfloat16
    assert torch.equal(back.weight, module.weight)
    assert back.bias is not None and module.bias is not None
    assert torch.equal(back.bias, module.bias)


# ----------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------


def test_refuses_conv_local(getkey):
    layer = eqxconv.ConvLocal(2, 2, 3, 3, in_spatial_shape=(5, 5), key=getkey())
    with pytest.raises(ValueError, match="separate kernel at every output position"):
        eqxconv.to_torch(layer)


def test_mask_refused_unless_applied(getkey):
    mask = np.ones((4, 2, 3, 3), bool)
    mask[:, :, 2, :] = False  # a causal-style mask
    layer = eqxconv.Conv2d(2, 4, 3, padding=1, mask=mask, key=getkey())
    with pytest.raises(ValueError, match="has a `mask`.*apply_mask=True"):
        eqxconv.to_torch(layer)
    back = eqxconv.to_torch(layer, apply_mask=True)
    assert np.array_equal(back.weight.detach().numpy()[:, :, 2], np.zeros((4, 2, 3)))
    x = _input(9, (2, 6, 5))
    _close(apply(layer, jnp.asarray(x)), _torch_out(back, x))


def test_refuses_transpose_padding_mode(getkey):
    layer = eqxconv.ConvTranspose1d(2, 2, 3, padding=1, padding_mode="REFLECT",
                                    key=getkey())  # fmt: skip
    with pytest.raises(ValueError, match="padding_mode='REFLECT'.*torch cannot"):
        eqxconv.to_torch(layer)


def test_input_dependent_padding_needs_in_spatial_shape(getkey):
    layer = eqxconv.Conv1d(2, 2, 3, stride=2, padding="SAME", key=getkey())
    with pytest.raises(ValueError, match="depends on the input's spatial shape"):
        eqxconv.to_torch(layer)
    patches = eqxconv.ExtractPatches(2, 3, stride=2, padding="SAME_LOWER")
    with pytest.raises(ValueError, match="in_spatial_shape="):
        eqxconv.to_torch(patches)
    with pytest.raises(ValueError, match="`in_spatial_shape` must be 1 positive"):
        eqxconv.to_torch(layer, in_spatial_shape=(4, 4))


def test_refuses_what_torch_lacks(getkey):
    conv4d = eqxconv.Conv(4, 1, 1, 1, key=getkey())
    with pytest.raises(ValueError, match="torch has no Conv4d"):
        eqxconv.to_torch(conv4d)
    with pytest.raises(ValueError, match=r"torch.nn.Unfold only supports 2 spatial"):
        eqxconv.to_torch(eqxconv.ExtractPatches(1, 3))
    with pytest.raises(ValueError, match=r"torch.nn.Fold only supports 2 spatial"):
        eqxconv.to_torch(eqxconv.FoldPatches(3, (4, 4, 4), 2))
    with pytest.raises(TypeError, match="to_torch converts"):
        eqxconv.to_torch(eqx.nn.Linear(2, 2, key=getkey()))
    with pytest.raises(TypeError, match="from_torch converts.*Linear"):
        eqxconv.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="accept only integer padding"):
        eqxconv.from_torch(torch.nn.ConvTranspose1d(2, 2, 3, padding="same"))  # pyright: ignore


def test_sequential_from_torch():
    # A hand-written pad + conv merges into one padding when it can...
    module = torch.nn.Sequential(
        torch.nn.ZeroPad2d((1, 0, 2, 3)), torch.nn.Conv2d(2, 2, 3, padding=1)
    )
    layer = eqxconv.from_torch(module)
    assert isinstance(layer, eqxconv.Conv)
    assert layer.padding == ((3, 4), (2, 1))
    x = _input(11, (2, 5, 6))
    _close(apply(layer, jnp.asarray(x)), _torch_out(module, x))
    # ... and is refused when it cannot, or for any other Sequential.
    module = torch.nn.Sequential(
        torch.nn.ReflectionPad1d(1), torch.nn.Conv1d(2, 2, 3, padding=1)
    )
    with pytest.raises(ValueError, match="cannot merge reflect padding"):
        eqxconv.from_torch(module)
    module = torch.nn.Sequential(
        torch.nn.ZeroPad1d(1), torch.nn.ConvTranspose1d(2, 2, 3)
    )
    with pytest.raises(TypeError, match="only of the forms to_torch returns"):
        eqxconv.from_torch(module)
    module = torch.nn.Sequential(torch.nn.Conv1d(2, 2, 3), torch.nn.ZeroPad1d(-1))
    with pytest.raises(TypeError, match="only of the forms to_torch returns"):
        eqxconv.from_torch(module)


def test_float64_without_x64_is_refused():
    module = torch.nn.Conv1d(2, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64.*jax_enable_x64"):
        eqxconv.from_torch(module)


# ----------------------------------------------------------------------------------
# Whole models
# ----------------------------------------------------------------------------------


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.nn.Sequential(
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, bias=False),
            torch.nn.ReLU(),
        )
        self.up = torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, groups=2)
        self.norm = torch.nn.BatchNorm2d(4)  # not a convolution: ignored

    def forward(self, x):
        return self.up(self.body(self.stem(x)))


class EqxNet(eqx.Module):
    stem: eqxconv.Conv2d
    body: list
    up: eqxconv.ConvTranspose2d

    def __init__(self, key):
        k1, k2, k3 = jr.split(key, 3)
        self.stem = eqxconv.Conv2d(3, 8, 3, padding=1, key=k1)
        self.body = [
            jax.nn.relu,
            eqxconv.Conv2d(8, 8, 3, 2, 1, groups=4, use_bias=False, key=k2),
            jax.nn.relu,
        ]
        self.up = eqxconv.ConvTranspose2d(8, 4, 4, 2, 1, groups=2, key=k3)

    def __call__(self, x):
        x = self.stem(x)
        for f in self.body:
            x = f(x)
        return self.up(x)


MAPPINGS = {
    "order": None,
    "where": {
        "stem": lambda m: m.stem,
        "body.1": lambda m: m.body[1],
        "up": lambda m: m.up,
    },
    "keystr": {"stem": ".stem", "body.1": ".body[1]", "up": ".up"},
}


@pytest.mark.parametrize("mapping", list(MAPPINGS), ids=str)
def test_load_state_dict(mapping, getkey):
    torch_net = TorchNet()
    for i, module in enumerate((torch_net.stem, torch_net.body[1], torch_net.up)):
        _randomise(module, seed=10 + i)
    net = eqxconv.load_torch_state_dict(
        EqxNet(getkey()), torch_net.state_dict(), MAPPINGS[mapping]
    )
    for ours, theirs in [(net.stem, torch_net.stem), (net.body[1], torch_net.body[1])]:
        assert np.array_equal(np.asarray(ours.weight), theirs.weight.detach())
    assert net.body[1].bias is None
    if mapping == "order":  # the parameters are checked above: run the model once
        x = _input(10, (3, 8, 6))
        _close(apply(net, jnp.asarray(x)), _torch_out(torch_net, x))
    up_weight = transpose_weight_layout(torch_net.up.weight.detach(), groups=2)
    assert np.array_equal(np.asarray(net.up.weight), up_weight)


def test_load_numpy_state_dict_and_partial(getkey):
    net = EqxNet(getkey())
    state = {"conv.weight": np.ones((8, 3, 3, 3), np.float64), "conv.bias": np.ones(8)}
    loaded = eqxconv.load_torch_state_dict(net, state, {"conv": ".stem"}, strict=False)
    assert loaded.stem.weight.dtype == jnp.float32
    assert np.array_equal(loaded.stem.weight, np.ones((8, 3, 3, 3), np.float32))
    assert loaded.up is net.up
    with pytest.raises(ValueError, match=r"leaves the eqxconv layers at \['.body"):
        eqxconv.load_torch_state_dict(net, state, {"conv": ".stem"})


def test_load_state_dict_errors(getkey):
    net = EqxNet(getkey())
    state = TorchNet().state_dict()
    mapping = dict(MAPPINGS["keystr"])

    bad = dict(state)
    bad["up.weight"] = torch.zeros(4, 4, 4, 4)  # (out, in // g, k) instead of torch's
    with pytest.raises(ValueError, match=r"state_dict\['up.weight'\] has shape"):
        eqxconv.load_torch_state_dict(net, bad, mapping)
    bad = dict(state)
    bad["stem.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match=r"state_dict\['stem.bias'\].*expects \(8,\)"):
        eqxconv.load_torch_state_dict(net, bad)
    bad = dict(state)
    bad["body.1.bias"] = torch.zeros(8)
    with pytest.raises(ValueError, match="'body.1.bias'.*use_bias=False"):
        eqxconv.load_torch_state_dict(net, bad, mapping)
    bad = dict(state)
    del bad["up.bias"]
    with pytest.raises(KeyError, match="no key 'up.bias'"):
        eqxconv.load_torch_state_dict(net, bad, mapping)
    with pytest.raises(ValueError, match="3 eqxconv Conv/ConvTranspose layers"):
        eqxconv.load_torch_state_dict(net, {"stem.weight": state["stem.weight"]})
    with pytest.raises(ValueError, match="'.nope' is not the path"):
        eqxconv.load_torch_state_dict(net, state, {"stem": ".nope"})
    with pytest.raises(ValueError, match="not an eqxconv Conv"):
        eqxconv.load_torch_state_dict(net, state, {"stem": lambda m: m.body[0]})


# ----------------------------------------------------------------------------------
# torch stays optional
# ----------------------------------------------------------------------------------


def test_import_without_torch():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # `import torch` now raises ImportError
        import eqxconv
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        layer = eqxconv.ExtractPatches(2, 3)
        for call in (lambda: eqxconv.to_torch(layer),
                     lambda: eqxconv.from_torch(object())):
            try:
                call()
            except ImportError as error:
                assert "needs PyTorch" in str(error), error
            else:
                raise AssertionError("no ImportError")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
