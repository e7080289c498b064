"""Argument normalisation and padding arithmetic, against lax and PyTorch's formulas."""

import itertools
import math

import jax.lax as lax
import numpy as np
import pytest

from eqxconv import conv_output_shape
from eqxconv._args import normalise_padding, to_tuple
from eqxconv._geometry import resolve_padding


@pytest.mark.parametrize(
    ("padding", "mode", "expected"),
    [
        (1, "zeros", (((1, 1), (1, 1)), "ZEROS")),
        ((1, 2), "Reflect", (((1, 1), (2, 2)), "REFLECT")),
        (((0, 1), (2, 3)), "replicate", (((0, 1), (2, 3)), "REPLICATE")),
        ([(0, 1), 3], "CIRCULAR", (((0, 1), (3, 3)), "CIRCULAR")),
        ("valid", "ZEROS", ("VALID", "ZEROS")),
        ("same", "zeros", ("SAME", "ZEROS")),
        ("Same_Lower", "ZEROS", ("SAME_LOWER", "ZEROS")),
        ("causal", "REFLECT", ("CAUSAL", "REFLECT")),
        ("circular", "ZEROS", ("CIRCULAR", "CIRCULAR")),
        ("CIRCULAR", "circular", ("CIRCULAR", "CIRCULAR")),
        (np.int64(2), "ZEROS", (((2, 2), (2, 2)), "ZEROS")),
    ],
)
def test_normalise_padding(padding, mode, expected):
    assert normalise_padding(padding, mode, 2) == expected


@pytest.mark.parametrize(
    ("padding", "mode", "error", "match"),
    [
        ("full", "ZEROS", ValueError, "'full'"),
        ((1, 2, 3), "ZEROS", ValueError, "sequence of 2"),
        (((1, 2, 3), 1), "ZEROS", ValueError, "pairs"),
        (-1, "ZEROS", ValueError, "non-negative"),
        (((0, -1), 1), "ZEROS", ValueError, "non-negative"),
        (1.5, "ZEROS", TypeError, "1.5"),
        (True, "ZEROS", TypeError, "bool"),
        (1, "mirror", ValueError, "padding_mode.*'mirror'"),
        (1, None, TypeError, "padding_mode"),
        ("circular", "reflect", ValueError, "CIRCULAR.*reflect"),
    ],
)
def test_normalise_padding_errors(padding, mode, error, match):
    with pytest.raises(error, match=match):
        normalise_padding(padding, mode, 2)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ((1, 2, 3), ValueError, "kernel_size.*sequence of 2.*length 3"),
        (0, ValueError, "kernel_size.*positive"),
        ((3, -1), ValueError, "kernel_size.*positive"),
        ("3", TypeError, "kernel_size"),
        (3.0, TypeError, "kernel_size"),
    ],
)
def test_to_tuple_errors(value, error, match):
    with pytest.raises(error, match=match):
        to_tuple(value, 2, "kernel_size")


def test_to_tuple():
    assert to_tuple(3, 3, "stride") == (3, 3, 3)
    numpy_ints = [1, np.int32(2)]
    assert to_tuple(numpy_ints, 2, "stride") == (1, 2)  # pyright: ignore[reportArgumentType]


SIZES = range(1, 12)
KERNELS = range(1, 5)
STRIDES = range(1, 4)
DILATIONS = range(1, 3)


@pytest.mark.parametrize("padding", ["SAME", "SAME_LOWER", "VALID"])
def test_string_padding_matches_lax(padding):
    for size, k, s, d in itertools.product(SIZES, KERNELS, STRIDES, DILATIONS):
        extent = (k - 1) * d + 1
        expected = lax.padtype_to_pads((size,), (extent,), (s,), padding)
        got = resolve_padding(padding, (size,), (k,), (s,), (d,))
        assert [tuple(p) for p in expected] == list(got), (size, k, s, d)


def test_causal_padding():
    for size, k, s, d in itertools.product(SIZES, KERNELS, STRIDES, DILATIONS):
        assert resolve_padding("CAUSAL", (size,), (k,), (s,), (d,)) == (
            (d * (k - 1), 0),
        )
        # The CAUSAL output has ceil(size / stride) positions, as SAME does.
        assert conv_output_shape(
            (size,), k, stride=s, padding="causal", dilation=d
        ) == (math.ceil(size / s),)


def test_conv_output_shape_matches_torch_formula():
    # PyTorch's documented Conv output size, with asymmetric padding pairs.
    for size, k, s, d, lo, hi in itertools.product(
        SIZES, KERNELS, STRIDES, DILATIONS, range(3), range(3)
    ):
        expected = math.floor((size + lo + hi - d * (k - 1) - 1) / s + 1)
        if expected < 1:
            with pytest.raises(ValueError, match="smaller than the dilated kernel"):
                conv_output_shape((size,), k, stride=s, padding=[(lo, hi)], dilation=d)
        else:
            got = conv_output_shape(
                (size,), (k,), stride=s, padding=((lo, hi),), dilation=d
            )
            assert got == (expected,)


def test_conv_output_shape_same_is_ceil():
    for size, k, s, d in itertools.product(SIZES, KERNELS, STRIDES, DILATIONS):
        shape = conv_output_shape(
            (size, size + 1), k, stride=s, padding="same", dilation=d
        )
        assert shape == (math.ceil(size / s), math.ceil((size + 1) / s))
