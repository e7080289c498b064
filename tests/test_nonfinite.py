"""Non-finite inputs (`inf`, `-inf`, NaN) through every lowering, against PyTorch:
each reaches exactly the outputs whose window holds it, with the NaN, `inf` and finite
entries where PyTorch has them and the same finite values. The FFT lowering is the
documented exception: one non-finite input makes every output of its channel group
NaN."""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqxconv

from .cases import conv, conv_local, conv_transpose, extract_patches, LayerCase
from .oracles import (
    explicit_mode,
    explicit_pairs,
    torch_conv,
    torch_conv_transpose,
    torch_fold,
    torch_local,
    torch_patches,
)


def _poisoned(
    seed: int, shape: tuple[int, ...], values: tuple[float, ...], oracle: Callable
) -> tuple[np.ndarray, np.ndarray]:
    """A standard normal `float32` array with `values` at distinct seeded positions,
    and `oracle` of it; the first seed from `seed` whose oracle has both finite and
    non-finite entries (a poison may land where no window reads, or reach every
    output)."""
    for attempt in range(seed, seed + 20):
        rng = np.random.default_rng(attempt)
        x = rng.standard_normal(shape).astype(np.float32)
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, len(values), replace=False)] = values
        expected = np.asarray(oracle(x))
        finite = np.isfinite(expected)
        if finite.any() and not finite.all():
            return x, expected
    raise AssertionError("no seed shows both finite and non-finite outputs")


# One `inf` alone (so that `inf` outputs are seen), and a mix of all three.
POISONS = {"inf": (np.inf,), "mixed": (np.inf, -np.inf, np.nan)}


def _weight(seed: int, shape: tuple[int, ...]):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _assert_matches(got, expected):
    """NaN, `inf` and `-inf` at the same positions, finite values close."""
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def _check(call: Callable, seed: int, shape: tuple[int, ...], oracle: Callable, *args):
    """`call(x, *args)`, jitted once, against `oracle(x)` for every poison."""
    jitted = jax.jit(call)
    for values in POISONS.values():
        x, expected = _poisoned(seed, shape, values, oracle)
        _assert_matches(jitted(x, *args), expected)


def _geometry(case: LayerCase) -> tuple[tuple[int, ...], ...]:
    """Kernel size, stride, dilation and input dilation, as tuples."""
    fields = ("kernel_size", "stride", "dilation", "input_dilation")
    return tuple(case.tuple_of(f) for f in fields)


# --- conv ---------------------------------------------------------------------------

CONV_CASES = [
    conv((9, 8), padding=1, impl=impl)
    for impl in ("auto", "xla", "shift")
] + [
    conv((11,), in_channels=4, out_channels=4, kernel_size=4, stride=2,
         padding="SAME", dilation=2, groups=2, padding_mode="REFLECT", impl="shift"),
    conv((7, 8), in_channels=2, out_channels=4, kernel_size=(3, 2), stride=(2, 1),
         padding="CIRCULAR", groups=2, impl="shift"),
    conv((9, 7), stride=2, padding=((2, 0), (1, 1)), dilation=(1, 2),
         padding_mode="REPLICATE", impl="xla"),
    conv((4, 5, 4), in_channels=3, out_channels=3, kernel_size=2, padding="SAME",
         groups=3, padding_mode="CIRCULAR", impl="shift"),
    conv((4, 5, 4), kernel_size=2, stride=(1, 2, 1), padding=1, impl="xla"),
    conv((4, 5, 4), kernel_size=2, stride=(1, 2, 1), padding=1, impl="patches"),
    conv((7, 6), stride=2, padding=2, groups=2, padding_mode="REFLECT", impl="patches"),
    conv((6, 5), stride=2, padding=1, input_dilation=2, impl="xla"),
    conv((6, 5), stride=2, padding=1, input_dilation=2, impl="patches"),
    conv((7, 6), stride=2, padding=2, padding_mode="REFLECT", impl="xla_patches"),
    conv((4, 5, 4), in_channels=1, padding=1, impl="xla_or_patches"),
]  # fmt: skip


def _dilated(x: np.ndarray, input_dilation: tuple[int, ...]) -> np.ndarray:
    """Zeros between neighbours (PyTorch has no input dilation)."""
    shape = [(s - 1) * r + 1 for s, r in zip(x.shape[1:], input_dilation, strict=True)]
    out = np.zeros((x.shape[0], *shape), x.dtype)
    out[(slice(None), *(slice(None, None, r) for r in input_dilation))] = x
    return out


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.id)
def test_conv(case):
    k, s, d, r = _geometry(case)
    pairs = explicit_pairs(case.padding, case.spatial, k, s, d, r)
    mode = explicit_mode(case.padding, case.padding_mode)
    w = _weight(1, (case.out_channels, case.in_channels // case.groups, *k))
    call = functools.partial(
        eqxconv.conv, stride=s, padding=case.padding, dilation=d, input_dilation=r,
        groups=case.groups, padding_mode=case.padding_mode, impl=case.impl,
    )  # fmt: skip
    _check(
        call,
        0,
        (case.in_channels, *case.spatial),
        lambda x: torch_conv(_dilated(x, r), w, stride=s, pairs=pairs, dilation=d,
                             groups=case.groups, mode=mode),
        w,
    )  # fmt: skip


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_fft_spreads_over_the_group(groups):
    """The documented behaviour of `impl='fft'`: the FFT mixes every position, so a
    non-finite input makes every output of its group NaN; the other groups match."""
    x = np.random.default_rng(0).standard_normal((4, 9, 8)).astype(np.float32)
    x[0, 3, 4] = np.inf
    w = _weight(1, (4, 4 // groups, 3, 3))
    got = np.asarray(
        jax.jit(functools.partial(eqxconv.conv, padding=1, groups=groups, impl="fft"))(
            x, w
        )
    )
    poisoned_outputs = 4 // groups  # the outputs of group 0
    assert np.isnan(got[:poisoned_outputs]).all()
    expected = torch_conv(x, w, stride=(1, 1), pairs=((1, 1),) * 2,
                          dilation=(1, 1), groups=groups)  # fmt: skip
    np.testing.assert_allclose(
        got[poisoned_outputs:], expected[poisoned_outputs:], rtol=1e-4, atol=1e-4
    )


# --- conv_transpose -----------------------------------------------------------------


def test_conv_transpose_issue_example():
    x = jnp.array([[1.0, jnp.inf, 2.0]])
    for impl in ("auto", "phase", "interior", "lhs_dilation"):
        got = eqxconv.conv_transpose(
            x, jnp.ones((1, 1, 1)), stride=2, output_padding=1, impl=impl
        )
        np.testing.assert_array_equal(got, [[1.0, 0.0, np.inf, 0.0, 2.0, 0.0]])


# Phases with fewer taps than the others: kernels that are no multiple of the stride,
# dilated kernels (some phases reached by no tap, some by every other one), 2D/3D.
TRANSPOSE_CASES = [
    conv_transpose((3,), in_channels=1, out_channels=1, kernel_size=1, stride=2,
                   output_padding=1),
    conv_transpose((7,), stride=2, padding=1, output_padding=1),
    conv_transpose((6,), stride=2, dilation=2),
    conv_transpose((6,), kernel_size=3, stride=3, dilation=2, padding=1),
    conv_transpose((5,), kernel_size=4, stride=2, padding=1),  # uniform phases
    conv_transpose((5, 4), stride=2, padding=1, output_padding=1),
    conv_transpose((5, 4), in_channels=4, out_channels=2, kernel_size=(3, 2),
                   stride=(2, 3), padding=(1, 0), groups=2),
    conv_transpose((4, 5), kernel_size=3, stride=(1, 2), dilation=(2, 1)),
    conv_transpose((3, 4, 3), stride=2, padding=1, output_padding=(1, 0, 1)),
    conv_transpose((6,), kernel_size=3, dilation=2),  # unstrided
]  # fmt: skip


@pytest.mark.parametrize("impl", ["auto", "phase", "interior", "lhs_dilation"])
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: c.id)
def test_conv_transpose(case, impl):
    k, s, d, _ = _geometry(case)
    padding, output_padding = case.tuple_of("padding"), case.tuple_of("output_padding")
    w = _weight(3, (case.out_channels, case.in_channels // case.groups, *k))
    call = functools.partial(
        eqxconv.conv_transpose, stride=s, padding=padding,
        output_padding=output_padding, dilation=d, groups=case.groups, impl=impl,
    )  # fmt: skip
    _check(
        call,
        2,
        (case.in_channels, *case.spatial),
        lambda x: torch_conv_transpose(x, w, stride=s, padding=padding,
                                       output_padding=output_padding, dilation=d,
                                       groups=case.groups),
        w,
    )  # fmt: skip


# --- patches and conv_local ---------------------------------------------------------

PATCHES_CASES = [
    extract_patches((8,), kernel_size=4, stride=4, impl=impl)
    for impl in ("auto", "reshape", "slices", "separable")
] + [
    extract_patches((9, 8), stride=2, padding="SAME", impl=impl)
    for impl in ("auto", "slices", "separable")
] + [
    extract_patches((12, 8), kernel_size=4, stride=4, padding=(1, 2), impl="reshape"),
    extract_patches((11, 9), kernel_size=(2, 3), stride=(1, 2),
                    padding=((1, 0), (2, 1)), dilation=(2, 1), impl="separable"),
    extract_patches((13,), kernel_size=5, stride=3, dilation=2,
                    padding_mode="REFLECT", impl="separable"),
    extract_patches((7, 8), padding=1, padding_mode="CIRCULAR", impl="slices"),
    extract_patches((5, 5, 4), kernel_size=2, stride=(1, 2, 1), padding=1,
                    padding_mode="REPLICATE", impl="separable"),
    extract_patches((4, 6, 6), kernel_size=2, stride=2, impl="reshape"),
    extract_patches((6, 5), stride=2, padding=1, input_dilation=2, impl="separable"),
]  # fmt: skip


@pytest.mark.parametrize("case", PATCHES_CASES, ids=lambda c: c.id)
def test_extract_and_fold_patches(case):
    k, s, d, r = _geometry(case)
    pairs = explicit_pairs(case.padding, case.spatial, k, s, d, r)
    mode = explicit_mode(case.padding, case.padding_mode)
    extract = functools.partial(
        eqxconv.extract_patches, kernel_size=k, stride=s, padding=case.padding,
        dilation=d, padding_mode=case.padding_mode, input_dilation=r, impl=case.impl,
    )  # fmt: skip
    _check(
        extract,
        4,
        (case.in_channels, *case.spatial),
        lambda x: torch_patches(x, k, s, pairs, d, mode, r),
    )

    if mode != "ZEROS" or any(v != 1 for v in r):
        return  # the fold is the adjoint of zero padding, of undilated inputs
    fold = functools.partial(
        eqxconv.fold_patches, out_spatial_shape=case.spatial, kernel_size=k,
        stride=s, padding=case.padding, dilation=d, impl=case.impl,
    )  # fmt: skip
    _check(
        fold,
        5,
        torch_patches(
            np.zeros((case.in_channels, *case.spatial)), k, s, pairs, d
        ).shape,
        lambda p: torch_fold(p, case.spatial, k, s, pairs, d),
    )


LOCAL_CASES = [
    conv_local((9,), stride=2, padding=1),
    conv_local((10,), in_channels=4, out_channels=6, padding="CAUSAL", dilation=2,
               groups=2, chunk_size=3),
    conv_local((8, 9), kernel_size=(2, 3), stride=(2, 1), padding="SAME",
               dilation=(1, 2), padding_mode="REFLECT"),
    conv_local((9, 7), in_channels=4, out_channels=6, padding=1, groups=2,
               padding_mode="REPLICATE", chunk_size=15),
    conv_local((8, 8), kernel_size=4, stride=4),
    conv_local((4, 5, 4), kernel_size=2, padding="SAME_LOWER", chunk_size=8),
    conv_local((6, 5), padding=1, input_dilation=2),
]  # fmt: skip


@pytest.mark.parametrize("case", LOCAL_CASES, ids=lambda c: c.id)
def test_conv_local(case):
    k, s, d, r = _geometry(case)
    pairs = explicit_pairs(case.padding, case.spatial, k, s, d, r)
    mode = explicit_mode(case.padding, case.padding_mode)
    padded = [
        (size - 1) * v + 1 + lo + hi
        for size, v, (lo, hi) in zip(case.spatial, r, pairs, strict=True)
    ]
    out_shape = eqxconv.conv_output_shape(padded, k, stride=s, dilation=d)
    per_position = case.in_channels // case.groups * math.prod(k)
    w = _weight(7, (case.out_channels, per_position, *out_shape))
    call = functools.partial(
        eqxconv.conv_local, kernel_size=k, stride=s, padding=case.padding,
        dilation=d, groups=case.groups, padding_mode=case.padding_mode,
        input_dilation=r, chunk_size=case.chunk_size,
    )  # fmt: skip
    _check(
        call,
        6,
        (case.in_channels, *case.spatial),
        lambda x: torch_local(x, w, k, s, pairs, d, case.groups, mode, r),
        w,
    )
