"""Lowerings of the zero-padded transposed convolution.

Every lowering computes exactly

    lax.conv_general_dilated(y[None], w, window_strides=1, padding=pairs,
                             lhs_dilation=stride, rhs_dilation=dilation,
                             feature_group_count=groups)[0]

(`pairs` may be negative: cropping), the correlation of the stride-dilated input with
`w`, which is what `equinox.nn.ConvTranspose` computes. XLA on CPU runs the
`lhs_dilation` form, and even more its gradients, slowly, so by default it is lowered
another way:

- `'interior'`: the input is dilated explicitly with interior padding (`lax.pad`),
    then convolved with stride 1.
- `'phase'`: the sub-pixel decomposition. Output position `o` only meets the taps
    `t` with `o + t` on the stride's lattice, so the outputs split into
    `prod(stride)` phases, each a stride-1 correlation of the undilated input with
    a `ceil(extent / stride)`-tap slice of the kernel. All phases run as one
    convolution with `prod(stride) * out_channels` output channels, interleaved
    afterwards ("depth to space"). No multiply ever meets an inserted zero. Where
    some phases have fewer real taps than others (an extent that is no multiple of
    the stride, or the zeros of a dilated kernel), each group of alike phases is a
    convolution of its own: a padded zero tap would meet real inputs, and `0 * inf`
    is NaN.
- `'lhs_dilation'`: `lax.conv_general_dilated` with `lhs_dilation`, as Equinox and
    `lax.conv_transpose` do. Slow on CPU when strided; without a stride it is a
    plain convolution.

The stride-1 convolutions of `'interior'` and `'phase'` go through `_conv_stride1`, a
`jax.custom_jvp` whose tangent in the kernel is written as channel contractions of
shifted input slices. Transposed for reverse mode, that is the weight gradient as
matrix products, instead of XLA CPU's weight-gradient convolution (which is
pathological for the small phase kernels), while forward mode (`jax.jvp`,
`jax.jacfwd`) keeps working because the rule is a JVP, not a VJP. For `'phase'` the
tangent in the input is written the same way, so the input gradient avoids XLA CPU's
transposed convolution, which materialises patches of all `prod(stride) *
out_channels` channels.
"""

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array

from ._bilinear import bilinear
from ._partition import reshape


_Pairs: TypeAlias = tuple[tuple[int, int], ...]


def _zero(x: Array) -> Array:
    return jnp.zeros((), x.dtype)


@dataclasses.dataclass(frozen=True)
class Stride1Config:
    """A stride-1 convolution `_conv_stride1` (hashable: the non-differentiable
    argument of its custom JVP)."""

    padding: _Pairs
    dilation: tuple[int, ...]
    groups: int
    precision: Any
    preferred_element_type: Any
    input_tangent_by_taps: bool
    """Whether the input tangent (and so, transposed, the input gradient) is a sum
    over taps of channel contractions too, instead of XLA's transposed convolution,
    which on CPU materialises patches of all input channels (slow for the wide phase
    convolution, 3D especially)."""


def _lax_conv(
    cfg: Stride1Config, x: Array, w: Array, lhs_dilation: Any = None
) -> Array:
    """`lax`'s stride-1 convolution of `cfg` (of the `lhs_dilation`-dilated `x`)."""
    out = lax.conv_general_dilated(
        x[None],
        w,
        window_strides=(1,) * (x.ndim - 1),
        padding=cfg.padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=cfg.dilation,
        feature_group_count=cfg.groups,
        precision=cfg.precision,
        preferred_element_type=cfg.preferred_element_type,
    )
    return out[0]


def _conv(cfg: Stride1Config, x: Array, w: Array) -> Array:
    # Exactly (config, input, weight): `custom_jvp` would bind a defaulted
    # `lhs_dilation` as a third primal.
    return _lax_conv(cfg, x, w)


_MAX_STACKED_TAPS = 16


def _tangent_by_taps(cfg: Stride1Config, x: Array, w_dot: Array) -> Array:
    """`_conv(cfg, x, w_dot)`, written as channel contractions of shifted slices.

    Linear in `w_dot` (and in `x`); its transpose in `w_dot` is the weight gradient
    `sum_q g[o, q] * x[i, q + tap]` as matrix products, and in `x` the input gradient
    as matrix products added into shifted slices, instead of convolutions. With few
    taps the slices are stacked into one contraction (far fewer ops to compile), else
    one contraction per tap, never materialising all the slices.
    """
    widths = ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in cfg.padding)
    xp = lax.pad(x, _zero(x), widths)
    kernel = w_dot.shape[2:]
    out_spatial = tuple(
        size - (k - 1) * d
        for size, k, d in zip(xp.shape[1:], kernel, cfg.dilation, strict=True)
    )
    out_channels, groups = w_dot.shape[0], cfg.groups
    xg = xp.reshape(groups, x.shape[0] // groups, *xp.shape[1:])
    wg = w_dot.reshape(groups, out_channels // groups, *w_dot.shape[1:])
    taps = list(itertools.product(*(range(k) for k in kernel)))
    contract = functools.partial(
        jnp.einsum,
        precision=cfg.precision,
        preferred_element_type=cfg.preferred_element_type,
    )

    def window(tap: tuple[int, ...]) -> Array:
        spatial = (
            slice(t * d, t * d + size)
            for t, d, size in zip(tap, cfg.dilation, out_spatial, strict=True)
        )
        return xg[(slice(None), slice(None), *spatial)]

    if len(taps) <= _MAX_STACKED_TAPS:
        patches = jnp.stack([window(tap) for tap in taps], axis=2)
        w_taps = wg.reshape(*wg.shape[:3], len(taps))
        out = contract("goit,git...->go...", w_taps, patches)
        return out.reshape(out_channels, *out_spatial)
    total = None
    for tap in taps:
        term = contract("goi,gi...->go...", wg[(Ellipsis, *tap)], window(tap))
        total = term if total is None else total + term
    assert total is not None
    return total.reshape(out_channels, *out_spatial)


def _input_tangent(cfg: Stride1Config, x_dot: Array, w: Array) -> Array:
    if cfg.input_tangent_by_taps:
        return _tangent_by_taps(cfg, x_dot, w)
    return _conv_stride1(cfg, x_dot, w)


_conv_stride1 = bilinear(_conv, _input_tangent, _tangent_by_taps)


def _interior(y: Array, w: Array, stride: tuple[int, ...], cfg: Stride1Config) -> Array:
    if any(s > 1 for s in stride):
        widths = ((0, 0, 0),) + tuple((0, 0, s - 1) for s in stride)
        y = lax.pad(y, _zero(y), widths)
    return _conv_stride1(cfg, y, w)


@dataclasses.dataclass(frozen=True)
class _Part:
    """Phases of one dimension whose real taps sit at the same places of the padded
    phase kernel: taps `first, first + step, ...` (`count` of them, none for phases no
    input reaches)."""

    phases: tuple[int, ...]
    first: int
    count: int
    step: int


def _parts(k: int, s: int, d: int, j: int) -> list[_Part]:
    """The phases of a strided dimension (in channel order, `c' = s - 1 - c`) grouped
    by where their real taps sit among the `j` taps of the padded phase kernel."""
    extent = (k - 1) * d + 1
    step = d // math.gcd(s, d)
    parts: dict[tuple[int, int], list[int]] = {}
    for phase in range(s):
        c = s - 1 - phase
        real = [i for i in range(j) if i * s + c < extent and (i * s + c) % d == 0]
        first = real[0] if real else 0
        # The solutions of `i * s = -c (mod d)`: spaced by `d / gcd(s, d)`.
        assert real == list(range(first, first + step * len(real), step))
        parts.setdefault((first, len(real)), []).append(phase)
    return [_Part(tuple(p), f, c, step) for (f, c), p in parts.items()]


def _phase(y: Array, w: Array, stride: tuple[int, ...], cfg: Stride1Config) -> Array:
    n = y.ndim - 1
    out_channels, in_per_group = w.shape[:2]
    kernel = w.shape[2:]
    # Along a strided dimension the kernel is dilated explicitly, padded to `J * s`
    # taps and split into `s` phases of `J` taps; `t = j * s + c` serves the outputs
    # at `u = v * s - c`, which phase `c' = s - 1 - c` interleaves in increasing order.
    w_widths = [(0, 0, 0), (0, 0, 0)]
    taps, conv_dilation, conv_padding, starts, lengths, counts = [], [], [], [], [], []
    dim_parts: list[list[_Part]] = []
    for m, k, s, d, (lo, hi) in zip(
        y.shape[1:], kernel, stride, cfg.dilation, cfg.padding, strict=True
    ):
        extent = (k - 1) * d + 1
        length = (m - 1) * s + 1 + lo + hi - extent + 1
        lengths.append(length)
        if s == 1:
            w_widths.append((0, 0, 0))
            taps.append(k)
            conv_dilation.append(d)
            conv_padding.append((lo, hi))
            starts.append(0)
            counts.append(m + lo + hi - (k - 1) * d)
            dim_parts.append([_Part((0,), 0, k, 1)])
            continue
        j = -(-extent // s)
        w_widths.append((0, j * s - extent, d - 1))
        taps.append(j)
        conv_dilation.append(1)
        v0 = (-lo - 1) // s + 1
        v1 = -(-(length - lo - 1) // s)
        count = v1 - v0 + 1
        conv_padding.append((-v0, count + j - 1 - m + v0))
        starts.append(-lo - (v0 - 1) * s - 1)
        counts.append(count)
        dim_parts.append(_parts(k, s, d, j))
    w = lax.pad(w, _zero(w), tuple(w_widths))
    # (O, I, J1, s1, J2, s2, ...), phases flipped, then (O, s1, s2, ..., I, J1, J2, ...)
    split = (out_channels, in_per_group)
    for t, s in zip(taps, stride, strict=True):
        split += (t, s)
    w = w.reshape(split)
    w = lax.rev(w, tuple(3 + 2 * i for i in range(n)))
    w = w.transpose(
        (0, *(3 + 2 * i for i in range(n)), 1, *(2 + 2 * i for i in range(n)))
    )
    phases = math.prod(stride)
    uniform = all(
        len(parts) == 1 and parts[0].count == t
        for parts, t in zip(dim_parts, taps, strict=True)
    )
    if uniform:
        w = w.reshape(out_channels * phases, in_per_group, *taps)
        phase_cfg = dataclasses.replace(
            cfg,
            padding=tuple(conv_padding),
            dilation=tuple(conv_dilation),
            input_tangent_by_taps=True,
        )
        r = _conv_stride1(phase_cfg, y, w)
        return _depth_to_space(r, stride, r.shape[1:], starts, lengths)
    # Some phases have fewer real taps than `J` (an extent that is no multiple of the
    # stride, or the zeros of a dilated kernel). In one convolution of all phases
    # their padded zero taps would still meet real inputs, and `0 * inf` is NaN: so
    # each group of phases whose real taps sit alike is a convolution of those taps
    # alone, and a group that no input reaches is zeros.
    blocks: dict[tuple[int, ...], Array] = {}
    for choice in itertools.product(*(range(len(parts)) for parts in dim_parts)):
        chosen = [parts[c] for parts, c in zip(dim_parts, choice, strict=True)]
        if any(part.count == 0 for part in chosen):
            continue
        wk = w
        for i, part in enumerate(chosen):
            wk = _take(wk, part.phases, axis=1 + i)
            last = part.first + (part.count - 1) * part.step
            wk = lax.slice_in_dim(wk, part.first, last + 1, part.step, axis=2 + n + i)
        sizes = [len(part.phases) for part in chosen]
        wk = wk.reshape(
            out_channels * math.prod(sizes),
            in_per_group,
            *(part.count for part in chosen),
        )
        # Taps `first, first + step, ...` of the `J`: the padding that keeps every
        # group's output on the common grid of `counts`.
        part_padding = tuple(
            (
                lo - part.first * d,
                hi - (t - 1 - part.first - (part.count - 1) * part.step) * d,
            )
            for (lo, hi), part, t, d in zip(
                conv_padding, chosen, taps, conv_dilation, strict=True
            )
        )
        part_cfg = dataclasses.replace(
            cfg,
            padding=part_padding,
            dilation=tuple(
                part.step * d for part, d in zip(chosen, conv_dilation, strict=True)
            ),
            input_tangent_by_taps=True,
        )
        r = _conv_stride1(part_cfg, y, wk)
        blocks[choice] = r.reshape(out_channels, *sizes, *counts)
    dtype = next(iter(blocks.values())).dtype

    def assemble(choice: tuple[int, ...]) -> Array:
        """`(O, n_1, ..., n_N, *counts)`: the phases of the parts that `choice`
        picks in its dimensions, then every phase of the later ones, in channel
        order."""
        i = len(choice)
        if i == n:
            if choice in blocks:
                return blocks[choice]
            sizes = [
                len(parts[c].phases) for parts, c in zip(dim_parts, choice, strict=True)
            ]
            return jnp.zeros((out_channels, *sizes, *counts), dtype)
        pieces = [assemble((*choice, c)) for c in range(len(dim_parts[i]))]
        r = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1 + i)
        order = [phase for part in dim_parts[i] for phase in part.phases]
        return _take(r, tuple(sorted(range(len(order)), key=order.__getitem__)), 1 + i)

    return _depth_to_space(assemble(()), stride, counts, starts, lengths)


def _take(a: Array, indices: tuple[int, ...], axis: int) -> Array:
    """`a` at `indices` along `axis`: a slice where they are a contiguous run."""
    first = indices[0]
    if indices == tuple(range(first, first + len(indices))):
        if len(indices) == a.shape[axis]:
            return a
        return lax.slice_in_dim(a, first, first + len(indices), axis=axis)
    return jnp.take(a, jnp.array(indices), axis=axis)


def _depth_to_space(
    r: Array,
    stride: Sequence[int],
    counts: Sequence[int],
    starts: Sequence[int],
    lengths: Sequence[int],
) -> Array:
    """Interleave phases: `(O * S, V1, ..., VN)` (phases minor, row-major) to
    `(O, V1 * s1, ..., VN * sN)`, then crop to `lengths` from `starts`."""
    n = len(stride)
    r = reshape(r, (-1, *stride, *counts))
    out_channels = r.shape[0]
    r = r.transpose((0, *itertools.chain(*((1 + n + i, 1 + i) for i in range(n)))))
    r = reshape(
        r, (out_channels, *(v * s for v, s in zip(counts, stride, strict=True)))
    )
    window = tuple(slice(a, a + size) for a, size in zip(starts, lengths, strict=True))
    return r[(slice(None), *window)]


def _lhs_dilation(
    y: Array, w: Array, stride: tuple[int, ...], cfg: Stride1Config
) -> Array:
    return _lax_conv(cfg, y, w, lhs_dilation=stride)


_LOWERINGS = {
    "phase": _phase,
    "interior": _interior,
    "lhs_dilation": _lhs_dilation,
}


def transposed_conv(
    y: Array,
    w: Array,
    *,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    padding: _Pairs,
    groups: int,
    precision: Any = None,
    preferred_element_type: Any = None,
    impl: Literal["phase", "interior", "lhs_dilation"],
) -> Array:
    """The correlation of the stride-dilated `y` with `w` (see the module docstring).

    **Arguments:**

    - `y`: the input, `(in_channels, *spatial)`.
    - `w`: the kernel, `(out_channels, in_channels // groups, *kernel_size)`, applied
        without flipping.
    - `stride`: the input dilation.
    - `dilation`: the kernel dilation.
    - `padding`: `(low, high)` per dimension of the dilated input, possibly negative.
    - `groups`: the feature group count.
    - `precision`, `preferred_element_type`: as for `lax.conv_general_dilated`.
    - `impl`: `'phase'`, `'interior'` or `'lhs_dilation'`.

    **Returns:**

    `(out_channels, *out_spatial)`.
    """
    cfg = Stride1Config(
        padding,
        dilation,
        groups,
        precision,
        preferred_element_type,
        input_tangent_by_taps=False,
    )
    return _LOWERINGS[impl](y, w, stride, cfg)
