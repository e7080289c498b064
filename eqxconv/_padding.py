"""Padding arrays: the spatial axes of a `(C, *spatial)` array padded in a mode, and
the linear adjoint of that padding."""

from collections.abc import Sequence

import jax
import jax.lax as lax
import jax.numpy as jnp
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
