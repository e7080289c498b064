"""The independent oracles every test compares against: padding worked out from the
public contract and `lax`'s own `padtype_to_pads`, and reference convolutions,
patches and locally connected layers from PyTorch and `jax.lax`. Nothing here calls
eqxconv."""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.lax as lax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F


# --- Padding ----------------------------------------------------------------------


class PadMode(NamedTuple):
    """One `padding_mode`, as `numpy.pad` (and `jnp.pad`) and `torch.nn.functional.pad`
    spell it."""

    numpy: str
    torch: str


PAD_MODES = {
    "ZEROS": PadMode("constant", "constant"),
    "REFLECT": PadMode("reflect", "reflect"),
    "REPLICATE": PadMode("edge", "replicate"),
    "CIRCULAR": PadMode("wrap", "circular"),
}


def explicit_pairs(
    padding: Any,
    in_spatial_shape: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    input_dilation: Sequence[int] | None = None,
) -> tuple[tuple[int, int], ...]:
    """`(low, high)` per dimension for any padding form of the contract: `'SAME'`,
    `'SAME_LOWER'` and `'VALID'` as `lax.padtype_to_pads` resolves them (on the
    input-dilated extent), `'CAUSAL'` and `'CIRCULAR'` as the contract defines them."""
    n = len(in_spatial_shape)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True)]
    if not isinstance(padding, str):
        if isinstance(padding, int):
            return ((padding, padding),) * n
        return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    upper = padding.upper()
    if upper == "CAUSAL":
        return tuple((e - 1, 0) for e in extent)
    if upper == "CIRCULAR":  # Flax's: centred on the window, at every stride
        return tuple(((e - 1) // 2, e // 2) for e in extent)
    dilated = [
        (size - 1) * r + 1
        for size, r in zip(in_spatial_shape, input_dilation or (1,) * n, strict=True)
    ]
    pads = lax.padtype_to_pads(dilated, extent, tuple(stride), upper)
    return tuple((int(lo), int(hi)) for lo, hi in pads)


def explicit_mode(padding: Any, padding_mode: str) -> str:
    """The padding mode in force: `padding='CIRCULAR'` sets it."""
    if isinstance(padding, str) and padding.upper() == "CIRCULAR":
        return "CIRCULAR"
    return padding_mode.upper()


def jnp_pad(x, pairs, mode: str = "ZEROS"):
    """Pad the spatial axes of an unbatched `(C, *spatial)` array (`jnp.pad`)."""
    return jnp.pad(x, [(0, 0), *pairs], mode=PAD_MODES[mode].numpy)  # pyright: ignore


def torch_pad(x: torch.Tensor, pairs, mode: str) -> torch.Tensor:
    """Pad the trailing spatial axes of a batched tensor by `(low, high)` pairs."""
    # F.pad takes the last dimension first.
    flat = [p for pair in reversed(pairs) for p in pair]
    return F.pad(x, flat, mode=PAD_MODES[mode].torch)


# --- Convolutions -----------------------------------------------------------------


def to_torch(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a))


def dimension_numbers(n: int) -> tuple[str, str, str]:
    """`lax`'s channels-first dimension numbers for `n` spatial dimensions."""
    spatial = "DHW"[3 - n :] if n <= 3 else "".join(map(str, range(n)))
    return (f"NC{spatial}", f"OI{spatial}", f"NC{spatial}")


TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
TORCH_CONV_TRANSPOSE = {
    1: F.conv_transpose1d,
    2: F.conv_transpose2d,
    3: F.conv_transpose3d,
}


def torch_conv(
    x, weight, bias=None, *, stride, pairs, dilation, groups=1, mode="ZEROS"
) -> np.ndarray:
    """`F.pad` + `F.convNd` on an unbatched `(C, *spatial)` input; a numpy result."""
    n = np.ndim(weight) - 2
    xt = torch_pad(to_torch(x)[None], pairs, mode)
    out = TORCH_CONV[n](
        xt,
        to_torch(weight),
        None if bias is None else to_torch(bias).reshape(-1),
        stride=tuple(stride),
        dilation=tuple(dilation),
        groups=groups,
    )
    return out[0].numpy()


def lax_conv(
    x, weight, *, stride, pairs, dilation, groups=1, mode="ZEROS", input_dilation=None
):
    """`jnp.pad`, then a VALID `lax.conv_general_dilated` on an unbatched input:
    differentiable, for derivatives to compare against. With `input_dilation`,
    `lax`'s `lhs_dilation`, whose zero padding `pairs` is of the dilated input (as
    the contract's); another mode pads the input before it is dilated."""
    n = len(stride)
    if input_dilation is None or mode != "ZEROS":
        x, pairs = jnp_pad(x, pairs, mode), ((0, 0),) * n
    return lax.conv_general_dilated(
        x[None],
        weight,
        window_strides=tuple(stride),
        padding=tuple(pairs),
        lhs_dilation=None if input_dilation is None else tuple(input_dilation),
        rhs_dilation=tuple(dilation),
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )[0]


def transpose_weight_layout(weight, groups: int) -> np.ndarray:
    """Between Equinox's transposed-conv weight `(out, in // groups, *k)` and
    PyTorch's `(in, out // groups, *k)` (which is also the forward conv's weight):
    flip the spatial axes and swap the two channel axes within each group. The map
    is its own inverse."""
    w = np.asarray(weight)
    a, b, *kernel = w.shape
    w = np.flip(w, axis=tuple(range(2, w.ndim)))
    w = w.reshape(groups, a // groups, b, *kernel).swapaxes(1, 2)
    return np.ascontiguousarray(w.reshape(b * groups, a // groups, *kernel))


def torch_conv_transpose(
    x, weight, bias=None, *, stride, padding, output_padding, dilation, groups=1
) -> np.ndarray:
    """`F.conv_transposeNd` on an unbatched input, with an Equinox-layout weight."""
    n = np.ndim(weight) - 2
    out = TORCH_CONV_TRANSPOSE[n](
        to_torch(x)[None],
        torch.from_numpy(transpose_weight_layout(weight, groups)),
        None if bias is None else to_torch(bias).reshape(-1),
        stride=tuple(stride),
        padding=tuple(padding),
        output_padding=tuple(output_padding),
        groups=groups,
        dilation=tuple(dilation),
    )
    return out[0].numpy()


def lax_conv_transpose_core(y, weight, *, stride, pairs, dilation, groups):
    """A zero-padded transposed convolution as `lax` writes it: the input dilated by
    the stride, padded by `pairs` (negative: cropped), a stride-1 convolution."""
    n = len(stride)
    return lax.conv_general_dilated(
        y[None], weight, (1,) * n, pairs, lhs_dilation=tuple(stride),
        rhs_dilation=tuple(dilation), feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )[0]  # fmt: skip


# --- Patches and locally connected layers -----------------------------------------


def _padded_for_lax(x, pairs, mode, input_dilation):
    """`x` and the padding that `lax` takes with it: a padding mode other than zeros
    is applied beforehand; zeros go to `lax`, which pads the input-dilated extent."""
    if mode == "ZEROS":
        return x, tuple(pairs), tuple(input_dilation)
    return jnp_pad(x, pairs, mode), "VALID", (1,) * len(pairs)


def lax_patches(x, kernel_size, stride, pairs, dilation, mode="ZEROS",
                input_dilation=None):  # fmt: skip
    """`lax.conv_general_dilated_patches` of an unbatched input."""
    n = len(kernel_size)
    xp, padding, lhs = _padded_for_lax(x, pairs, mode, input_dilation or (1,) * n)
    return lax.conv_general_dilated_patches(
        xp[None], tuple(kernel_size), tuple(stride), padding, lhs_dilation=lhs,
        rhs_dilation=tuple(dilation), precision=lax.Precision.HIGHEST,
    )[0]  # fmt: skip


def lax_local(x, weight, kernel_size, stride, pairs, dilation, groups=1, mode="ZEROS",
              input_dilation=None):  # fmt: skip
    """`lax.conv_general_dilated_local` with ("NCHW", "OIHW", "NCHW"), applied per
    group for `groups > 1` (output channel `o` sees input group
    `o // (out_channels // groups)`)."""
    n = len(kernel_size)
    xp, padding, lhs = _padded_for_lax(x, pairs, mode, input_dilation or (1,) * n)
    outs = []
    for xg, wg in zip(jnp.split(xp, groups), jnp.split(weight, groups), strict=True):
        outs.append(
            lax.conv_general_dilated_local(
                xg[None], wg, tuple(stride), padding, tuple(kernel_size),
                lhs_dilation=lhs, rhs_dilation=tuple(dilation),
                dimension_numbers=dimension_numbers(n), precision="highest",
            )[0]
        )  # fmt: skip
    return jnp.concatenate(outs)


# --- Gather-and-add oracles (non-finite safe) -------------------------------------
# `lax`'s patches are a convolution with an identity kernel, whose zeros turn an `inf`
# into NaN in every window: these take windows by indexing and sum by adding, as
# PyTorch's `unfold`/`fold` do, in any number of dimensions.


def _dilate(x: torch.Tensor, input_dilation: Sequence[int]) -> torch.Tensor:
    """Zeros inserted between neighbours along the trailing spatial axes."""
    n = len(input_dilation)
    spatial = x.shape[-n:]
    dilated = [(s - 1) * r + 1 for s, r in zip(spatial, input_dilation, strict=True)]
    out = torch.zeros((*x.shape[:-n], *dilated), dtype=x.dtype)
    index = (Ellipsis, *(slice(None, None, r) for r in input_dilation))
    out[index] = x
    return out


def torch_patches(x, kernel_size, stride, pairs, dilation, mode="ZEROS",
                  input_dilation=None) -> np.ndarray:  # fmt: skip
    """`(C * prod(kernel_size), *out)` patches of an unbatched input by
    `Tensor.unfold` (strided views), channel-major then offsets in row-major order."""
    n = len(kernel_size)
    xt = to_torch(x)
    if input_dilation is not None:
        xt = _dilate(xt, input_dilation)
    xt = torch_pad(xt[None], pairs, mode)[0]
    for i, (k, s, d) in enumerate(zip(kernel_size, stride, dilation, strict=True)):
        xt = xt.unfold(1 + i, (k - 1) * d + 1, s)[..., ::d]
    # (C, O1, ..., On, k1, ..., kn) -> (C, k1, ..., kn, O1, ..., On)
    xt = xt.permute(0, *range(n + 1, 2 * n + 1), *range(1, n + 1))
    return xt.reshape(-1, *xt.shape[1 + n :]).numpy()


def torch_fold(patches, out_spatial_shape, kernel_size, stride, pairs,
               dilation) -> np.ndarray:  # fmt: skip
    """The adjoint of zero-padded `torch_patches`: every window added back into a
    zero-padded array, which is then cropped (`F.fold` in any dimension)."""
    p = to_torch(patches)
    windows = p.shape[1:]
    channels = p.shape[0] // int(np.prod(kernel_size))
    p = p.reshape(channels, *kernel_size, *windows)
    padded = [s + lo + hi for s, (lo, hi) in zip(out_spatial_shape, pairs, strict=True)]
    out = torch.zeros((channels, *padded), dtype=p.dtype)
    for offset in np.ndindex(*kernel_size):
        index = tuple(
            slice(o * d, o * d + (w - 1) * s + 1, s)
            for o, d, w, s in zip(offset, dilation, windows, stride, strict=True)
        )
        out[(slice(None), *index)] += p[(slice(None), *offset)]
    crop = tuple(
        slice(lo, lo + s) for s, (lo, _) in zip(out_spatial_shape, pairs, strict=True)
    )
    return out[(slice(None), *crop)].numpy()


def torch_local(x, weight, kernel_size, stride, pairs, dilation, groups=1,
                mode="ZEROS", input_dilation=None) -> np.ndarray:  # fmt: skip
    """A locally connected layer as `torch_patches` and a per-position contraction
    (`out[o, l] = sum_j weight[o, j, l] * patches[group(o) * J + j, l]`)."""
    patches = to_torch(torch_patches(x, kernel_size, stride, pairs, dilation, mode,
                                     input_dilation))  # fmt: skip
    w = to_torch(weight)
    out_channels, per_group, *out_shape = w.shape
    w = w.reshape(groups, out_channels // groups, per_group, -1)
    p = patches.reshape(groups, per_group, -1)
    out = torch.einsum("gojl,gjl->gol", w, p)
    return out.reshape(out_channels, *out_shape).numpy()
