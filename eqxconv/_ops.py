"""Functional convolution ops on unbatched, channels-first arrays.

These are the truth of the library: every layer is a thin module over them. Each
public op normalises and validates its arguments, checks its input, and calls a
`*_normalised` twin that layers (which normalise once, at construction) call directly.
"""

import math
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Inexact

from ._checks import check_fits, check_input
from ._lowering_depthwise import check_impl, shift_conv, use_shift
from ._lowering_patches import (
    conv_local_padded,
    extract_padded,
    fold_padded,
    LocalGeometry,
    Strategy,
)
from ._lowering_transpose import Lowering, LOWERINGS, transposed_core
from ._padding import (
    check_choice,
    check_output_padding,
    check_positive_int,
    conv_transpose_geometry,
    dilated_size,
    normalise_padding,
    Padding,
    PaddingLike,
    PaddingMode,
    PaddingPairs,
    resolve_padding,
    spatial_output_shape,
    to_tuple,
    window_extent,
)


_JNP_PAD_MODES = {"REFLECT": "reflect", "REPLICATE": "edge", "CIRCULAR": "wrap"}


def pad(x: Array, pairs: PaddingPairs, padding_mode: PaddingMode) -> Array:
    """Pad the spatial axes of a `(C, *spatial)` array by `pairs` in `padding_mode`.

    `REFLECT`, `REPLICATE` and `CIRCULAR` follow `jnp.pad`'s `reflect`, `edge` and
    `wrap` (and so Equinox and PyTorch, where PyTorch allows the padding).
    """
    if all(pair == (0, 0) for pair in pairs):
        return x
    widths = ((0, 0), *pairs)
    if padding_mode == "ZEROS":
        return jnp.pad(x, widths)
    return jnp.pad(x, widths, mode=_JNP_PAD_MODES[padding_mode])


def _promote(x: Array, weight: Array) -> tuple[Array, Array]:
    """Cast input and weight to their common dtype (JAX's standard promotion lattice).

    Done explicitly so that the library never relies on implicit promotion, and works
    under `jax_numpy_dtype_promotion="strict"`.
    """
    if x.dtype == weight.dtype:
        return x, weight
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.promote_types(x.dtype, weight.dtype)
    return x.astype(dtype), weight.astype(dtype)


def _check_weight(weight: Any, groups: int) -> int:
    """Validate a conv weight `(out_channels, in_channels // groups, *kernel_size)`;
    return the number of spatial dimensions."""
    shape = tuple(getattr(weight, "shape", ()))
    if len(shape) < 3 or 0 in shape:
        raise ValueError(
            "`weight` must have shape (out_channels, in_channels // groups, "
            f"*kernel_size) with at least one spatial dimension, got shape {shape}."
        )
    if shape[0] % groups != 0:
        raise ValueError(
            f"`groups` (={groups}) must divide out_channels, `weight.shape[0]` "
            f"(={shape[0]}); weight shape {shape}."
        )
    return len(shape) - 2


def conv_normalised(
    x: Array,
    weight: Array,
    *,
    stride: tuple[int, ...],
    padding: Padding,
    dilation: tuple[int, ...],
    input_dilation: tuple[int, ...],
    groups: int,
    padding_mode: PaddingMode,
    precision: Any,
    preferred_element_type: Any,
    impl: str = "auto",
) -> Array:
    """[`eqxconv.conv`][] on already normalised arguments and a checked input."""
    kernel_size = weight.shape[2:]
    extent = tuple(dilated_size(s, d) for s, d in zip(x.shape[1:], input_dilation))
    pairs = resolve_padding(padding, extent, kernel_size, stride, dilation)
    x, weight = _promote(x, weight)
    if padding_mode != "ZEROS":
        # Every non-zero mode: pad once, then a VALID conv.
        x = pad(x, pairs, padding_mode)
        pairs = ((0, 0),) * len(pairs)
    if impl == "shift" or (
        impl == "auto"
        and use_shift(
            in_channels=x.shape[0],
            groups=groups,
            kernel_size=tuple(kernel_size),
            input_dilation=input_dilation,
            dtype=x.dtype,
        )
    ):
        # Depthwise/small-group fast path (see `_lowering_depthwise`): zero padding
        # applied explicitly, then a VALID shift-and-multiply-add.
        return shift_conv(
            pad(x, pairs, "ZEROS"),
            weight,
            stride=stride,
            dilation=dilation,
            groups=groups,
            preferred_element_type=preferred_element_type,
        )
    out = lax.conv_general_dilated(
        x[None],
        weight,
        window_strides=stride,
        padding=pairs,
        lhs_dilation=input_dilation,
        rhs_dilation=dilation,
        feature_group_count=groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return out[0]


def conv(
    x: Inexact[Array, " in_channels *spatial"],
    weight: Inexact[Array, " out_channels in_channels_per_group *kernel_size"],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
    input_dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "ZEROS",
    precision: Any = None,
    preferred_element_type: Any = None,
    impl: str = "auto",
) -> Inexact[Array, " out_channels *out_spatial"]:
    """N-dimensional convolution of one unbatched, channels-first input.

    Cross-correlation, as in every deep-learning library: `weight` is not flipped.
    Batch it with `jax.vmap`.

    **Arguments:**

    - `x`: the input, shape `(in_channels, dim_1, ..., dim_N)`.
    - `weight`: the kernel, shape `(out_channels, in_channels // groups, *kernel_size)`.
    - `stride`: the window stride, an int or a sequence of `N` ints.
    - `padding`: an int, `N` ints, `N` `(low, high)` pairs, or one of `'VALID'`,
        `'SAME'`, `'SAME_LOWER'`, `'CAUSAL'`, `'CIRCULAR'` (case-insensitive).
        Strings are resolved against the (input-dilated) input shape.
    - `dilation`: the kernel dilation ("atrous" rate).
    - `input_dilation`: the input dilation (`lhs_dilation` in `lax`); needs
        `padding_mode='ZEROS'`.
    - `groups`: the number of channel groups; divides `in_channels` and
        `out_channels`.
    - `padding_mode`: `'ZEROS'`, `'REFLECT'`, `'REPLICATE'` or `'CIRCULAR'`.
    - `precision`, `preferred_element_type`: passed to `lax.conv_general_dilated`.
    - `impl`: how the convolution is computed: `'xla'` (`lax.conv_general_dilated`),
        `'shift'` (a shift-and-multiply-add over the kernel taps, for depthwise and
        small-group convolutions, with custom derivatives whose backward pass is as
        cheap as the forward; not with `input_dilation`) or `'auto'` (default):
        `'shift'` on CPU for floating-point depthwise and small-group convolutions
        (`in_channels // groups <= 4`, any channel multiplier, stride, dilation,
        padding, 1D/2D/3D) with `(in_channels // groups) * prod(kernel_size) <= 49`
        and no `input_dilation`, where it measured 10-50x faster forward and 7-500x
        faster forward+backward than XLA's grouped convolution
        (benchmarks/depthwise.py; it compiles in a few seconds rather than a fraction
        of one), else `'xla'`. All give the same values and support forward- and
        reverse-mode derivatives of any order, `jax.vmap` and `jax.jit`.

    **Returns:**

    An array of shape `(out_channels, *out_spatial)`, `out_spatial` as
    [`eqxconv.conv_output_shape`][] gives it. When `x` and `weight` differ in dtype both
    are first cast to their common dtype under JAX's standard promotion (e.g.
    `bfloat16` with `float32` computes in `float32`).
    """
    groups = check_positive_int(groups, "groups")
    n = _check_weight(weight, groups)
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    input_dilation = to_tuple(input_dilation, n, "input_dilation")
    norm_padding, mode = normalise_padding(padding, padding_mode, n)
    impl = check_impl(impl)
    if mode != "ZEROS" and input_dilation != (1,) * n:
        raise ValueError(
            f"`padding_mode={padding_mode!r}` cannot be combined with "
            f"`input_dilation={input_dilation}`: only 'ZEROS' padding is defined on an "
            "input-dilated input."
        )
    if impl == "shift" and input_dilation != (1,) * n:
        raise ValueError(
            f"`impl='shift'` cannot be combined with `input_dilation={input_dilation}`;"
            " use `impl='xla'` or `'auto'`."
        )
    where = "eqxconv.conv"
    in_channels = weight.shape[1] * groups
    check_input(where, x, num_spatial_dims=n, in_channels=in_channels)
    kernel_size = weight.shape[2:]
    extent = tuple(dilated_size(s, d) for s, d in zip(x.shape[1:], input_dilation))
    pairs = resolve_padding(norm_padding, extent, kernel_size, stride, dilation)
    check_fits(
        where,
        x.shape,
        lambda: spatial_output_shape(extent, pairs, kernel_size, stride, dilation),
    )
    return conv_normalised(
        x,
        weight,
        stride=stride,
        padding=pairs,
        dilation=dilation,
        input_dilation=input_dilation,
        groups=groups,
        padding_mode=mode,
        precision=precision,
        preferred_element_type=preferred_element_type,
        impl=impl,
    )


def pad_transpose(
    z: Array,
    pairs: PaddingPairs,
    padding_mode: PaddingMode,
    spatial_shape: tuple[int, ...],
) -> Array:
    """The linear adjoint of `pad` on a `(C, *spatial_shape)` input.

    Takes an array on the padded domain and folds its border back onto the interior
    (`ZEROS`: crops it; `CIRCULAR`: adds it to the opposite edge; `REPLICATE`: to the
    edge; `REFLECT`: to the mirrored positions).
    """
    primal = jax.ShapeDtypeStruct((z.shape[0], *spatial_shape), z.dtype)
    (x,) = jax.linear_transpose(lambda v: pad(v, pairs, padding_mode), primal)(z)
    return x


def conv_transpose_normalised(
    x: Array,
    weight: Array,
    *,
    stride: tuple[int, ...],
    padding: Padding,
    output_padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    padding_mode: PaddingMode,
    precision: Any,
    preferred_element_type: Any,
    impl: Lowering = "auto",
) -> Array:
    """[`eqxconv.conv_transpose`][] on already normalised arguments and a checked
    input."""
    kernel_size = weight.shape[2:]
    out_shape, pairs, extra = conv_transpose_geometry(
        x.shape[1:], padding, kernel_size, stride, dilation, output_padding
    )
    x, weight = _promote(x, weight)
    extents = tuple(dilated_size(k, d) for k, d in zip(kernel_size, dilation))
    if padding_mode == "ZEROS":
        # The forward padding only crops the transposed output.
        core_pairs = tuple(
            (e - 1 - lo, e - 1 - hi + ex)
            for e, (lo, hi), ex in zip(extents, pairs, extra)
        )
    else:
        # Onto the whole padded domain, then the adjoint of the mode's padding.
        core_pairs = tuple((e - 1, e - 1 + ex) for e, ex in zip(extents, extra))
    out = transposed_core(
        x,
        weight,
        stride=stride,
        dilation=dilation,
        padding=core_pairs,
        groups=groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
        lowering=impl,
    )
    if padding_mode == "ZEROS":
        return out
    return pad_transpose(out, pairs, padding_mode, out_shape)


def conv_transpose(
    x: Inexact[Array, " in_channels *spatial"],
    weight: Inexact[Array, " out_channels in_channels_per_group *kernel_size"],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "ZEROS",
    precision: Any = None,
    preferred_element_type: Any = None,
    impl: str = "auto",
) -> Inexact[Array, " out_channels *out_spatial"]:
    """N-dimensional transposed convolution of one unbatched, channels-first input.

    The exact linear adjoint (transpose) of the forward [`eqxconv.conv`][] with the
    same `stride`, `padding`, `dilation`, `groups` and `padding_mode`, whose weight is
    this `weight` with its spatial axes flipped and, within each group, its two
    channel axes swapped; equal to `equinox.nn.ConvTranspose` and to PyTorch's
    `conv_transposeNd` (after converting PyTorch's `(in, out // groups, *k)` weight)
    wherever they accept the configuration. So it goes back the way that `conv` came,
    in shape and connectivity: with `padding_mode='REFLECT'`, `'REPLICATE'` or
    `'CIRCULAR'` the padded border of the output is folded back onto the interior.

    **Arguments:**

    - `x`: the input, shape `(in_channels, dim_1, ..., dim_N)`.
    - `weight`: the kernel, shape `(out_channels, in_channels // groups,
        *kernel_size)` (Equinox's layout).
    - `stride`, `padding`, `dilation`, `padding_mode`: those of the equivalent forward
        convolution; `padding` as for [`eqxconv.conv`][], resolved against the output.
    - `output_padding`: which of the `stride` output sizes that the forward
        convolution maps onto the input's size to return: `0 <= output_padding <
        max(stride, dilation)` (`< stride` for `'SAME'`/`'SAME_LOWER'`). The output
        size is `(in - 1) * stride + dilation * (kernel - 1) + 1 - low - high +
        output_padding` for explicit padding, `in * stride - output_padding` for
        `'SAME'`/`'SAME_LOWER'`/`'CIRCULAR'`. (With `output_padding >= stride`,
        which PyTorch allows when `dilation > stride`, the forward convolution of
        that size has more than `in` output positions: this is the adjoint of its
        first `in`.)
    - `groups`: the number of channel groups; divides `in_channels` and
        `out_channels`.
    - `precision`, `preferred_element_type`: passed to `lax`.
    - `impl`: how the zero-padded transposed convolution is computed: `'auto'`
        (default: the sub-pixel `'phase'` decomposition when strided, unless a
        dilation above the stride would give a phase more taps than the kernel has,
        then `'interior'`; unstrided, a plain convolution), `'phase'`, `'interior'`
        (explicit interior padding, then a stride-1 convolution) or
        `'lhs_dilation'` (as Equinox and `lax.conv_transpose`). All give the same
        values and support forward- and reverse-mode differentiation.

    **Returns:**

    An array of shape `(out_channels, *out_spatial)`. Inputs and weights of different
    dtypes are first cast to their common dtype, as in [`eqxconv.conv`][].
    """
    groups = check_positive_int(groups, "groups")
    n = _check_weight(weight, groups)
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    norm_padding, mode = normalise_padding(padding, padding_mode, n)
    output_padding = check_output_padding(
        output_padding, n, stride, dilation, norm_padding
    )
    lowering = cast(Lowering, check_choice(impl, "impl", LOWERINGS))
    where = "eqxconv.conv_transpose"
    check_input(where, x, num_spatial_dims=n, in_channels=weight.shape[1] * groups)
    kernel_size = weight.shape[2:]
    check_fits(
        where,
        x.shape,
        lambda: conv_transpose_geometry(
            x.shape[1:], norm_padding, kernel_size, stride, dilation, output_padding
        ),
    )
    return conv_transpose_normalised(
        x,
        weight,
        stride=stride,
        padding=norm_padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        padding_mode=mode,
        precision=precision,
        preferred_element_type=preferred_element_type,
        impl=lowering,
    )


# --- Patches and locally connected convolution -------------------------------------


def _spatial_dims_from(x: Any, kernel_size: Any) -> int:
    """`N`: from `kernel_size` when it is a sequence, else from `x`'s rank."""
    if isinstance(kernel_size, Sequence) and not isinstance(kernel_size, str):
        return max(len(kernel_size), 1)
    return max(len(getattr(x, "shape", ())) - 1, 1)


def _cast_result(out: Array, preferred_element_type: Any) -> Array:
    if preferred_element_type is None:
        return out
    return out.astype(preferred_element_type)


def extract_patches_normalised(
    x: Array,
    *,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Padding,
    dilation: tuple[int, ...],
    padding_mode: PaddingMode,
    preferred_element_type: Any = None,
    strategy: Strategy = "auto",
) -> Array:
    """[`eqxconv.extract_patches`][] on normalised arguments and a checked input."""
    pairs = resolve_padding(padding, x.shape[1:], kernel_size, stride, dilation)
    out_shape = spatial_output_shape(x.shape[1:], pairs, kernel_size, stride, dilation)
    patches = extract_padded(
        pad(x, pairs, padding_mode), kernel_size, stride, dilation, out_shape, strategy
    )
    return _cast_result(patches, preferred_element_type)


def extract_patches(
    x: Inexact[Array, " channels *spatial"],
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "ZEROS",
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Inexact[Array, " patch_channels *out_spatial"]:
    """Extract the sliding windows ("patches", "im2col") of one unbatched input.

    Equal to `jax.lax.conv_general_dilated_patches(x[None], ...)[0]` and, flattened
    over space, to `torch.nn.functional.unfold` (2D), but lowered to data movement only
    (a reshape for non-overlapping windows, strided slices otherwise), so that its
    backward pass is cheap too. Batch it with `jax.vmap`.

    **Arguments:**

    - `x`: the input, shape `(C, dim_1, ..., dim_N)`.
    - `kernel_size`: the window's size, an int or `N` ints.
    - `stride`: the window stride, an int or `N` ints.
    - `padding`: an int, `N` ints, `N` `(low, high)` pairs, or one of `'VALID'`,
        `'SAME'`, `'SAME_LOWER'`, `'CAUSAL'`, `'CIRCULAR'` (case-insensitive).
    - `dilation`: the spacing of the window's points, an int or `N` ints.
    - `padding_mode`: `'ZEROS'`, `'REFLECT'`, `'REPLICATE'` or `'CIRCULAR'`.
    - `precision`: accepted for compatibility with `lax`; patches are exact copies,
        so it has no effect.
    - `preferred_element_type`: the output's dtype (default: `x`'s).

    **Returns:**

    An array of shape `(C * prod(kernel_size), *out_spatial)`, `out_spatial` as
    [`eqxconv.conv_output_shape`][] gives it. The patch axis is flattened
    channel-major, then kernel offsets in row-major order: entry
    `c * prod(kernel_size) + ravel(offset)` at output position `p` is the padded input
    at channel `c`, position `p * stride + offset * dilation`.
    """
    del precision
    n = _spatial_dims_from(x, kernel_size)
    kernel_size = to_tuple(kernel_size, n, "kernel_size")
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    norm_padding, mode = normalise_padding(padding, padding_mode, n)
    where = "eqxconv.extract_patches"
    check_input(where, x, num_spatial_dims=n, in_channels=None)
    pairs = resolve_padding(norm_padding, x.shape[1:], kernel_size, stride, dilation)
    check_fits(
        where,
        x.shape,
        lambda: spatial_output_shape(x.shape[1:], pairs, kernel_size, stride, dilation),
    )
    return extract_patches_normalised(
        x,
        kernel_size=kernel_size,
        stride=stride,
        padding=pairs,
        dilation=dilation,
        padding_mode=mode,
        preferred_element_type=preferred_element_type,
    )


def normalise_fold_padding(padding: PaddingLike, num_spatial_dims: int) -> Padding:
    """Normalised `padding` for a fold, which pads with zeros only (so not
    `'CIRCULAR'`)."""
    norm_padding, mode = normalise_padding(padding, "ZEROS", num_spatial_dims)
    if mode != "ZEROS":
        raise ValueError(
            f"`padding={padding!r}` is not allowed when folding patches: a fold is the "
            "adjoint of zero-padded extraction, so `padding` must be an int, ints, "
            "(low, high) pairs, or one of 'VALID', 'SAME', 'SAME_LOWER', 'CAUSAL'."
        )
    return norm_padding


def fold_patches_normalised(
    patches: Array,
    *,
    output_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Padding,
    dilation: tuple[int, ...],
    preferred_element_type: Any = None,
    strategy: Strategy = "auto",
) -> Array:
    """[`eqxconv.fold_patches`][] on normalised arguments and checked patches."""
    pairs = resolve_padding(padding, output_size, kernel_size, stride, dilation)
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(output_size, pairs))
    full = fold_padded(patches, padded, kernel_size, stride, dilation, strategy)
    if any(pair != (0, 0) for pair in pairs):
        full = lax.slice(
            full,
            (0, *(lo for lo, _ in pairs)),
            (full.shape[0], *(lo + s for s, (lo, _) in zip(output_size, pairs))),
        )
    return _cast_result(full, preferred_element_type)


def patch_grid_shape(
    where: str,
    output_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Padding,
    dilation: tuple[int, ...],
) -> tuple[int, ...]:
    """The spatial shape of the patches that fold into `output_size`, or a
    `ValueError` naming `where` if the kernel does not fit."""
    pairs = resolve_padding(padding, output_size, kernel_size, stride, dilation)
    try:
        return spatial_output_shape(output_size, pairs, kernel_size, stride, dilation)
    except ValueError as error:
        raise ValueError(
            f"{where}: `output_size`/`out_spatial_shape` {output_size} is too small: "
            f"{error}"
        ) from None


def check_patches(
    where: str,
    patches: Any,
    kernel_size: tuple[int, ...],
    grid_shape: tuple[int, ...],
) -> None:
    """Check patches `(C * prod(kernel_size), *grid_shape)` for a fold."""
    n = len(kernel_size)
    check_input(where, patches, num_spatial_dims=n, in_channels=None)
    k_total = math.prod(kernel_size)
    shape = tuple(int(s) for s in patches.shape)
    expected = f"(C * {k_total}, {', '.join(map(str, grid_shape))})"
    if shape[0] % k_total != 0 or shape[1:] != grid_shape:
        raise ValueError(
            f"{where} expected patches of shape {expected}: a multiple of "
            f"prod(kernel_size)={k_total} channels and the spatial shape "
            f"{grid_shape} that extracting patches from the output gives; got shape "
            f"{shape}."
        )


def fold_patches(
    patches: Inexact[Array, " patch_channels *patch_spatial"],
    out_spatial_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Inexact[Array, " channels *out_spatial"]:
    """Sum sliding windows back into an array ("col2im"): the adjoint of
    [`eqxconv.extract_patches`][] with zero padding.

    Where windows overlap, their values are summed; positions no window covers are
    zero. Equal to `torch.nn.functional.fold` (2D, with the patch grid flattened), and
    the same in 1D and 3D. Batch it with `jax.vmap`.

    **Arguments:**

    - `patches`: shape `(C * prod(kernel_size), *patch_spatial)`, ordered as
        [`eqxconv.extract_patches`][] returns them; `patch_spatial` must be
        `conv_output_shape(out_spatial_shape, kernel_size, stride=stride,
        padding=padding, dilation=dilation)`.
    - `out_spatial_shape`: the spatial shape of the result `(dim_1, ..., dim_N)`.
    - `kernel_size`, `stride`, `padding`, `dilation`: as for
        [`eqxconv.extract_patches`][]; padding strings are resolved against
        `out_spatial_shape`, and the padded border is cropped off.
    - `precision`: accepted for compatibility with `lax`; no effect.
    - `preferred_element_type`: the output's dtype (default: `patches`'s).

    **Returns:**

    An array of shape `(C, *out_spatial_shape)`.
    """
    del precision
    output_size = tuple(
        check_positive_int(s, "out_spatial_shape") for s in out_spatial_shape
    )
    n = len(output_size)
    if n == 0:
        raise ValueError("`out_spatial_shape` must have at least one dimension.")
    kernel_size = to_tuple(kernel_size, n, "kernel_size")
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    norm_padding = normalise_fold_padding(padding, n)
    where = "eqxconv.fold_patches"
    grid = patch_grid_shape(
        where, output_size, kernel_size, stride, norm_padding, dilation
    )
    check_patches(where, patches, kernel_size, grid)
    return fold_patches_normalised(
        patches,
        output_size=output_size,
        kernel_size=kernel_size,
        stride=stride,
        padding=norm_padding,
        dilation=dilation,
        preferred_element_type=preferred_element_type,
    )


def chunk_rows(chunk_size: int | None, out_shape: Sequence[int]) -> int | None:
    """Output rows (first spatial dimension) per chunk, or `None` for no chunking."""
    if chunk_size is None:
        return None
    rows = max(1, chunk_size // math.prod(out_shape[1:]))
    if rows >= out_shape[0]:
        return None
    # As few chunks as that allows, of balanced sizes.
    n_chunks = -(-out_shape[0] // rows)
    return -(-out_shape[0] // n_chunks)


def conv_local_normalised(
    x: Array,
    weight: Array,
    *,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Padding,
    dilation: tuple[int, ...],
    groups: int,
    padding_mode: PaddingMode,
    precision: Any,
    preferred_element_type: Any,
    chunk_size: int | None = None,
) -> Array:
    """[`eqxconv.conv_local`][] on normalised arguments, a checked input and weight."""
    pairs = resolve_padding(padding, x.shape[1:], kernel_size, stride, dilation)
    out_shape = weight.shape[2:]
    x, weight = _promote(x, weight)
    xp = pad(x, pairs, padding_mode)
    geometry = LocalGeometry(
        kernel_size, stride, dilation, groups, precision, preferred_element_type
    )
    rows = chunk_rows(chunk_size, out_shape)
    if rows is None:
        return conv_local_padded(weight, xp, geometry)

    # Chunked: a `lax.scan` over slabs of `rows` output rows, so that the patches (and
    # in the backward pass their cotangents) exist one slab at a time.
    out_channels, per_group = weight.shape[:2]
    n_chunks = -(-out_shape[0] // rows)
    extra = n_chunks * rows - out_shape[0]
    rest = tuple(out_shape[1:])
    n = len(out_shape)
    w = jnp.pad(weight, ((0, 0), (0, 0), (0, extra)) + ((0, 0),) * (n - 1))
    w = w.reshape((out_channels, per_group, n_chunks, rows, *rest))
    w = jnp.moveaxis(w, 2, 0)
    step_rows = rows * stride[0]
    slab = window_extent(rows, kernel_size[0], stride[0], dilation[0])
    short = (n_chunks - 1) * step_rows + slab - xp.shape[1]
    if short > 0:
        xp = jnp.pad(xp, ((0, 0), (0, short)) + ((0, 0),) * (n - 1))

    # Rematerialised, so that the backward pass recomputes each slab's patches rather
    # than the scan stacking them all as residuals.
    @jax.checkpoint
    def step(carry: None, chunk: tuple[Array, Array]) -> tuple[None, Array]:
        w_chunk, index = chunk
        x_slab = lax.dynamic_slice_in_dim(xp, index * step_rows, slab, axis=1)
        return carry, conv_local_padded(w_chunk, x_slab, geometry)

    _, outs = lax.scan(step, None, (w, jnp.arange(n_chunks)))
    out = jnp.moveaxis(outs, 0, 1).reshape((out_channels, n_chunks * rows, *rest))
    return out[:, : out_shape[0]]


def check_local_weight(
    where: str,
    weight: Any,
    *,
    in_channels: int,
    groups: int,
    kernel_size: tuple[int, ...],
    out_shape: tuple[int, ...],
) -> None:
    """Check a locally connected weight `(O, (C // groups) * K, *out_shape)`."""
    shape = tuple(int(s) for s in getattr(weight, "shape", ()))
    per_group = (in_channels // groups) * math.prod(kernel_size)
    if (
        len(shape) != len(out_shape) + 2
        or shape[1] != per_group
        or shape[2:] != out_shape
        or shape[0] % groups != 0
    ):
        raise ValueError(
            f"{where} expected `weight` of shape (out_channels, (in_channels // "
            f"groups) * prod(kernel_size), *out_spatial) = (O, {per_group}, "
            f"{', '.join(map(str, out_shape))}) with O divisible by groups={groups}, "
            f"for in_channels={in_channels}, kernel_size={kernel_size}; got shape "
            f"{shape}."
        )


def conv_local(
    x: Inexact[Array, " in_channels *spatial"],
    weight: Inexact[Array, " out_channels patch_channels *out_spatial"],
    *,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "ZEROS",
    precision: Any = None,
    preferred_element_type: Any = None,
    chunk_size: int | None = None,
) -> Inexact[Array, " out_channels *out_spatial"]:
    """Locally connected ("unshared") convolution: a separate kernel at every output
    position, of one unbatched, channels-first input.

    With `groups=1`, equal to `jax.lax.conv_general_dilated_local(x[None], weight,
    ..., dimension_numbers=("NCHW", "OIHW", "NCHW"))[0]`; `groups > 1` (which `lax`
    refuses) splits the channels as [`eqxconv.conv`][] does. Patches are extracted with
    data movement only (see [`eqxconv.extract_patches`][]) and contracted with the
    weight per output position; the input gradient is a fused multiply-sum over the
    output channels (a custom JVP, so forward mode works too). Batch it with
    `jax.vmap`.

    **Arguments:**

    - `x`: the input, shape `(in_channels, dim_1, ..., dim_N)`.
    - `weight`: shape `(out_channels, (in_channels // groups) * prod(kernel_size),
        *out_spatial)`, the middle axis channel-major then kernel offsets (as
        [`eqxconv.extract_patches`][] orders patches).
    - `kernel_size`: the kernel's spatial size, an int or `N` ints.
    - `stride`, `padding`, `dilation`, `groups`, `padding_mode`: as for
        [`eqxconv.conv`][].
    - `precision`, `preferred_element_type`: passed to the contraction
        (`jnp.einsum`).
    - `chunk_size`: `None` (default) computes every output position at once. An int
        bounds peak memory on large inputs: output positions are computed in slabs of
        whole rows along the first spatial dimension, each of at most
        `max(1, chunk_size // prod(out_spatial[1:]))` rows, in a `lax.scan`, so the
        patch tensor (`prod(kernel_size)` times the input) and its cotangent exist one
        slab at a time. The result is the same; fewer, larger chunks are faster.

    **Returns:**

    An array of shape `(out_channels, *out_spatial)`. When `x` and `weight` differ in
    dtype both are first cast to their common dtype under JAX's standard promotion.
    """
    groups = check_positive_int(groups, "groups")
    n = max(len(getattr(weight, "shape", ())) - 2, 1)
    kernel_size = to_tuple(kernel_size, n, "kernel_size")
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    norm_padding, mode = normalise_padding(padding, padding_mode, n)
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    where = "eqxconv.conv_local"
    check_input(where, x, num_spatial_dims=n, in_channels=None)
    in_channels = int(x.shape[0])
    if in_channels % groups != 0:
        raise ValueError(
            f"{where}: `groups` (={groups}) must divide the input's channel count, "
            f"got input shape {tuple(x.shape)}."
        )
    pairs = resolve_padding(norm_padding, x.shape[1:], kernel_size, stride, dilation)
    out_shape = check_fits(
        where,
        x.shape,
        lambda: spatial_output_shape(x.shape[1:], pairs, kernel_size, stride, dilation),
    )
    check_local_weight(
        where,
        weight,
        in_channels=in_channels,
        groups=groups,
        kernel_size=kernel_size,
        out_shape=out_shape,
    )
    if not jnp.issubdtype(weight.dtype, jnp.inexact):
        raise TypeError(f"{where}: `weight` must be floating, got {weight.dtype}.")
    return conv_local_normalised(
        x,
        weight,
        kernel_size=kernel_size,
        stride=stride,
        padding=pairs,
        dilation=dilation,
        groups=groups,
        padding_mode=mode,
        precision=precision,
        preferred_element_type=preferred_element_type,
        chunk_size=chunk_size,
    )
