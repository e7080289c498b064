"""The functional ops, on unbatched, channels-first arrays: the truth of the library.

Each public op validates and normalises its arguments (`_args`), checks its input
(`_checks`) and calls its `run_*` twin, which is also what the layers call (they
normalise once, at construction, and check their input in `checked_call`). A `run_*`
function resolves the padding once for the input, checks that the kernel fits, and
hands the resolved pairs to the padding (`_padding`) and the lowering `_choose`
picks.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Inexact

from ._args import (
    check_choice,
    check_input_dilation,
    check_output_padding,
    check_patches_impl,
    check_positive_int,
    check_spatial_shape,
    CONV_IMPLS,
    ConvImpl,
    normalise_fold_padding,
    normalise_padding,
    PaddingLike,
    PaddingMode,
    PatchesImpl,
    to_tuple,
    TRANSPOSE_IMPLS,
    TransposeImpl,
)
from ._bilinear import bilinear, by_first_tangent
from ._checks import (
    check_conv_weight,
    check_fits,
    check_input,
    check_local_weight,
    check_mode_input,
    check_patches,
)
from ._choose import choose_conv_impl, choose_patches_impl, choose_transpose_impl
from ._geometry import (
    dilated_shape,
    output_shape,
    Padding,
    PaddingPairs,
    resolve_padding,
    transposed_geometry,
)
from ._lowering_adjoint import adjoint_transposed_conv, AdjointConfig
from ._lowering_fft import fft_conv
from ._lowering_local import local_conv
from ._lowering_patches import extract_padded, fold_padded, PatchesLowering
from ._lowering_shift import shift_conv
from ._lowering_transpose import transposed_conv
from ._padding import add_border_reads, border_reads, BorderRead, pad, pad_transpose
from ._partition import (
    explicit_split,
    may_be_partitioned,
    pads_by_border_reads,
    sharded_adjoint,
    splits_spatially,
)


def _promote(x: Array, weight: Array) -> tuple[Array, Array]:
    """Cast input and weight to their common dtype (JAX's standard promotion lattice),
    explicitly, so that the library works under `jax_numpy_dtype_promotion="strict"`.
    """
    if x.dtype == weight.dtype:
        return x, weight
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.promote_types(x.dtype, weight.dtype)
    return x.astype(dtype), weight.astype(dtype)


def _cast(out: Array, preferred_element_type: Any) -> Array:
    if preferred_element_type is None:
        return out
    return out.astype(preferred_element_type)


# --- conv -------------------------------------------------------------------------


@splits_spatially(local_weight=False)
def run_conv(
    where: str,
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
    impl: ConvImpl,
) -> Array:
    """[`eqxconv.conv`][] of a checked input with normalised arguments; `where` names
    the caller in errors."""
    kernel_size = weight.shape[2:]
    extent = dilated_shape(x.shape[1:], input_dilation)
    pairs = resolve_padding(padding, extent, kernel_size, stride, dilation)
    out_shape = check_fits(
        where, x.shape, output_shape, extent, pairs, kernel_size, stride, dilation
    )
    check_mode_input(where, x.shape, pairs, padding_mode)
    padded_shape = tuple(
        size + lo + hi for size, (lo, hi) in zip(extent, pairs, strict=True)
    )
    x, weight = _promote(x, weight)
    reads: tuple[BorderRead, ...] = ()
    if pads_by_border_reads(x, pairs, padding_mode, input_dilation):
        reads = border_reads(
            x.shape[1], pairs[0], kernel_size[0], stride[0], dilation[0],
            out_shape[0], padding_mode,
        )  # fmt: skip
    elif padding_mode != "ZEROS":
        # Every other mode: pad once, then a VALID convolution.
        x = pad(x, pairs, padding_mode)
        pairs = ((0, 0),) * len(pairs)
    lowering = (
        choose_conv_impl(
            in_channels=x.shape[0],
            out_channels=weight.shape[0],
            groups=groups,
            kernel_size=kernel_size,
            stride=stride,
            dilation=dilation,
            padded_shape=padded_shape,
            out_shape=out_shape,
            input_dilation=input_dilation,
            dtype=x.dtype,
            partitioned=may_be_partitioned(x),
        )
        if impl == "auto"
        else impl
    )
    out = _lowered_conv(
        lowering,
        x,
        weight,
        pairs=pairs,
        stride=stride,
        dilation=dilation,
        input_dilation=input_dilation,
        groups=groups,
        out_shape=out_shape,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if not reads:
        return out

    def term(entry: Array, tap: int) -> Array:
        return _grouped_matmul(
            weight[:, :, tap], entry, groups, precision, preferred_element_type
        )

    return add_border_reads(out, x, reads, term)


def _grouped_matmul(
    weight: Array,
    entry: Array,
    groups: int,
    precision: Any,
    preferred_element_type: Any,
) -> Array:
    """`(O, C // groups)` weights applied to the `(C, n)` entries group by group:
    `(O, n)`, one kernel tap of a grouped convolution."""
    out_channels, per_group = weight.shape
    out = jnp.einsum(
        "goc,gcn->gon",
        weight.reshape(groups, out_channels // groups, per_group),
        entry.reshape(groups, per_group, entry.shape[1]),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return out.reshape(out_channels, entry.shape[1])


def _lowered_conv(
    lowering: str,
    x: Array,
    weight: Array,
    *,
    pairs: PaddingPairs,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    input_dilation: tuple[int, ...],
    groups: int,
    out_shape: tuple[int, ...],
    precision: Any,
    preferred_element_type: Any,
) -> Array:
    """The zero-padded convolution of `x` by `pairs` through one lowering."""
    if lowering == "shift":
        return shift_conv(
            pad(x, pairs, "ZEROS"),
            weight,
            stride=stride,
            dilation=dilation,
            groups=groups,
            preferred_element_type=preferred_element_type,
        )
    if lowering == "patches":
        return _conv_by_patches(
            pad(x, pairs, "ZEROS", input_dilation),
            weight,
            partitioned=may_be_partitioned(x),
            stride=stride,
            dilation=dilation,
            groups=groups,
            out_shape=out_shape,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    if lowering in _XLA_AND_PATCHES:
        geometry = _ConvGeometry(
            pairs, stride, dilation, input_dilation, groups, out_shape, precision,
            preferred_element_type,
        )  # fmt: skip
        return _XLA_AND_PATCHES[lowering](geometry, x, weight)
    if lowering == "fft":
        return fft_conv(
            pad(x, pairs, "ZEROS", input_dilation),
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


def _conv_by_patches(
    xp: Array,
    weight: Array,
    *,
    partitioned: bool,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    out_shape: tuple[int, ...],
    precision: Any,
    preferred_element_type: Any,
) -> Array:
    """A convolution of the padded `xp` as its patches ("im2col") contracted with
    the weight at every position: one matrix product forward and for each
    gradient. The patches are taken as `extract_patches` takes them, but wherever
    `xp` may be partitioned as a one-hot convolution, which XLA's partitioner
    splits along sharded spatial axes."""
    out_channels, per_group, *kernel_size = weight.shape
    patches_impl = (
        "conv" if partitioned else choose_patches_impl(kernel_size, stride, dilation)
    )
    patches = extract_padded(xp, kernel_size, stride, dilation, out_shape, patches_impl)
    taps = per_group * math.prod(kernel_size)
    out = jnp.einsum(
        "goj,gj...->go...",
        weight.reshape(groups, out_channels // groups, taps),
        patches.reshape(groups, taps, *out_shape),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return out.reshape(out_channels, *out_shape)


@dataclasses.dataclass(frozen=True)
class _ConvGeometry:
    """The static arguments of one zero-padded `_lowered_conv` (hashable: the
    non-differentiable argument of a custom JVP)."""

    pairs: PaddingPairs
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    input_dilation: tuple[int, ...]
    groups: int
    out_shape: tuple[int, ...]
    precision: Any
    preferred_element_type: Any

    def conv(self, lowering: str, x: Array, weight: Array) -> Array:
        arguments = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _lowered_conv(lowering, x, weight, **arguments)


def _xla_conv(geometry: _ConvGeometry, x: Array, weight: Array) -> Array:
    return geometry.conv("xla", x, weight)


def _patches_conv(geometry: _ConvGeometry, x: Array, weight: Array) -> Array:
    return geometry.conv("patches", x, weight)


# `impl='xla_patches'`: XLA's convolution forward and for the weight's tangent (so
# its weight gradient), the patches lowering for the input's tangent, whose
# transpose (the input gradient) is one matrix product and a fold of the patches.
# XLA's CPU input gradient is slow where the input has few channels (it is a
# convolution with that few outputs). Where the input gradient is never
# taken (a model's first layer) this is XLA's program exactly: the input's tangent
# is a symbolic zero, and nothing of the patches lowering is traced.
_conv_with_patches_input_gradient = bilinear(_xla_conv, _patches_conv, _xla_conv)

# `impl='xla_or_patches'`: XLA's convolution, with its own derivatives, wherever the
# input is not differentiated (a model's first layer), so that such a program is
# XLA's exactly; the whole patches lowering wherever it is. For 3D stems XLA's
# forward and weight gradient are slow too, but a first layer compiles faster on
# XLA's program (`_choose`).
_xla_or_patches_by_input_tangent = by_first_tangent(_xla_conv, _patches_conv)

# The lowerings that combine XLA's convolution with the patches lowering.
_XLA_AND_PATCHES = {
    "xla_patches": _conv_with_patches_input_gradient,
    "xla_or_patches": _xla_or_patches_by_input_tangent,
}


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
        `'SAME'` (output size `ceil(in / stride)`, odd extra pad at the end),
        `'SAME_LOWER'` (odd extra pad at the start), `'CAUSAL'` (pad
        `dilation * (kernel - 1)` before only) or `'CIRCULAR'` (Flax's: periodic
        padding of `((e - 1) // 2, e // 2)` for the dilated kernel's extent `e`, at
        every stride); case-insensitive. Strings are resolved against the
        (input-dilated) input shape.
    - `dilation`: the kernel dilation ("atrous" rate), an int or `N` ints.
    - `input_dilation`: the input dilation (`lhs_dilation` in `lax`); needs
        `padding_mode='ZEROS'`.
    - `groups`: the number of channel groups; divides `in_channels` and
        `out_channels`.
    - `padding_mode`: `'ZEROS'` (default), `'REFLECT'` (`1234 -> 32123432`),
        `'REPLICATE'` (`1234 -> 11123444`) or `'CIRCULAR'` (`1234 -> 34123412`).
    - `precision`, `preferred_element_type`: as for `lax.conv_general_dilated`.
    - `impl`: how the convolution is computed: `'xla'` (`lax.conv_general_dilated`),
        `'shift'` (a shift-and-multiply-add over the kernel taps, for depthwise and
        small-group convolutions, with custom derivatives whose backward pass is as
        cheap as the forward; not with `input_dilation`), `'fft'` (through FFTs of the
        padded input's size, whose cost does not grow with the kernel: for large
        kernels; equal to `'xla'` up to FFT rounding, which is relative to the output's
        scale rather than to each entry; half-precision inputs are computed in
        `float32`; `precision` has no effect), `'patches'` (the input's patches, as
        [`eqxconv.extract_patches`][] takes them, contracted with the weight at every
        position: one matrix product forward and for each gradient, holding
        `in_channels * prod(kernel_size)` entries per output position), `'xla_patches'`
        (`'xla'` forward and for the weight gradient, `'patches'` for the input's
        tangent and gradient; where the input gradient is not taken, as for a model's
        first layer, exactly `'xla'`), `'xla_or_patches'` (exactly `'xla'` where the
        input is not differentiated, `'patches'` wherever it is; the two round
        differently, so a differentiated call's output can differ from an
        undifferentiated one's in the last bits) or `'auto'` (default), whose rule is in
        `docs/benchmarks.md`. On CPU, for real floating-point convolutions without
        `input_dilation`, `'auto'` takes `'fft'` from 100 kernel taps per padded input
        position (`prod(kernel_size) * prod(out_spatial) / prod(padded_spatial)`, about
        the kernel size over the stride's product); for grouped convolutions `'shift'`
        for at most 4 input channels per group and at most 36 products per output
        element (channels per group times kernel taps; in 1D at most 15 taps), else
        `'fft'` for at most 16 input channels per group, from 5 kernel taps and 1.5 taps
        per position; for ungrouped convolutions that are strided and 3D, pointwise
        (1x1, stride 1) in 2D and 3D, or whose windows tile the input (`kernel_size ==
        stride`, no `dilation`) or that are strided stems in 1D and 2D of at most 32
        outputs and 27 patch entries per position (`in_channels * prod(kernel_size)`,
        undilated), `'patches'`, for the other ungrouped ones in 3D with
        at most 4 input channels (stems) `'xla_or_patches'`, and for the remaining
        stems, or in 3D with fewer input than output channels, `'xla_patches'` (all up
        to `2**26` entries of patches); `'xla'` otherwise and
        on every other backend; `'fft'` only where the kernel's spectrum
        (`out_channels * in_channels // groups` transforms of the padded input, held in
        memory) has at most `2**26` entries. Wherever the input may be partitioned over
        several devices, `'xla'`, which XLA's SPMD partitioner splits along sharded
        spatial axes, and for grouped convolutions that are not depthwise, which it
        would gather, `'patches'`, its patches taken as a one-hot convolution (see
        "Scaling across devices"). All give the same values and support forward- and
        reverse-mode derivatives of any order, `jax.vmap` and `jax.jit`, except on
        non-finite inputs: an `inf` or NaN reaches only the outputs whose window holds
        it, but through `'fft'` (which `'auto'` may take) every output of its channel
        group becomes NaN; pass `'xla'` where that matters.

    **Returns:**

    An array of shape `(out_channels, *out_spatial)`, `out_spatial` as
    [`eqxconv.conv_output_shape`][] gives it. When `x` and `weight` differ in dtype both
    are first cast to their common dtype under JAX's standard promotion (e.g.
    `bfloat16` with `float32` computes in `float32`).
    """
    where = "eqxconv.conv"
    groups = check_positive_int(groups, "groups")
    n = check_conv_weight(weight, groups)
    impl = check_choice(impl, "impl", CONV_IMPLS)
    norm_padding, mode = normalise_padding(padding, padding_mode, n)
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    input_dilation = check_input_dilation(input_dilation, n, mode, impl)
    check_input(where, x, num_spatial_dims=n, in_channels=weight.shape[1] * groups)
    return run_conv(
        where,
        x,
        weight,
        stride=stride,
        padding=norm_padding,
        dilation=dilation,
        input_dilation=input_dilation,
        groups=groups,
        padding_mode=mode,
        precision=precision,
        preferred_element_type=preferred_element_type,
        impl=impl,
    )


def conv_output_shape(
    in_spatial_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
    input_dilation: int | Sequence[int] = 1,
) -> tuple[int, ...]:
    """The spatial shape a convolution (or patch extraction, or locally connected
    convolution) returns, in pure Python (no arrays).

    **Arguments:**

    - `in_spatial_shape`: the input's spatial shape `(dim_1, ..., dim_N)`.
    - `kernel_size`, `stride`, `padding`, `dilation`, `input_dilation`: as for
        [`eqxconv.conv`][].

    **Returns:**

    The output spatial shape, a tuple of `N` ints.

    **Raises:**

    `ValueError` if the dilated kernel does not fit in the padded input.
    """
    in_spatial_shape = check_spatial_shape(in_spatial_shape, None, "in_spatial_shape")
    n = len(in_spatial_shape)
    norm_padding, _ = normalise_padding(padding, "ZEROS", n)
    return output_shape(
        dilated_shape(in_spatial_shape, to_tuple(input_dilation, n, "input_dilation")),
        norm_padding,
        to_tuple(kernel_size, n, "kernel_size"),
        to_tuple(stride, n, "stride"),
        to_tuple(dilation, n, "dilation"),
    )


# --- conv_transpose -----------------------------------------------------------------


def _forward_weight(weight: Array, groups: int) -> Array:
    """The weight of the forward convolution whose adjoint is the transposed
    convolution with `weight`: spatial axes flipped, channel axes swapped within each
    group."""
    out_channels, per_group, *kernel_size = weight.shape
    grouped = weight.reshape(groups, out_channels // groups, per_group, *kernel_size)
    swapped = grouped.swapaxes(1, 2).reshape(
        groups * per_group, out_channels // groups, *kernel_size
    )
    return jnp.flip(swapped, axis=tuple(range(2, weight.ndim)))


def run_conv_transpose(
    where: str,
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
    impl: TransposeImpl,
) -> Array:
    """[`eqxconv.conv_transpose`][] of a checked input with normalised arguments;
    `where` names the caller in errors."""
    kernel_size = weight.shape[2:]
    out_shape, pairs, extra = check_fits(
        where,
        x.shape,
        transposed_geometry,
        x.shape[1:],
        padding,
        kernel_size,
        stride,
        dilation,
        output_padding,
    )
    x, weight = _promote(x, weight)
    split = explicit_split(x)
    if split is not None:
        out = sharded_adjoint(
            lambda v: run_conv(
                where,
                v,
                _forward_weight(weight, groups),
                stride=stride,
                padding=pairs,
                dilation=dilation,
                input_dilation=(1,) * len(kernel_size),
                groups=groups,
                padding_mode=padding_mode,
                precision=precision,
                preferred_element_type=None,
                impl="auto",
            ),
            x,
            split,
            (weight.shape[0], *out_shape),
        )
        return _cast(out, preferred_element_type)
    if pads_by_border_reads(x, pairs, padding_mode, (1,)):
        # The adjoint of the forward convolution with zero padding (the same
        # output through `output_padding=extra`), plus that of its border reads.
        out = run_conv_transpose(
            where, x, weight, stride=stride, padding=pairs, output_padding=extra,
            dilation=dilation, groups=groups, padding_mode="ZEROS",
            precision=precision, preferred_element_type=None, impl=impl,
        )  # fmt: skip
        reads = border_reads(
            out_shape[0], pairs[0], kernel_size[0], stride[0], dilation[0],
            x.shape[1], padding_mode,
        )  # fmt: skip
        forward_weight = _forward_weight(weight, groups)

        def term(entry: Array, tap: int) -> Array:
            return _grouped_matmul(
                forward_weight[:, :, tap], entry, groups, precision, None
            )

        def forward_reads(v: Array) -> Array:
            return add_border_reads(jnp.zeros_like(x), v, reads, term)

        _, pullback = jax.vjp(forward_reads, jnp.zeros_like(out))
        (border,) = pullback(x)
        return _cast(out + border, preferred_element_type)
    lowering = (
        choose_transpose_impl(
            kernel_size, stride, dilation, partitioned=may_be_partitioned(x)
        )
        if impl == "auto"
        else impl
    )
    if lowering == "adjoint":
        out = _partitioned_transpose(
            x, weight, out_shape, pairs, stride, dilation, groups, padding_mode,
            precision,
        )  # fmt: skip
        if out is not None:
            return _cast(out, preferred_element_type)
        lowering = "lhs_dilation"
    extents = dilated_shape(kernel_size, dilation)
    if padding_mode == "ZEROS":
        # The forward padding only crops the transposed output.
        core_pairs = tuple(
            (e - 1 - lo, e - 1 - hi + ex)
            for e, (lo, hi), ex in zip(extents, pairs, extra, strict=True)
        )
    else:
        # Onto the whole padded domain, then the adjoint of the mode's padding.
        core_pairs = tuple(
            (e - 1, e - 1 + ex) for e, ex in zip(extents, extra, strict=True)
        )
    out = transposed_conv(
        x,
        weight,
        stride=stride,
        dilation=dilation,
        padding=core_pairs,
        groups=groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
        impl=lowering,
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
    - `output_padding`: which of the output sizes that the forward convolution maps
        onto the input's size to return: `0 <= output_padding < max(stride,
        dilation)` (`< stride` for `'SAME'`/`'SAME_LOWER'`/`'CIRCULAR'`). The output
        size is `(in - 1) * stride + dilation * (kernel - 1) + 1 - low - high +
        output_padding` for explicit padding, `in * stride - output_padding` for
        `'SAME'`/`'SAME_LOWER'`/`'CIRCULAR'`. (With `output_padding >= stride`,
        which PyTorch allows when `dilation > stride`, the forward convolution of
        that size has more than `in` output positions: this is the adjoint of its
        first `in`.)
    - `groups`: the number of channel groups; divides `in_channels` and
        `out_channels`.
    - `precision`, `preferred_element_type`: passed to `lax`.
    - `impl`: how the zero-padded transposed convolution is computed: `'phase'` (the
        sub-pixel decomposition: one stride-1 convolution of all `prod(stride)`
        phases, interleaved), `'interior'` (explicit interior padding, then a stride-1
        convolution), `'lhs_dilation'` (as Equinox and `lax.conv_transpose`) or
        `'auto'` (default): on CPU, `'phase'` when strided, unless a dilation above
        the stride would give a phase more taps than the kernel has, then
        `'interior'`; unstrided, and on every other backend, `'lhs_dilation'`;
        strided, wherever the input may be partitioned over several
        devices (any backend), the reverse-mode derivative of the forward
        convolution, whose gradients XLA's SPMD partitioner splits along sharded
        spatial axes. All give the same values and support forward- and
        reverse-mode differentiation. On an input
        explicitly sharded along spatial axes the transposed convolution is
        computed as the adjoint of the sharded forward one, and `impl` has no
        effect.

    **Returns:**

    An array of shape `(out_channels, *out_spatial)`. Inputs and weights of different
    dtypes are first cast to their common dtype, as in [`eqxconv.conv`][].
    """
    where = "eqxconv.conv_transpose"
    groups = check_positive_int(groups, "groups")
    n = check_conv_weight(weight, groups)
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    norm_padding, mode = normalise_padding(padding, padding_mode, n)
    output_padding = check_output_padding(
        output_padding, n, stride, dilation, norm_padding
    )
    impl = check_choice(impl, "impl", TRANSPOSE_IMPLS)
    check_input(where, x, num_spatial_dims=n, in_channels=weight.shape[1] * groups)
    return run_conv_transpose(
        where,
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
        impl=impl,
    )


def _partitioned_transpose(
    x: Array,
    weight: Array,
    out_shape: tuple[int, ...],
    pairs: PaddingPairs,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    padding_mode: PaddingMode,
    precision: Any,
) -> Array | None:
    """A strided transposed convolution as the adjoint of its forward convolution
    (`_lowering_adjoint`), whose gradients XLA's partitioner splits; `None` (for
    `'lhs_dilation'`) where the forward convolution maps the output's shape onto
    more than the input's (an `output_padding` of at least the stride).

    Grouped, the weight tangent would transpose a grouped weight gradient, which
    `lax` does not implement, so there the adjoint is that of the forward
    convolution as patches contracted with the weight (`_conv_by_patches`), which
    XLA's partitioner splits too."""
    if padding_mode == "ZEROS":
        domain, forward_pairs = out_shape, pairs
    else:
        # Onto the whole padded domain, then the adjoint of the mode's padding.
        domain = tuple(
            n + lo + hi for n, (lo, hi) in zip(out_shape, pairs, strict=True)
        )
        forward_pairs = ((0, 0),) * len(pairs)
    kernel_size = weight.shape[2:]
    if (
        output_shape(domain, forward_pairs, kernel_size, stride, dilation)
        != x.shape[1:]
    ):
        return None
    forward_weight = _forward_weight(weight, groups)
    if groups == 1:
        cfg = AdjointConfig(domain, stride, forward_pairs, dilation, groups, precision)
        out = adjoint_transposed_conv(cfg, x, forward_weight)
    else:

        def forward(v: Array) -> Array:
            return _conv_by_patches(
                pad(v, forward_pairs, "ZEROS"),
                forward_weight,
                partitioned=may_be_partitioned(x),
                stride=stride,
                dilation=dilation,
                groups=groups,
                out_shape=x.shape[1:],
                precision=precision,
                preferred_element_type=None,
            )

        zero = jnp.zeros((weight.shape[0], *domain), x.dtype)
        _, pullback = jax.vjp(forward, zero)
        (out,) = pullback(x)
    if padding_mode == "ZEROS":
        return out
    return pad_transpose(out, pairs, padding_mode, out_shape)


# --- Patches ------------------------------------------------------------------------


@splits_spatially(local_weight=False)
def run_extract_patches(
    where: str,
    x: Array,
    *,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Padding,
    dilation: tuple[int, ...],
    padding_mode: PaddingMode,
    input_dilation: tuple[int, ...],
    preferred_element_type: Any = None,
    impl: PatchesImpl = "auto",
) -> Array:
    """[`eqxconv.extract_patches`][] of a checked input with normalised arguments;
    `where` names the caller in errors."""
    extent = dilated_shape(x.shape[1:], input_dilation)
    pairs = resolve_padding(padding, extent, kernel_size, stride, dilation)
    out_shape = check_fits(
        where, x.shape, output_shape, extent, pairs, kernel_size, stride, dilation
    )
    check_mode_input(where, x.shape, pairs, padding_mode)
    lowering: PatchesLowering = (
        choose_patches_impl(
            kernel_size, stride, dilation, partitioned=may_be_partitioned(x)
        )
        if impl == "auto"
        else impl
    )
    by_reads = pads_by_border_reads(x, pairs, padding_mode, input_dilation)
    if by_reads or (padding_mode == "ZEROS" and all(d == 1 for d in input_dilation)):
        patches = extract_padded(
            x, kernel_size, stride, dilation, out_shape, lowering, zero_padding=pairs
        )
    else:
        padded = pad(x, pairs, padding_mode, input_dilation)
        patches = extract_padded(
            padded, kernel_size, stride, dilation, out_shape, lowering
        )
    if not by_reads:
        return _cast(patches, preferred_element_type)
    reads = border_reads(
        x.shape[1], pairs[0], kernel_size[0], stride[0], dilation[0], out_shape[0],
        padding_mode,
    )  # fmt: skip

    def term(entry: Array, tap: int) -> Array:
        # The entry into its kernel tap's rows (channel-major, then taps).
        taps = jnp.zeros((x.shape[0], kernel_size[0], 1), x.dtype)
        return taps.at[:, tap].set(entry).reshape(-1, 1)

    return _cast(add_border_reads(patches, x, reads, term), preferred_element_type)


def _num_spatial_dims(x: Any, kernel_size: Any, num_spatial_dims: Any) -> int:
    """`N`: `num_spatial_dims`, else `len(kernel_size)`, else from the rank of `x`
    when that cannot be a batched input (rank 2 or 3)."""
    if num_spatial_dims is not None:
        return check_positive_int(num_spatial_dims, "num_spatial_dims")
    if isinstance(kernel_size, Sequence) and not isinstance(kernel_size, str):
        return max(len(kernel_size), 1)
    rank = len(getattr(x, "shape", ()))
    if rank >= 4:
        raise ValueError(
            f"eqxconv.extract_patches cannot tell the number of spatial dimensions of "
            f"an input of shape {tuple(x.shape)} from the int kernel_size="
            f"{kernel_size!r}: a 3D volume and a batch of 2D images look alike. Pass "
            "`num_spatial_dims=` or a kernel_size of one int per spatial dimension "
            "(and batch with `jax.vmap`)."
        )
    return max(rank - 1, 1)


def extract_patches(
    x: Inexact[Array, " channels *spatial"],
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "ZEROS",
    input_dilation: int | Sequence[int] = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    impl: str = "auto",
    num_spatial_dims: int | None = None,
) -> Inexact[Array, " patch_channels *out_spatial"]:
    """Extract the sliding windows ("patches", "im2col") of one unbatched input.

    Equal to `jax.lax.conv_general_dilated_patches(x[None], ...)[0]` and, flattened
    over space, to `torch.nn.functional.unfold` (2D), but lowered to data movement only
    (a reshape for non-overlapping windows, slices otherwise), so that its backward
    pass is cheap too. Batch it with `jax.vmap`.

    **Arguments:**

    - `x`: the input, shape `(C, dim_1, ..., dim_N)`.
    - `kernel_size`: the window's size, an int or `N` ints.
    - `stride`: the window stride, an int or `N` ints.
    - `padding`: as for [`eqxconv.conv`][].
    - `dilation`: the spacing of the window's points, an int or `N` ints.
    - `padding_mode`: `'ZEROS'`, `'REFLECT'`, `'REPLICATE'` or `'CIRCULAR'`.
    - `input_dilation`: the input dilation, an int or `N` ints: `input_dilation - 1`
        zeros between neighbouring inputs, as `lhs_dilation` of
        `lax.conv_general_dilated_patches`; padding strings are resolved against the
        dilated extent `(dim - 1) * input_dilation + 1`. Needs
        `padding_mode='ZEROS'`. The dilated input is written with one strided write
        (the interior padding of `lax.pad`).
    - `precision`: accepted for compatibility with `lax`; patches are exact copies,
        so it has no effect.
    - `preferred_element_type`: the output's dtype (default: `x`'s).
    - `impl`: how the windows are taken: `'reshape'` (non-overlapping windows only:
        a reshape and a transpose), `'slices'` (one strided slice per kernel offset),
        `'separable'` (the windows of one dimension at a time) or `'auto'` (default:
        `'reshape'` where the windows tile the input, else `'separable'`, or,
        wherever a floating-point input may be partitioned over several devices, a
        convolution with one-hot kernels, which XLA's SPMD partitioner splits along
        sharded spatial axes: exact for finite values, but a non-finite entry
        spreads NaN to its neighbours' windows). All give the same values.
    - `num_spatial_dims`: `N`. Needed only with an int `kernel_size` on inputs of
        rank 4 or more, where a 3D volume and a batch of 2D images look alike;
        otherwise `N` is `len(kernel_size)`, or the input's rank minus one.

    **Returns:**

    An array of shape `(C * prod(kernel_size), *out_spatial)`, `out_spatial` as
    [`eqxconv.conv_output_shape`][] gives it. The patch axis is flattened
    channel-major, then kernel offsets in row-major order: entry
    `c * prod(kernel_size) + ravel(offset)` at output position `p` is the padded input
    at channel `c`, position `p * stride + offset * dilation` (of the dilated input).
    """
    del precision
    where = "eqxconv.extract_patches"
    n = _num_spatial_dims(x, kernel_size, num_spatial_dims)
    kernel_size = to_tuple(kernel_size, n, "kernel_size")
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    norm_padding, mode = normalise_padding(padding, padding_mode, n)
    input_dilation = check_input_dilation(input_dilation, n, mode)
    impl = check_patches_impl(impl, kernel_size, stride, dilation)
    check_input(where, x, num_spatial_dims=n, in_channels=None)
    return run_extract_patches(
        where,
        x,
        kernel_size=kernel_size,
        stride=stride,
        padding=norm_padding,
        dilation=dilation,
        padding_mode=mode,
        input_dilation=input_dilation,
        preferred_element_type=preferred_element_type,
        impl=impl,
    )


def fold_grid_shape(
    where: str,
    output_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Padding,
    dilation: tuple[int, ...],
) -> tuple[int, ...]:
    """The spatial shape of the patches that fold into `output_size`, or a
    `ValueError` naming `where` if the kernel does not fit."""
    try:
        return output_shape(output_size, padding, kernel_size, stride, dilation)
    except ValueError as error:
        raise ValueError(
            f"{where}: `output_size`/`out_spatial_shape` {output_size} is too small: "
            f"{error}"
        ) from None


def run_fold_patches(
    where: str,
    patches: Array,
    *,
    output_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Padding,
    dilation: tuple[int, ...],
    preferred_element_type: Any = None,
    impl: PatchesImpl = "auto",
) -> Array:
    """[`eqxconv.fold_patches`][] with normalised arguments; `where` names the caller
    in errors."""
    pairs = resolve_padding(padding, output_size, kernel_size, stride, dilation)
    grid = fold_grid_shape(where, output_size, kernel_size, stride, pairs, dilation)
    check_patches(where, patches, kernel_size, grid)
    padded = tuple(
        size + low + high for size, (low, high) in zip(output_size, pairs, strict=True)
    )
    split = explicit_split(patches)
    if split is not None:
        channels = patches.shape[0] // math.prod(kernel_size)

        def extract(v: Array) -> Array:
            return run_extract_patches(
                where,
                v,
                kernel_size=kernel_size,
                stride=stride,
                padding=pairs,
                dilation=dilation,
                padding_mode="ZEROS",
                input_dilation=(1,) * len(output_size),
                impl=impl,
            )

        full = sharded_adjoint(extract, patches, split, (channels, *output_size))
        return _cast(full, preferred_element_type)
    lowering: PatchesLowering = (
        choose_patches_impl(
            kernel_size, stride, dilation, partitioned=may_be_partitioned(patches)
        )
        if impl == "auto"
        else impl
    )
    full = fold_padded(patches, padded, kernel_size, stride, dilation, lowering)
    return _cast(
        pad_transpose(full, pairs, "ZEROS", output_size), preferred_element_type
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
    impl: str = "auto",
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
    - `impl`: as for [`eqxconv.extract_patches`][]; the fold is the linear transpose
        of that extraction.

    **Returns:**

    An array of shape `(C, *out_spatial_shape)`.
    """
    del precision
    output_size = check_spatial_shape(out_spatial_shape, None, "out_spatial_shape")
    n = len(output_size)
    kernel_size = to_tuple(kernel_size, n, "kernel_size")
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    return run_fold_patches(
        "eqxconv.fold_patches",
        patches,
        output_size=output_size,
        kernel_size=kernel_size,
        stride=stride,
        padding=normalise_fold_padding(padding, n),
        dilation=dilation,
        preferred_element_type=preferred_element_type,
        impl=check_patches_impl(impl, kernel_size, stride, dilation),
    )


# --- conv_local ---------------------------------------------------------------------


@splits_spatially(local_weight=True)
def run_conv_local(
    where: str,
    x: Array,
    weight: Array,
    *,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Padding,
    dilation: tuple[int, ...],
    groups: int,
    padding_mode: PaddingMode,
    input_dilation: tuple[int, ...],
    precision: Any,
    preferred_element_type: Any,
    chunk_size: int | None,
) -> Array:
    """[`eqxconv.conv_local`][] of a checked input with normalised arguments; `where`
    names the caller in errors."""
    extent = dilated_shape(x.shape[1:], input_dilation)
    pairs = resolve_padding(padding, extent, kernel_size, stride, dilation)
    out_shape = check_fits(
        where, x.shape, output_shape, extent, pairs, kernel_size, stride, dilation
    )
    check_mode_input(where, x.shape, pairs, padding_mode)
    check_local_weight(
        where,
        weight,
        in_channels=x.shape[0],
        groups=groups,
        kernel_size=kernel_size,
        out_shape=out_shape,
    )
    x, weight = _promote(x, weight)
    return local_conv(
        pad(x, pairs, padding_mode, input_dilation),
        weight,
        kernel_size=kernel_size,
        stride=stride,
        dilation=dilation,
        groups=groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
        chunk_size=chunk_size,
        # Separable on one device, whatever the windows: `local_conv` is tuned
        # for it.
        patches_impl=choose_patches_impl(kernel_size, stride, dilation, True)
        if may_be_partitioned(x)
        else "separable",
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
    input_dilation: int | Sequence[int] = 1,
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
    - `input_dilation`: as for [`eqxconv.conv`][] (`lhs_dilation` of
        `lax.conv_general_dilated_local`): padding strings are resolved against the
        dilated extent, and `weight`'s `out_spatial` is the output on it. Needs
        `padding_mode='ZEROS'`.
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
    where = "eqxconv.conv_local"
    groups = check_positive_int(groups, "groups")
    if not isinstance(weight, jax.Array | np.ndarray) or weight.ndim < 3:
        raise TypeError(
            f"{where} expected `weight` to be an array of shape (out_channels, "
            "(in_channels // groups) * prod(kernel_size), *out_spatial), got "
            f"{getattr(weight, 'shape', type(weight).__name__)}."
        )
    n = weight.ndim - 2
    kernel_size = to_tuple(kernel_size, n, "kernel_size")
    stride = to_tuple(stride, n, "stride")
    dilation = to_tuple(dilation, n, "dilation")
    norm_padding, mode = normalise_padding(padding, padding_mode, n)
    input_dilation = check_input_dilation(input_dilation, n, mode)
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    check_input(where, x, num_spatial_dims=n, in_channels=None)
    if x.shape[0] % groups != 0:
        raise ValueError(
            f"{where}: `groups` (={groups}) must divide the input's channel count, "
            f"got input shape {tuple(x.shape)}."
        )
    return run_conv_local(
        where,
        x,
        weight,
        kernel_size=kernel_size,
        stride=stride,
        padding=norm_padding,
        dilation=dilation,
        groups=groups,
        padding_mode=mode,
        input_dilation=input_dilation,
        precision=precision,
        preferred_element_type=preferred_element_type,
        chunk_size=chunk_size,
    )
