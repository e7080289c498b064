"""A seeded random sweep of valid configurations of every layer family (`Conv`,
`ConvTranspose`, `ConvLocal`, `ExtractPatches`/`FoldPatches`) against the `lax`
oracles: values and the gradients of a random cotangent (in the input and every
parameter), in `float32`, `float64` and `bfloat16`, under strict dtype promotion.

The configurations are drawn once, at import, by `numpy.random.default_rng` with a
fixed seed per family over the number of spatial dimensions, channels, groups,
kernel, stride, dilation, padding forms and modes, input dilation and lowerings; a
draw that eqxconv refuses at construction, or whose input the window does not fit,
is drawn again. The lowerings (`impl`) and the dtypes take turns, so that every
lowering meets every dtype. `bfloat16` is compared with the `float32` oracle of the
same (rounded) numbers. Tolerances are relative to the oracle applied to the
absolute values, the sum of the magnitudes of the terms that rounding errors scale
with. (`test_torch_interop.py` sweeps `from_torch` round trips in `float32`; this
sweeps the layers and their gradients.)"""

import dataclasses
import functools
import zlib
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqxconv
from eqxconv._args import check_patches_impl, CONV_IMPLS

from .cases import LayerCase
from .oracles import (
    explicit_mode,
    explicit_pairs,
    lax_conv,
    lax_local,
    lax_patches,
)


CONFIGS_PER_FAMILY = 12
DTYPES = ("float32", "float64", "bfloat16")
# Relative to the sum of the magnitudes of the terms of each entry (`_close`).
TOLERANCE = {"float32": 1e-5, "float64": 1e-12, "bfloat16": 3e-2}

PADDING_STRINGS = ("VALID", "SAME", "SAME_LOWER", "CAUSAL", "CIRCULAR")
MODES = ("ZEROS", "REFLECT", "REPLICATE", "CIRCULAR")


@dataclasses.dataclass(frozen=True)
class Draw:
    case: LayerCase
    extras: tuple[tuple[str, Any], ...] = ()
    """Constructor keywords `LayerCase.build` does not pass (`input_dilation`)."""

    @property
    def id(self) -> str:
        extras = "".join(f"-{k}={v}" for k, v in self.extras)
        return self.case.id + extras


def _ints(rng, n: int, low: int, high: int) -> tuple[int, ...]:
    """`n` ints in `[low, high]`."""
    return tuple(int(v) for v in rng.integers(low, high + 1, n))


def _padding(rng, n: int, strings: tuple[str, ...] = PADDING_STRINGS) -> Any:
    forms: list[Any] = [
        int(rng.integers(3)),
        _ints(rng, n, 0, 2),
        tuple(_ints(rng, 2, 0, 2) for _ in range(n)),
        *strings,
    ]
    return forms[int(rng.integers(len(forms)))]


def _draw_conv(rng, n: int, index: int) -> Draw:
    groups = int(rng.choice([1, 2]))
    case = LayerCase(
        "conv",
        _ints(rng, n, 3, 7 if n < 3 else 5),
        kernel_size=_ints(rng, n, 1, 3),
        stride=_ints(rng, n, 1, 2),
        padding=_padding(rng, n),
        dilation=_ints(rng, n, 1, 2),
        in_channels=groups * int(rng.integers(1, 3)),
        out_channels=groups * int(rng.integers(1, 3)),
        groups=groups,
        use_bias=bool(rng.random() < 0.7),
        padding_mode=str(rng.choice(MODES)),
        impl=CONV_IMPLS[index % len(CONV_IMPLS)],
    )
    return Draw(case)


def _draw_transpose(rng, n: int, index: int) -> Draw:
    groups = int(rng.choice([1, 2]))
    stride = _ints(rng, n, 1, 3)
    padding = _padding(rng, n, ("VALID", "SAME"))
    dilation = _ints(rng, n, 1, 2)
    case = LayerCase(
        "conv_transpose",
        _ints(rng, n, 2, 5 if n < 3 else 3),
        kernel_size=_ints(rng, n, 1, 4),
        stride=stride,
        padding=padding,
        dilation=dilation,
        in_channels=groups * int(rng.integers(1, 3)),
        out_channels=groups * int(rng.integers(1, 3)),
        groups=groups,
        use_bias=bool(rng.random() < 0.7),
        padding_mode=str(rng.choice(MODES)),
        output_padding=tuple(int(rng.integers(s)) for s in stride),
        impl=("auto", "phase", "interior", "lhs_dilation")[index % 4],
    )
    return Draw(case)


def _draw_local(rng, n: int, index: int) -> Draw:
    del index
    groups = int(rng.choice([1, 2]))
    dilated = rng.random() < 0.25
    case = LayerCase(
        "conv_local",
        _ints(rng, n, 3, 7 if n < 3 else 4),
        kernel_size=_ints(rng, n, 1, 3),
        stride=_ints(rng, n, 1, 2),
        padding=_padding(rng, n),
        dilation=_ints(rng, n, 1, 2),
        in_channels=groups * int(rng.integers(1, 3)),
        out_channels=groups * int(rng.integers(1, 3)),
        groups=groups,
        use_bias=bool(rng.random() < 0.7),
        padding_mode="ZEROS" if dilated else str(rng.choice(MODES)),
        chunk_size=None if rng.random() < 0.5 else int(rng.integers(2, 9)),
    )
    extras = (("input_dilation", _ints(rng, n, 1, 2)),) if dilated else ()
    return Draw(case, extras)


def _draw_patches(rng, n: int, index: int) -> Draw:
    impl = ("reshape", "auto", "slices", "separable")[index % 4]
    tile = impl == "reshape" or rng.random() < 0.2  # non-overlapping windows
    kernel = _ints(rng, n, 1, 3)
    stride = kernel if tile else _ints(rng, n, 1, 3)
    dilated = rng.random() < 0.2
    case = LayerCase(
        "extract_patches",
        _ints(rng, n, 3, 8 if n < 3 else 5),
        kernel_size=kernel,
        stride=stride,
        padding=_padding(rng, n),
        dilation=(1,) * n if tile else _ints(rng, n, 1, 2),
        in_channels=int(rng.integers(1, 3)),
        padding_mode="ZEROS" if dilated else str(rng.choice(MODES)),
        impl=impl,
    )
    extras = (("input_dilation", _ints(rng, n, 1, 2)),) if dilated else ()
    return Draw(case, extras)


def _input_dilation(draw: Draw) -> tuple[int, ...]:
    r = dict(draw.extras).get("input_dilation", 1)
    return (r,) * draw.case.n if isinstance(r, int) else tuple(r)


def _zeros(key, shape, dtype):
    del key
    return np.zeros(shape, dtype)


def _build(draw: Draw, key: Any, dtype: Any = None, **extras) -> Any:
    """The layer; for patches, the functional extraction (the modules take no
    `impl`)."""
    case = draw.case
    if case.family == "extract_patches":
        return functools.partial(
            eqxconv.extract_patches, kernel_size=case.kernel_size, stride=case.stride,
            padding=case.padding, dilation=case.dilation,
            padding_mode=case.padding_mode, input_dilation=_input_dilation(draw),
            impl=case.impl,
        )  # fmt: skip
    return case.build(key, dtype=dtype, **dict(draw.extras), **extras)


def _valid(draw: Draw) -> bool:
    """Whether eqxconv constructs the configuration and the input fits (pure Python
    on the shapes: tracing every draw would cost more than the sweep)."""
    case = draw.case
    dilated = [(m - 1) * r + 1 for m, r in zip(case.spatial, _input_dilation(draw),
                                                strict=True)]  # fmt: skip
    try:
        if case.family == "extract_patches":
            layer = eqxconv.ExtractPatches(
                case.n, case.kernel_size, case.stride, case.padding, case.dilation,
                case.padding_mode, input_dilation=_input_dilation(draw),
            )  # fmt: skip
            check_patches_impl(case.impl, layer.kernel_size, layer.stride,
                               layer.dilation)  # fmt: skip
            layer.out_spatial_shape(case.spatial)
            return True
        layer = _build(draw, jax.random.key(0), kernel_init=_zeros, bias_init=_zeros)
        layer.out_spatial_shape(
            case.spatial if case.family == "conv_local" else dilated
        )
    except (ValueError, TypeError):
        return False
    return True


def _sweep(draw: Callable, seed: int) -> list[Draw]:
    rng = np.random.default_rng(seed)
    found: list[Draw] = []
    while len(found) < CONFIGS_PER_FAMILY:
        # The lowerings in turns, so that each has its share.
        candidate = draw(rng, int(rng.integers(1, 4)), len(found))
        if _valid(candidate):
            found.append(candidate)
    return found


SWEEPS = {
    "conv": _sweep(_draw_conv, 0),
    "conv_transpose": _sweep(_draw_transpose, 1),
    "conv_local": _sweep(_draw_local, 2),
    "patches": _sweep(_draw_patches, 3),
}
# Each configuration in one dtype, in turns: every family meets every dtype four
# times, at a third of the compilations of all three each.
PARAMS = [
    pytest.param(draw, DTYPES[i % 3], id=f"{family}{i}-{DTYPES[i % 3]}-{draw.id}")
    for family, draws in SWEEPS.items()
    for i, draw in enumerate(draws)
]


# --- Oracles, from `lax` ------------------------------------------------------------


def _geometry(draw: Draw) -> tuple[tuple[int, ...], ...]:
    case = draw.case
    r = _input_dilation(draw)
    k, s, d = (case.tuple_of(f) for f in ("kernel_size", "stride", "dilation"))
    return k, s, d, r


def _forward_weight(weight, groups: int):
    """The forward convolution's weight of a transposed one (`jnp`, differentiable):
    spatial axes flipped, the two channel axes swapped within each group."""
    a, b, *kernel = weight.shape
    w = jnp.flip(weight, axis=tuple(range(2, weight.ndim)))
    w = w.reshape(groups, a // groups, b, *kernel).swapaxes(1, 2)
    return w.reshape(b * groups, a // groups, *kernel)


def _transposed_out_shape(draw: Draw) -> tuple[int, ...]:
    """PyTorch's output size of a transposed convolution (`'SAME'`: the contract's)."""
    case = draw.case
    k, s, d, _ = _geometry(draw)
    op = case.tuple_of("output_padding")
    if isinstance(case.padding, str) and case.padding.upper() == "SAME":
        return tuple(m * si - o for m, si, o in zip(case.spatial, s, op, strict=True))
    pairs = explicit_pairs(case.padding, case.spatial, k, s, d)
    return tuple(
        (m - 1) * si + di * (ki - 1) + 1 - lo - hi + o
        for m, ki, si, di, (lo, hi), o in zip(case.spatial, k, s, d, pairs, op,
                                              strict=True)
    )  # fmt: skip


def _oracle(draw: Draw) -> Callable:
    """`(x, weight, bias) -> out` from `lax`, differentiable (`bias` may be `None`);
    for patches `x -> patches`. A transposed convolution is the linear transpose of
    the forward one."""
    case = draw.case
    k, s, d, r = _geometry(draw)
    mode = explicit_mode(case.padding, case.padding_mode)
    family = case.family

    def add_bias(out, bias):
        return out if bias is None else out + bias

    if family == "conv":
        pairs = explicit_pairs(case.padding, case.spatial, k, s, d, r)
        dilation = None if all(v == 1 for v in r) else r
        return lambda x, w, b: add_bias(
            lax_conv(x, w, stride=s, pairs=pairs, dilation=d, groups=case.groups,
                     mode=mode, input_dilation=dilation),
            b,
        )  # fmt: skip
    if family == "conv_transpose":
        out_shape = _transposed_out_shape(draw)
        pairs = explicit_pairs(case.padding, out_shape, k, s, d)

        def transposed(y, w, b):
            forward_w = _forward_weight(w, case.groups)

            def forward(x):
                return lax_conv(x, forward_w, stride=s, pairs=pairs, dilation=d,
                                groups=case.groups, mode=mode)  # fmt: skip

            primal = jax.ShapeDtypeStruct((case.out_channels, *out_shape), y.dtype)
            (x,) = jax.linear_transpose(forward, primal)(y)
            return add_bias(x, b)

        return transposed
    pairs = explicit_pairs(case.padding, case.spatial, k, s, d, r)
    if family == "conv_local":
        return lambda x, w, b: add_bias(
            lax_local(x, w, k, s, pairs, d, case.groups, mode, r), b
        )
    return lambda x: lax_patches(x, k, s, pairs, d, mode, r)


# --- The test -----------------------------------------------------------------------


@eqx.filter_jit
def _value_and_grads(f, args, cotangent):
    """`f(*args)` and the gradients of `<f(*args), cotangent>` in every array of
    `args`: the one jitted caller every configuration shares (eqxconv's side and the
    oracle's alike)."""
    out, vjp = eqx.filter_vjp(f, *args)
    return out, vjp(cotangent)


def _close(got, expected, bound, tolerance: float, fft: bool, what: str):
    """`|got - expected| <= tolerance * bound`, where `bound` is the oracle applied
    to the absolute values (the sum of the magnitudes of the terms, which rounding
    errors scale with); for the FFT, whose rounding spreads over all outputs, its
    largest entry."""
    wide = jnp.float64 if got.dtype == jnp.float64 else jnp.float32
    got = np.asarray(got.astype(wide))
    expected, bound = np.asarray(expected), np.asarray(bound)
    assert got.shape == expected.shape, what
    if fft:
        bound = np.full_like(bound, np.max(bound, initial=0.0))
    excess = np.abs(got - expected) - tolerance * bound
    worst = np.unravel_index(np.argmax(excess), excess.shape) if excess.size else ()
    assert not (excess > np.finfo(wide).tiny).any(), (
        f"{what}: at {worst} got {got[worst]}, expected {expected[worst]} "
        f"(bound {bound[worst]}, tolerance {tolerance})"
    )


def _random(rng, shape, dtype, oracle_dtype):
    """Standard normal numbers rounded to `dtype`, and the same in `oracle_dtype`."""
    a = jnp.asarray(rng.standard_normal(shape), dtype)
    return a, a.astype(oracle_dtype)


def _compare(f, args, oracle, oracle_args, cotangent, cotangent_oracle,
             tolerance, fft, names):  # fmt: skip
    """eqxconv's value and gradients against the oracle's, leaf by leaf (`None`
    oracle arguments have none)."""
    with jax.numpy_dtype_promotion("strict"):
        got = _value_and_grads(f, args, cotangent)
    expected = _value_and_grads(oracle, oracle_args, cotangent_oracle)
    magnitudes = jax.tree.map(jnp.abs, (oracle_args, cotangent_oracle))
    bound = _value_and_grads(oracle, *magnitudes)
    leaves = [jax.tree.leaves(tree) for tree in (got, expected, bound)]
    assert len({len(x) for x in leaves}) == 1 and len(leaves[0]) == len(names)
    dtype = jax.tree.leaves(args)[-1].dtype
    for name, g, e, b in zip(names, *leaves, strict=True):
        assert g.dtype == dtype, name
        _close(g, e, b, tolerance, fft, name)


def _run(draw: Draw, dtype_name: str):
    case = draw.case
    dtype = jnp.dtype(dtype_name)
    oracle_dtype = jnp.float64 if dtype_name == "float64" else jnp.float32
    rng = np.random.default_rng(zlib.crc32(draw.id.encode()))
    fft = case.impl == "fft"
    tolerance = TOLERANCE[dtype_name]

    def random(shape):
        return _random(rng, shape, dtype, oracle_dtype)

    x, x_oracle = random((case.in_channels, *case.spatial))
    oracle = _oracle(draw)
    if case.family == "extract_patches":
        extract = _build(draw, None)
        ct, ct_oracle = random(jax.eval_shape(extract, x).shape)
        _compare(extract, (x,), oracle, (x_oracle,), ct, ct_oracle, tolerance,
                 fft, ["patches", "input gradient"])  # fmt: skip
        _check_fold(draw, oracle, random, tolerance)
        return

    layer = _build(draw, jax.random.key(0), dtype, kernel_init=_zeros, bias_init=_zeros)
    # Standard normal parameters, rounded to `dtype` like the input.
    weight, weight_oracle = random(layer.weight.shape)
    bias, bias_oracle = (None, None)
    if layer.bias is not None:
        bias, bias_oracle = random(layer.bias.shape)
    layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, bias),
                        is_leaf=lambda v: v is None)  # fmt: skip
    ct, ct_oracle = random(jax.eval_shape(layer, x).shape)
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    def call(params, x):
        return eqx.combine(params, static)(x)

    # Leaves in order: the output, the gradients in the weight, the bias and the
    # input, on both sides.
    names = ["values", "weight gradient"] + (["bias gradient"] if bias is not None
                                             else []) + ["input gradient"]  # fmt: skip

    def oracle_params_first(params, x):
        return oracle(x, params[0], params[1])

    _compare(call, (params, x), oracle_params_first,
             ((weight_oracle, bias_oracle), x_oracle), ct, ct_oracle, tolerance,
             fft, names)  # fmt: skip


def _check_fold(draw, oracle, random, tolerance):
    """The fold of the same window (zero padding, undilated), against the linear
    transpose of `lax`'s patches, and its gradient."""
    case = draw.case
    if explicit_mode(case.padding, case.padding_mode) != "ZEROS" or draw.extras:
        return
    fold = functools.partial(
        eqxconv.fold_patches, out_spatial_shape=case.spatial,
        kernel_size=case.kernel_size, stride=case.stride, padding=case.padding,
        dilation=case.dilation, impl=case.impl,
    )  # fmt: skip
    ct, ct_oracle = random((case.in_channels, *case.spatial))
    p, p_oracle = random(jax.eval_shape(oracle, ct_oracle).shape)

    def oracle_fold(q):
        primal = jax.ShapeDtypeStruct(ct_oracle.shape, q.dtype)
        return jax.linear_transpose(oracle, primal)(q)[0]

    _compare(fold, (p,), oracle_fold, (p_oracle,), ct, ct_oracle, tolerance, False,
             ["fold", "fold gradient"])  # fmt: skip


@pytest.mark.parametrize("draw, dtype", PARAMS)
def test_sweep(draw, dtype):
    if dtype == "float64":
        with jax.enable_x64(True):
            _run(draw, dtype)
    else:
        _run(draw, dtype)
