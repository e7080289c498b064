"""Padding arrays: the spatial axes of a `(C, *spatial)` array padded in a mode, the
linear adjoint of that padding, and a mode's padding of one axis as the window reads
that zero padding misses."""

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._args import PaddingMode
from ._geometry import PaddingPairs


# `REFLECT`, `REPLICATE` and `CIRCULAR` are `jnp.pad`'s modes, so they equal Equinox's
# and PyTorch's (where PyTorch allows the padding).
_JNP_PAD_MODES = {"REFLECT": "reflect", "REPLICATE": "edge", "CIRCULAR": "wrap"}


def pad(
    x: Array,
    pairs: PaddingPairs,
    padding_mode: PaddingMode,
    input_dilation: Sequence[int] | None = None,
) -> Array:
    """Pad the spatial axes of a `(C, *spatial)` array by `pairs` in `padding_mode`,
    after inserting `input_dilation - 1` zeros between neighbours (zero padding only).

    The dilation is the interior padding of the same `lax.pad`: one strided write of
    the input into the padded array, whose transpose is one strided slice.
    """
    n = len(pairs)
    interior = (0,) * n if input_dilation is None else [r - 1 for r in input_dilation]
    if not any(interior) and all(pair == (0, 0) for pair in pairs):
        return x
    if padding_mode == "ZEROS":
        widths = [
            (low, high, i) for (low, high), i in zip(pairs, interior, strict=True)
        ]
        return lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *widths])
    return jnp.pad(x, ((0, 0), *pairs), mode=_JNP_PAD_MODES[padding_mode])


def pad_transpose(
    z: Array,
    pairs: PaddingPairs,
    padding_mode: PaddingMode,
    spatial_shape: tuple[int, ...],
) -> Array:
    """The linear adjoint of `pad` for a `(C, *spatial_shape)` input.

    Takes an array on the padded domain and folds its border back onto the interior
    (`ZEROS`: crops it; `CIRCULAR`: adds it to the opposite edge; `REPLICATE`: to the
    edge; `REFLECT`: to the mirrored positions).
    """
    if all(pair == (0, 0) for pair in pairs):
        return z
    primal = jax.ShapeDtypeStruct((z.shape[0], *spatial_shape), z.dtype)
    (x,) = jax.linear_transpose(lambda v: pad(v, pairs, padding_mode), primal)(z)
    return x


@dataclasses.dataclass(frozen=True)
class BorderRead:
    """One window read into the padding of a one-dimensional axis: output position
    `out`, through kernel tap `tap`, reads input position `source` (where the mode
    maps that padded position)."""

    out: int
    tap: int
    source: int


def border_reads(
    size: int,
    pair: tuple[int, int],
    kernel_size: int,
    stride: int,
    dilation: int,
    out_size: int,
    padding_mode: PaddingMode,
) -> tuple[BorderRead, ...]:
    """Every read of a window into the padding of an axis of `size` entries padded by
    `pair` in `padding_mode`: what a sliding-window op over the mode's padding adds
    to the same op over zero padding. Only outputs whose window reaches a border are
    visited."""
    low, _ = pair
    # `np.pad` of the positions says which input position each padded one copies.
    source = np.pad(np.arange(size), pair, mode=_JNP_PAD_MODES[padding_mode])  # pyright: ignore[reportArgumentType, reportCallIssue]
    extent = (kernel_size - 1) * dilation + 1
    low_outs = range(min(out_size, -(-low // stride)))
    high_outs = range(max(0, -(-(low + size - extent + 1) // stride)), out_size)
    reads = []
    for out in sorted(set(low_outs) | set(high_outs)):
        for tap in range(kernel_size):
            position = out * stride + tap * dilation
            if not low <= position < low + size:
                reads.append(BorderRead(out, tap, int(source[position])))
    return tuple(reads)


def add_border_reads(
    y: Array,
    x: Array,
    reads: Sequence[BorderRead],
    term: Callable[[Array, int], Array],
) -> Array:
    """`y` (`(channels, out)`) plus, at each read's output position, the sum of
    `term(x[:, source : source + 1], tap)` over the reads of that position.

    Each read is a one-entry slice of `x`'s axis, which XLA's partitioner does not
    split: it sends the entry from the device holding it, where the mode's `jnp.pad`
    concatenates slices onto a split axis that the partitioner re-splits with halo
    exchanges of their own."""
    by_out: dict[int, list[BorderRead]] = {}
    for read in reads:
        by_out.setdefault(read.out, []).append(read)
    for out, group in by_out.items():
        terms = [
            term(lax.slice_in_dim(x, r.source, r.source + 1, axis=1), r.tap)
            for r in group
        ]
        y = y.at[:, out : out + 1].add(sum(terms[1:], terms[0]).astype(y.dtype))
    return y
