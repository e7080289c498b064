"""`extract_patches`/`fold_patches` and `ExtractPatches`/`FoldPatches` against
`lax.conv_general_dilated_patches` (and its `jax.linear_transpose`), torch
`F.unfold`/`F.fold`, in 1D/2D/3D, every padding form and mode, every lowering; grads
and errors. (vmap, jit and adjointness: `test_transforms.py`.)"""

from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import torch.nn.functional as F

import eqxconv

from .cases import extract_patches, LayerCase
from .helpers import apply
from .oracles import explicit_mode, explicit_pairs, lax_patches, to_torch


# Named for the lowerings they exercise (`test_every_lowering`).
PAIRS_DILATED = extract_patches(
    (11, 9), in_channels=3, kernel_size=(2, 3), stride=(1, 2),
    padding=((1, 0), (2, 1)), dilation=(2, 1),
)  # fmt: skip
VIT_PADDED = extract_patches(
    (13, 9), kernel_size=4, stride=4, padding=(1, 2)
)  # reshape after padding, uncovered tail
RESHAPE_3D = extract_patches((4, 6, 6), kernel_size=2, stride=2)
CASES = [
    extract_patches((13,), stride=2, padding=1),
    extract_patches((10,), kernel_size=4, stride=4),  # non-overlapping: reshape
    extract_patches((9,), in_channels=1, kernel_size=2, padding="CAUSAL",
                    dilation=2),
    extract_patches((8,), padding="circular"),
    extract_patches((11, 9), in_channels=3),
    PAIRS_DILATED,
    extract_patches((12, 8), kernel_size=4, stride=4,
                    padding="VALID"),  # ViT patchify: reshape
    VIT_PADDED,
    extract_patches((7, 8), stride=2, padding="same_lower", padding_mode="REFLECT"),
    extract_patches((6, 7), padding="SAME", padding_mode="REPLICATE"),
    extract_patches((6, 6), in_channels=1, kernel_size=(3, 2), stride=(2, 1),
                    padding=[1, 2], dilation=(1, 2), padding_mode="CIRCULAR"),
    extract_patches((12, 11), in_channels=1, kernel_size=9, padding=2),  # 81 offsets
    extract_patches((5, 6, 4), kernel_size=2, padding=1),
    RESHAPE_3D,
    extract_patches((5, 5, 5), in_channels=1, stride=(1, 2, 1), padding="SAME",
                    dilation=(1, 1, 2), padding_mode="REFLECT"),
    # Strided windows are phase slices: stride with dilation, stride above kernel.
    extract_patches((15, 13), stride=2, padding=1, dilation=(2, 3)),
    extract_patches((14,), in_channels=1, kernel_size=2, stride=3, padding=1),
    extract_patches((16,), in_channels=1, kernel_size=5, stride=3, dilation=2,
                    padding_mode="REFLECT"),
]  # fmt: skip


def _config(case: LayerCase):
    k, s, d = (case.tuple_of(f) for f in ("kernel_size", "stride", "dilation"))
    pairs: Any = explicit_pairs(case.padding, case.spatial, k, s, d)
    mode = explicit_mode(case.padding, case.padding_mode)
    return case.in_channels, case.spatial, k, s, case.padding, d, mode, pairs


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_against_lax_patches(case, getkey):
    """extract_patches == lax patches of the padded input; fold_patches == the linear
    transpose of (zero-pad + lax patches), an adjoint computed independently; the
    gradients of both against those through lax. One compilation per case."""
    channels, in_shape, k, s, padding, d, mode, pairs = _config(case)
    raw_mode = case.padding_mode
    fold_padding = padding if mode == "ZEROS" else pairs  # fold pads with zeros only
    x = jr.normal(getkey(), (channels, *in_shape))
    grid = eqxconv.conv_output_shape(in_shape, k, stride=s, padding=padding, dilation=d)
    p = jr.normal(getkey(), (channels * int(np.prod(k)), *grid))

    def extract(x):
        return eqxconv.extract_patches(
            x, k, stride=s, padding=padding, dilation=d, padding_mode=raw_mode
        )

    def fold(p):
        return eqxconv.fold_patches(
            p, in_shape, k, stride=s, padding=fold_padding, dilation=d
        )

    @jax.jit
    def run(x, p):
        oracle_t = jax.linear_transpose(lambda x: lax_patches(x, k, s, pairs, d), x)
        return dict(
            extract=(extract(x), lax_patches(x, k, s, pairs, d, mode)),
            fold=(fold(p), oracle_t(p)[0]),
            grad_extract=(
                jax.grad(lambda x: jnp.sum(extract(x) * p))(x),
                jax.grad(lambda x: jnp.sum(lax_patches(x, k, s, pairs, d, mode) * p))(
                    x
                ),
            ),
            grad_fold=(
                jax.grad(lambda p: jnp.sum(fold(p) * x))(p),
                lax_patches(x, k, s, pairs, d),
            ),
        )

    for name, (got, expected) in run(x, p).items():
        assert got.shape == expected.shape, name
        assert got.dtype == x.dtype, name
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("strategy", ["slices", "separable", "reshape"])
@pytest.mark.parametrize(
    "case", [PAIRS_DILATED, VIT_PADDED, RESHAPE_3D], ids=["2d", "vit", "3d"]
)
def test_every_lowering(strategy, case, getkey):
    channels, in_shape, k, s, padding, d, mode, pairs = _config(case)
    x = jr.normal(getkey(), (channels, *in_shape))
    kwargs: dict[str, Any] = dict(kernel_size=k, stride=s, dilation=d)
    if strategy == "reshape" and s != k:
        with pytest.raises(ValueError, match="non-overlapping"):
            eqxconv.extract_patches(
                x, padding=tuple(pairs), padding_mode="ZEROS", impl=strategy,
                **kwargs,
            )  # fmt: skip
        return
    pairs = tuple(pairs)

    @jax.jit
    def run(x):
        got = eqxconv.extract_patches(
            x, padding=pairs, padding_mode="ZEROS", impl=strategy, **kwargs
        )
        folded = eqxconv.fold_patches(
            got, in_shape, padding=pairs, impl=strategy, **kwargs
        )
        oracle = lax_patches(x, k, s, pairs, d)
        oracle_t = jax.linear_transpose(lambda x: lax_patches(x, k, s, pairs, d), x)
        return got, oracle, folded, oracle_t(oracle)[0]

    got, oracle, folded, expected = run(x)
    np.testing.assert_allclose(got, oracle, atol=1e-6)
    np.testing.assert_allclose(folded, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "k, s, p, d", [(3, 1, 1, 1), ((2, 3), (2, 1), (0, 1), (1, 2)), (4, 4, 0, 1)]
)
def test_torch_unfold_and_fold(k, s, p, d, getkey):
    x = jr.normal(getkey(), (3, 10, 9))
    patches = eqxconv.extract_patches(x, k, stride=s, padding=p, dilation=d)
    expected = F.unfold(to_torch(x)[None], k, dilation=d, padding=p, stride=s)[0]
    np.testing.assert_allclose(
        patches.reshape(patches.shape[0], -1), expected.numpy(), atol=1e-6
    )
    folded = eqxconv.fold_patches(patches, (10, 9), k, stride=s, padding=p, dilation=d)
    expected_fold = F.fold(expected[None], (10, 9), k, dilation=d, padding=p, stride=s)
    np.testing.assert_allclose(folded, expected_fold[0].numpy(), rtol=1e-5, atol=1e-5)


def test_modules_match_lax_and_hold_no_leaves(getkey):
    extract = eqxconv.ExtractPatches(2, 3, stride=2, padding="SAME", dilation=1)
    fold = eqxconv.FoldPatches(2, (9, 8), 3, stride=2, padding="SAME")
    x = jr.normal(getkey(), (2, 9, 8))
    assert extract.out_spatial_shape((9, 8)) == (5, 4)
    assert fold.in_spatial_shape == (5, 4)
    assert fold.out_spatial_shape((5, 4)) == (9, 8)
    pairs = explicit_pairs("SAME", (9, 8), (3, 3), (2, 2), (1, 1))
    np.testing.assert_allclose(
        apply(extract, x), lax_patches(x, (3, 3), (2, 2), pairs, (1, 1)), atol=1e-6
    )
    # Static configuration, no leaves; readable repr.
    assert jax.tree_util.tree_leaves(extract) == []
    assert jax.tree_util.tree_leaves(fold) == []
    assert "ExtractPatches" in repr(extract)


def test_preferred_element_type_and_dtype(getkey):
    x = jr.normal(getkey(), (2, 6, 6)).astype(jnp.bfloat16)
    out = eqxconv.extract_patches(x, 2, stride=2, preferred_element_type=jnp.float32)
    assert out.dtype == jnp.float32
    assert eqxconv.extract_patches(x, 3).dtype == jnp.bfloat16


def test_errors():
    extract = eqxconv.ExtractPatches(2, 3)
    with pytest.raises(ValueError, match=r"jax\.vmap"):
        extract(jnp.zeros((4, 2, 8, 8)))
    with pytest.raises(ValueError, match=r"ExtractPatches.*\(1, 2, 2\)"):
        extract(jnp.zeros((1, 2, 2)))
    with pytest.raises(TypeError, match="floating"):
        extract(jnp.zeros((1, 5, 5), jnp.int32))
    with pytest.raises(ValueError, match="kernel_size"):
        eqxconv.ExtractPatches(2, (3, 3, 3))
    with pytest.raises(ValueError, match="padding_mode"):
        eqxconv.ExtractPatches(2, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="padding"):
        eqxconv.ExtractPatches(2, 3, padding="FULL")
    with pytest.raises(ValueError, match="stride"):
        eqxconv.extract_patches(jnp.zeros((1, 5, 5)), 3, stride=0)
    with pytest.raises(ValueError, match=r"eqxconv.extract_patches.*\(1, 2, 5\)"):
        eqxconv.extract_patches(jnp.zeros((1, 2, 5)), 3)

    fold = eqxconv.FoldPatches(2, (6, 6), 3)
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(9, 5, 4\)"):
        fold(jnp.zeros((9, 5, 4)))
    with pytest.raises(ValueError, match=r"C \* 9"):
        fold(jnp.zeros((10, 4, 4)))
    with pytest.raises(ValueError, match="too small"):
        eqxconv.FoldPatches(2, (2, 2), 3)
    with pytest.raises(ValueError, match="not allowed when folding"):
        eqxconv.FoldPatches(2, (6, 6), 3, padding="circular")
    with pytest.raises(ValueError, match="out_spatial_shape"):
        eqxconv.FoldPatches(2, (6,), 3)
    with pytest.raises(ValueError, match=r"C \* 9"):
        eqxconv.fold_patches(jnp.zeros((9, 3, 4)), (6, 6), 3)
    with pytest.raises(ValueError, match="too small"):
        eqxconv.fold_patches(jnp.zeros((9, 1, 1)), (2, 6), 3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32])
def test_conv_lowering_equals_slices(dtype):
    """The one-hot convolution that `impl='auto'` takes where the input may be
    partitioned over devices gives the slices' values (integers fall back to them),
    and its fold is their fold."""
    from eqxconv._lowering_patches import extract_padded, fold_padded

    x = (jnp.arange(3 * 9 * 8) % 7).reshape(3, 9, 8).astype(dtype)
    args = ((3, 2), (2, 1), (1, 2), (4, 6))
    want = extract_padded(x, *args, impl="slices")
    assert jnp.array_equal(extract_padded(x, *args, impl="conv"), want)
    if dtype == jnp.float32:
        folded = fold_padded(want, (9, 8), *args[:3], impl="conv")
        assert jnp.allclose(folded, fold_padded(want, (9, 8), *args[:3], impl="slices"))
