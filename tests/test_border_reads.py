"""The border-read formulation of padding modes, on one device.

On an input that XLA's partitioner may split, a one-dimensional op applies
`REFLECT`, `REPLICATE` or `CIRCULAR` padding as zero padding plus the window reads
that zero padding misses (`eqxconv._padding.border_reads`). The sharding tests
compare it with the unsharded call, which takes the same formulation whenever more
than one device is visible; here the partitioning test is forced on a single device
and every op is compared with `jnp.pad` followed by `lax`'s own op: values, VJPs and
JVPs, for each lowering of the zero-padded part.
"""

from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqxconv
import eqxconv._ops
import eqxconv._partition

from .helpers import value_vjp_jvp
from .oracles import lax_conv, lax_patches, transpose_weight_layout


# (padding_mode, kernel size, stride, dilation, (low, high), groups, length): every
# mode, pads on one side only, strides that skip border positions, pads as wide as
# the input, and a CIRCULAR pad wider than it (wrapping more than once).
CASES = [
    ("REFLECT", 3, 1, 1, (1, 1), 1, 16),
    ("REPLICATE", 5, 2, 1, (2, 2), 1, 17),
    ("CIRCULAR", 3, 1, 2, (2, 2), 1, 16),
    ("REFLECT", 4, 1, 1, (2, 0), 1, 15),
    ("CIRCULAR", 4, 3, 1, (1, 2), 2, 19),
    ("REPLICATE", 7, 2, 1, (6, 3), 1, 16),
    ("CIRCULAR", 3, 1, 1, (14, 14), 1, 13),
    ("REFLECT", 5, 1, 1, (12, 12), 1, 13),
]
IDS = [f"{m}-k{k}-s{s}-d{d}-p{p[0]}_{p[1]}-g{g}-L{n}" for m, k, s, d, p, g, n in CASES]


@pytest.fixture
def border_reads_taken(monkeypatch):
    """Forces the partitioning test on, and counts the calls that add border reads
    (so that a test also fails if the formulation is not taken)."""
    monkeypatch.setattr(eqxconv._partition, "may_be_partitioned", lambda x: True)
    calls = []
    add = eqxconv._ops.add_border_reads

    def counted(*args, **kwargs):
        calls.append(1)
        return add(*args, **kwargs)

    monkeypatch.setattr(eqxconv._ops, "add_border_reads", counted)
    return calls


def _inputs(key, shape, weight_shape, out_shape):
    kx, kw, kr, kdx, kdw = jr.split(key, 5)
    xs = jr.normal(kx, (2, *shape))
    w = jr.normal(kw, weight_shape)
    r = jr.normal(kr, (2, *out_shape))
    return xs, w, r, jr.normal(kdx, xs.shape), jr.normal(kdw, w.shape)


def _compare(f, oracle, args, atol=1e-4):
    got = value_vjp_jvp(f)(*args)
    want = value_vjp_jvp(oracle)(*args)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=atol)


@pytest.mark.parametrize(
    "impl", ["xla", "shift", "fft", "patches", "xla_patches", "xla_or_patches"]
)
@pytest.mark.parametrize(("mode", "k", "s", "d", "pair", "groups", "n"), CASES, ids=IDS)
def test_conv_matches_padded_lax(
    border_reads_taken, impl, mode, k, s, d, pair, groups, n, getkey
):
    cin, cout = 4, 6
    kw: dict[str, Any] = dict(stride=(s,), dilation=(d,), groups=groups)

    def f(x, w):
        return eqxconv.conv(x, w, padding=(pair,), padding_mode=mode, impl=impl, **kw)

    def oracle(x, w):
        return lax_conv(x, w, pairs=(pair,), mode=mode, **kw)

    out = eqxconv.conv_output_shape((n,), k, stride=s, padding=(pair,), dilation=d)
    args = _inputs(getkey(), (cin, n), (cout, cin // groups, k), (cout, *out))
    _compare(f, oracle, args)
    assert border_reads_taken


@pytest.mark.parametrize(("mode", "k", "s", "d", "pair", "groups", "n"), CASES, ids=IDS)
def test_conv_transpose_is_the_adjoint_of_padded_lax(
    border_reads_taken, mode, k, s, d, pair, groups, n, getkey
):
    """The transposed convolution is the adjoint of the forward one with the same
    mode; the oracle is the VJP of `jnp.pad` and `lax`'s convolution."""
    cin, cout = 4, 6
    out = eqxconv.conv_output_shape((n,), k, stride=s, padding=(pair,), dilation=d)
    extent = (k - 1) * d + 1
    output_padding = n - ((out[0] - 1) * s - sum(pair) + extent)
    kw: dict[str, Any] = dict(stride=(s,), dilation=(d,), groups=groups)

    def forward(v, w_forward):
        return lax_conv(v, w_forward, pairs=(pair,), mode=mode, **kw)

    def oracle(y, w):
        # The transposed weight `(out, in // groups, k)` is the forward conv's
        # `(in, out // groups, k)` after the layout map (its own inverse).
        w_forward = _layout(w, groups)
        _, pullback = jax.vjp(lambda v: forward(v, w_forward), jnp.zeros((cout, n)))
        return pullback(y)[0]

    def f(y, w):
        return eqxconv.conv_transpose(
            y, w, padding=(pair,), output_padding=output_padding, padding_mode=mode,
            **kw,
        )  # fmt: skip

    args = _inputs(getkey(), (cin, *out), (cout, cin // groups, k), (cout, n))
    _compare(f, oracle, args)
    assert border_reads_taken


def _layout(w, groups):
    """`transpose_weight_layout` in jnp, so that the oracle stays differentiable."""
    a, b, k = w.shape
    w = jnp.flip(w, axis=2).reshape(groups, a // groups, b, k).swapaxes(1, 2)
    return w.reshape(b * groups, a // groups, k)


def test_layout_is_the_oracles(getkey):
    w = jr.normal(getkey(), (6, 2, 4))
    np.testing.assert_array_equal(_layout(w, 2), transpose_weight_layout(w, 2))


@pytest.mark.parametrize(("mode", "k", "s", "d", "pair", "groups", "n"), CASES, ids=IDS)
def test_extract_patches_match_padded_lax(
    border_reads_taken, mode, k, s, d, pair, groups, n, getkey
):
    del groups
    c = 3
    kw: dict[str, Any] = dict(stride=(s,), dilation=(d,))

    def f(x, w):
        patches = eqxconv.extract_patches(
            x, k, padding=(pair,), padding_mode=mode, **kw
        )
        return patches * w

    def oracle(x, w):
        return lax_patches(x, (k,), (s,), (pair,), (d,), mode=mode) * w

    out = eqxconv.conv_output_shape((n,), k, stride=s, padding=(pair,), dilation=d)
    args = _inputs(getkey(), (c, n), (c * k, 1), (c * k, *out))
    _compare(f, oracle, args)
    assert border_reads_taken
