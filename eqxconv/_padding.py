"""Padding arrays: the spatial axes of a `(C, *spatial)` array padded in a mode, and
the linear adjoint of that padding."""

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._args import PaddingMode
from ._geometry import PaddingPairs


# `REFLECT`, `REPLICATE` and `CIRCULAR` are `jnp.pad`'s modes, so they equal Equinox's
# and PyTorch's (where PyTorch allows the padding).
_JNP_PAD_MODES = {"REFLECT": "reflect", "REPLICATE": "edge", "CIRCULAR": "wrap"}


def pad(x: Array, pairs: PaddingPairs, padding_mode: PaddingMode) -> Array:
    """Pad the spatial axes of a `(C, *spatial)` array by `pairs` in `padding_mode`."""
    if all(pair == (0, 0) for pair in pairs):
        return x
    widths = ((0, 0), *pairs)
    if padding_mode == "ZEROS":
        return jnp.pad(x, widths)
    return jnp.pad(x, widths, mode=_JNP_PAD_MODES[padding_mode])


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
