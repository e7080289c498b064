"""The one place `impl='auto'` is decided, for every op.

Each rule states what it picks and why; the measurements behind it are the tables of
`docs/benchmarks.md` (scripts in `benchmarks/`). Off CPU nothing custom has been
measured, so every op there is `lax`'s own.
"""

import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._geometry import is_non_overlapping


# The shift lowering reads one window per product of an input channel of a group
# and a kernel tap, so its compile time grows with the products per output. With its
# forward and cotangent materialised (`_lowering_shift._unfused`) it was the fastest
# grouped lowering under both losses on every measured configuration up to 49
# products (a 7x7 depthwise kernel) and 15 taps in 1D, but it compiles slower than
# the FFT lowering. The bound is set by whole models' first calls: with 7x7
# depthwise layers (49 products) on the shift lowering a ConvNeXt-like model's first
# call passed 1.5x Equinox's, for a step only a little faster than the FFT's; up to
# 36 products (a 3x3 kernel with 4 channels per group, 3x3x3 and 5x5 depthwise) the
# step gain is large and no measured model pays for it (`docs/benchmarks.md`).
_MAX_SHIFT_IN_PER_GROUP = 4
_MAX_SHIFT_PRODUCTS = 36
_MAX_SHIFT_TAPS_1D = 15

# A direct convolution's cost grows with the kernel, an FFT's with the logarithm of
# the input: at and above this many taps per input position the FFT lowering was
# the faster, forward and forward+backward, in every measured configuration.
_MIN_FFT_TAPS = 100
# XLA's CPU grouped convolution is slow: for the grouped convolutions the shift
# lowering leaves to it, with up to 16 input channels per group, from 5 kernel taps
# and more than one tap per input position (not a kernel as large as its input),
# the FFT lowering was faster in every measured configuration, by 2-16x.
_MAX_FFT_GROUPED_IN_PER_GROUP = 16
_MIN_FFT_GROUPED_KERNEL_TAPS = 5
_MIN_FFT_GROUPED_TAPS = 1.5
# XLA's CPU convolution is slow in 3D when strided, whatever the channels, and for
# pointwise (1x1) kernels in 2D and 3D: there the patches lowering (one matrix
# product forward and for each gradient; for a pointwise kernel the patches are the
# input itself) was the faster on every measured configuration, at a compile time
# close to XLA's. Strided in 1D and 2D, and pointwise in 1D, it matched or trailed
# XLA's, except for windows that tile the input (`kernel_size == stride`, no
# dilation: a patchify stem, a downsampling layer), whose patches are a reshape: it
# ran as fast or faster there, in a model's first layer too, and compiled faster.
# The patches are `in_channels * prod(kernel_size)` times the output's positions:
# beyond this many entries per example `'auto'` does not trade time for that
# memory.
_MAX_PATCHES = 2**26
# XLA's CPU input gradient is a convolution with `in_channels` outputs, slow where
# they are few: for stems (an input of at most this many channels), and in 3D
# wherever the input has fewer channels than the output (with as many or more, XLA's
# was the faster). There `'xla_patches'` keeps XLA's forward and weight gradient and
# takes the input gradient from the patches lowering; a model's first layer, whose
# input gradient is never taken, runs XLA's own program. (The whole patches lowering
# ran stems faster alone too, but inside whole models its step gain was within noise
# for a slower first call: `docs/benchmarks.md`.)
_MAX_STEM_CHANNELS = 4
# Strided in 1D and 2D, a stem with small patches and few outputs (an RGB `3 -> 32`
# 3x3 stride-2 stem, a mono 1D stem) ran faster on the whole patches lowering than
# on `'xla_patches'` under `sum(y ** 2)` and as a model's first layer, compiling
# faster there, and within the noise under the linear loss; with 64 or more outputs,
# or 36 or more patch entries per output position (4 channels, 5x5 or 7x7 kernels),
# it was the slower, by up to 2.6x (`docs/benchmarks.md`, Stems).
_MAX_STRIDED_STEM_PATCH = 27
_MAX_STRIDED_STEM_OUT = 32
# In 3D a stem's XLA forward and weight gradient are slow as well (a 1-channel
# volume: several times the patches lowering's, under `sum(y ** 2)` too), so where
# its input is differentiated `'xla_or_patches'` runs the whole patches lowering;
# as a model's first layer it runs XLA's program, which compiles faster: with the
# patches lowering there the 3D U-Net-like model's first call came to 1.38-1.66x
# Equinox's in three runs (1.43x on XLA's program), for a step 12% faster.
# The FFT lowering holds the kernel's spectrum, `out_channels * in_channels_per_group`
# transforms of the padded input's size: beyond this many complex entries `'auto'`
# does not trade a direct convolution's time for that memory.
_MAX_FFT_SPECTRUM = 2**26


def fft_taps(
    kernel_size: Sequence[int],
    padded_shape: Sequence[int],
    out_shape: Sequence[int],
) -> float:
    """Kernel taps a direct convolution spends per position of the padded input
    (`prod(kernel_size) * prod(out_shape) / prod(padded_shape)`: the kernel size,
    divided by the stride's product for `'SAME'`): its cost over the FFT's, up to
    the FFT's logarithmic factor, for every channel count."""
    padded = math.prod(padded_shape)
    if padded == 0:
        return 0.0
    return math.prod(kernel_size) * math.prod(out_shape) / padded


def _fft_fits(
    in_channels: int, out_channels: int, groups: int, padded_shape: Sequence[int]
) -> bool:
    """Whether the kernel's real-FFT spectrum has at most `_MAX_FFT_SPECTRUM`
    entries."""
    *leading, last = padded_shape
    bins = math.prod(leading) * (last // 2 + 1)
    return out_channels * (in_channels // groups) * bins <= _MAX_FFT_SPECTRUM


def choose_conv_impl(
    *,
    in_channels: int,
    out_channels: int,
    groups: int,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padded_shape: Sequence[int],
    out_shape: Sequence[int],
    input_dilation: Sequence[int],
    dtype: Any,
    dilation: Sequence[int] | None = None,
    partitioned: bool = False,
) -> Literal["xla", "shift", "fft", "patches", "xla_patches", "xla_or_patches"]:
    """On CPU, for real floating-point convolutions without input dilation:

    - `'fft'` for large kernels: at least 100 kernel taps per padded input position
        (`fft_taps`), any channel count or groups, where the FFT lowering
        measured faster forward and forward+backward (`benchmarks/fft.py`).
    - `'shift'` for grouped convolutions with at most 4 input channels per group
        (depthwise is 1; any channel multiplier, stride, dilation, padding,
        1D/2D/3D), at most 36 products per output element (channels per group
        times kernel taps: 5x5 depthwise and 3x3 with 4 channels per group yes,
        7x7 depthwise no) and in 1D at most 15 taps: XLA's CPU grouped convolution
        is slow there, forward and backward, and the shift lowering was faster
        than the FFT lowering under both a linear loss and `sum(y ** 2)`
        (`benchmarks/auto.py`); beyond, its slower compile outweighed its step in
        a whole model's first call (`benchmarks/models.py`).
    - `'fft'` for the other grouped convolutions with at most 16 input channels
        per group, at least 5 kernel taps and more than 1.5 taps per input
        position, where it beat XLA's grouped convolution (and the shift lowering
        beyond its bound) on every measured configuration.

    `'fft'` only where the kernel's spectrum (`out_channels * in_channels // groups`
    transforms of the padded input) has at most `2**26` complex entries: it is held
    in memory, which a direct convolution does not need.

    - `'patches'` (the input's patches contracted with the weight) for ungrouped
        convolutions that are strided and 3D, or pointwise (a 1x1 kernel, stride 1)
        in 2D and 3D, where XLA's CPU convolution is slow, or whose windows tile the
        input (`kernel_size == stride`, no `dilation`: the patches are a reshape),
        where it is as fast or faster and compiles faster, and for strided stems in
        1D and 2D of at most 32 outputs and 27 patch entries per output position
        (`in_channels * prod(kernel_size)`: an RGB 3x3 stem), undilated, which ran
        faster on it than on `'xla_patches'` under `sum(y ** 2)` and as a model's
        first layer, all while the patches have at most `2**26` entries per
        example.
    - `'xla_or_patches'` (XLA's program where the input is not differentiated, the
        whole patches lowering where it is) for the other ungrouped 3D convolutions of
        at most 4 input channels (volume stems), within the same bound: XLA's forward
        and both gradients are slow there, and a model's first layer, whose input
        is data, compiles faster on XLA's program.
    - `'xla_patches'` (XLA's forward and weight gradient, the patches lowering's input
        gradient) for the other ungrouped convolutions of at most 4 input channels (RGB
        and mono stems in 1D and 2D), and in 3D of fewer input than output channels,
        within the same bound: XLA's input gradient is slow there, and as a model's
        first layer, whose input gradient is never taken, it is XLA's program. (The
        whole patches lowering runs stems faster alone too, but as a whole model's
        first layer it compiled slower for a step within noise.)

    Otherwise `'xla'`, `lax.conv_general_dilated`.

    The choice is made on the configuration alone, never on the values: where it is
    `'fft'`, a non-finite input turns every output of its channel group into NaN
    instead of only those whose window holds it (documented on `eqxconv.conv`).

    Wherever the input may be partitioned (`partitioned`, from
    `_partition.may_be_partitioned`), on every backend: `'xla'`, which XLA's SPMD
    partitioner splits along sharded spatial axes with halo exchanges, where it
    gathers the shift and FFT lowerings; but for grouped convolutions that are not
    depthwise (`1 < groups < in_channels`), whose `lax` form it gathers too,
    `'patches'`: the patches as a one-hot convolution, which it splits, contracted
    with the weight per position (memory for `prod(kernel_size)` times the
    input)."""
    if partitioned:
        grouped = 1 < groups < in_channels
        plain = all(d == 1 for d in input_dilation)
        if grouped and plain and jnp.issubdtype(dtype, jnp.inexact):
            return "patches"
        return "xla"
    if jax.default_backend() != "cpu":
        return "xla"
    if any(d != 1 for d in input_dilation) or not jnp.issubdtype(dtype, jnp.floating):
        return "xla"
    fits = _fft_fits(in_channels, out_channels, groups, padded_shape)
    taps = fft_taps(kernel_size, padded_shape, out_shape)
    if fits and taps >= _MIN_FFT_TAPS:
        return "fft"
    per_group = in_channels // groups
    kernel_taps = math.prod(kernel_size)
    if groups == 1:
        strided_3d = len(kernel_size) == 3 and any(s > 1 for s in stride)
        pointwise = (
            len(kernel_size) > 1 and kernel_taps == 1 and all(s == 1 for s in stride)
        )
        tiling = kernel_taps > 1 and is_non_overlapping(
            kernel_size, stride, dilation or (1,) * len(kernel_size)
        )
        patches = in_channels * kernel_taps * math.prod(out_shape)
        if patches > _MAX_PATCHES:
            return "xla"
        if strided_3d or pointwise or tiling:
            return "patches"
        stem = in_channels <= _MAX_STEM_CHANNELS
        small_strided_stem = (
            stem
            and any(s > 1 for s in stride)
            and all(d == 1 for d in dilation or ())
            and in_channels * kernel_taps <= _MAX_STRIDED_STEM_PATCH
            and out_channels <= _MAX_STRIDED_STEM_OUT
        )
        if small_strided_stem:
            return "patches"
        if stem and len(kernel_size) == 3:
            return "xla_or_patches"
        widening_3d = len(kernel_size) == 3 and in_channels < out_channels
        if stem or widening_3d:
            return "xla_patches"
        return "xla"
    if (
        per_group <= _MAX_SHIFT_IN_PER_GROUP
        and per_group * kernel_taps <= _MAX_SHIFT_PRODUCTS
        and (len(kernel_size) > 1 or kernel_taps <= _MAX_SHIFT_TAPS_1D)
    ):
        return "shift"
    if (
        fits
        and per_group <= _MAX_FFT_GROUPED_IN_PER_GROUP
        and kernel_taps >= _MIN_FFT_GROUPED_KERNEL_TAPS
        and taps >= _MIN_FFT_GROUPED_TAPS
    ):
        return "fft"
    return "xla"


def choose_transpose_impl(
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    partitioned: bool = False,
) -> Literal["phase", "interior", "lhs_dilation", "adjoint"]:
    """The lowering of a zero-padded transposed convolution
    (`benchmarks/conv_transpose.py`).

    - Unstrided: a plain convolution (`'lhs_dilation'` without a dilation), whose XLA
        gradients are fine; the tap-wise derivatives of the other lowerings are slower
        to run and to compile there.
    - Strided, on CPU: the phase decomposition, which never multiplies an inserted
        zero and whose tap-wise derivatives avoid XLA CPU's slow weight-gradient
        convolution. Along a strided, dilated dimension it materialises the dilated
        kernel; where that gives a phase more taps than the kernel has (a dilation
        above the stride), interior padding instead.
    - Off CPU: `'lhs_dilation'`, as `lax.conv_transpose`.
    - Strided, wherever the input may be partitioned (`partitioned`), on every
        backend: `'adjoint'`, the adjoint of the strided forward convolution
        (`_lowering_adjoint`), whose gradients XLA's SPMD partitioner splits along
        sharded spatial axes with halo exchanges; it gathers the phases'
        interleaving and the `'lhs_dilation'` form's weight gradient.
    """
    unstrided = all(s == 1 for s in stride)
    if unstrided:
        return "lhs_dilation"
    if partitioned:
        return "adjoint"
    if jax.default_backend() != "cpu":
        return "lhs_dilation"
    fits = all(
        -(-((k - 1) * d + 1) // s) <= k
        for k, s, d in zip(kernel_size, stride, dilation, strict=True)
        if s > 1
    )
    return "phase" if fits else "interior"


def choose_patches_impl(
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    partitioned: bool = False,
) -> Literal["reshape", "separable", "conv"]:
    """`'reshape'` for windows that tile the input, else `'separable'`: slicing one
    dimension at a time needs `sum(kernel_size)` slices where one slice per offset
    (`'slices'`) needs `prod(kernel_size)`, so it compiles faster at the same speed
    (`benchmarks/patches.py`). Patches are data movement on every backend.

    Wherever the input may be partitioned (`partitioned`), overlapping windows take
    `'conv'`, one-hot kernels as a dense convolution (of the channels as its batch):
    XLA's SPMD partitioner splits it along a sharded spatial axis with one halo
    exchange each way, its gradient too, where it splits each strided slice
    (`'slices'`) with its own and gathers the separable lowering's stacked
    windows."""
    if is_non_overlapping(kernel_size, stride, dilation):
        return "reshape"
    return "conv" if partitioned else "separable"
