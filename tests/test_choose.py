"""The rules `impl='auto'` follows (`eqxconv/_choose.py`), with the backend mocked:
off CPU every op is `lax`'s own, since nothing custom was measured there."""

from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import eqxconv
from eqxconv import _choose

from .helpers import uses_lax_conv


# A dense 1D convolution with a long kernel ('SAME', stride 1): 255 taps per input
# position.
LONG_1D: dict[str, Any] = dict(
    in_channels=16,
    out_channels=16,
    groups=1,
    kernel_size=(255,),
    stride=(1,),
    padded_shape=(4096 + 254,),
    out_shape=(4096,),
    input_dilation=(1,),
)
# A 3x3 depthwise convolution of 8 channels at 16x16 ('SAME').
DEPTHWISE_3X3: dict[str, Any] = dict(
    in_channels=8,
    out_channels=8,
    groups=8,
    kernel_size=(3, 3),
    stride=(1, 1),
    padded_shape=(18, 18),
    out_shape=(16, 16),
    input_dilation=(1, 1),
)


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_off_cpu_auto_is_lax(monkeypatch, backend):
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: backend)
    assert _choose.choose_conv_impl(**DEPTHWISE_3X3, dtype=jnp.float32) == "xla"
    assert _choose.choose_conv_impl(**LONG_1D, dtype=jnp.float32) == "xla"
    assert _choose.choose_transpose_impl((4, 4), (2, 2), (1, 1)) == "lhs_dilation"
    # Patches are data movement on every backend.
    assert _choose.choose_patches_impl((16, 16), (16, 16), (1, 1)) == "reshape"


def test_on_cpu_auto_keeps_its_measured_lowerings(monkeypatch):
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: "cpu")
    assert _choose.choose_conv_impl(**DEPTHWISE_3X3, dtype=jnp.float32) == "shift"
    assert _choose.choose_conv_impl(**DEPTHWISE_3X3, dtype=jnp.complex64) == "xla"
    # The shift lowering takes at most 4 input channels per group and 36 products
    # per output (channels per group x kernel taps); beyond, grouped convolutions of
    # up to 16 channels per group take the FFT from 5 kernel taps.
    for kernel_size, padded, out, impl in (
        ((5, 5), (20, 20), (16, 16), "shift"),  # 25 products
        ((7, 7), (22, 22), (16, 16), "fft"),  # 49 products
        ((3, 3, 3), (18, 18, 18), (16, 16, 16), "shift"),  # 27 products
        ((15,), (270,), (256,), "shift"),
        ((31,), (286,), (256,), "fft"),  # 1D: at most 15 taps
    ):
        args = dict(
            DEPTHWISE_3X3,
            kernel_size=kernel_size,
            stride=(1,) * len(kernel_size),
            padded_shape=padded,
            out_shape=out,
            input_dilation=(1,) * len(kernel_size),
        )
        assert _choose.choose_conv_impl(**args, dtype=jnp.float32) == impl, args
    two_per_group = dict(DEPTHWISE_3X3, in_channels=16, dtype=jnp.float32)
    assert _choose.choose_conv_impl(**two_per_group) == "shift"  # 18 products
    four_per_group = dict(DEPTHWISE_3X3, in_channels=32, dtype=jnp.float32)
    assert _choose.choose_conv_impl(**four_per_group) == "shift"  # 36 products
    five_per_group = dict(DEPTHWISE_3X3, in_channels=40, dtype=jnp.float32)
    assert _choose.choose_conv_impl(**five_per_group) == "fft"  # beyond 4 per group
    sixteen_per_group = dict(DEPTHWISE_3X3, in_channels=128, dtype=jnp.float32)
    assert _choose.choose_conv_impl(**sixteen_per_group) == "fft"
    # Not measured: more than 16 channels per group, or fewer than 5 kernel taps.
    many_per_group = dict(DEPTHWISE_3X3, in_channels=136, dtype=jnp.float32)
    assert _choose.choose_conv_impl(**many_per_group) == "xla"
    pointwise = dict(
        DEPTHWISE_3X3, in_channels=64, kernel_size=(1, 1), padded_shape=(16, 16)
    )
    assert _choose.choose_conv_impl(**pointwise, dtype=jnp.float32) == "xla"
    assert _choose.choose_transpose_impl((4, 4), (2, 2), (1, 1)) == "phase"
    assert _choose.choose_transpose_impl((2,), (2,), (5,)) == "interior"
    assert _choose.choose_transpose_impl((4,), (1,), (1,)) == "lhs_dilation"


def test_on_cpu_stems_and_widening_3d_take_xla_patches(monkeypatch, getkey):
    """Ungrouped convolutions of at most 4 input channels, and in 3D of fewer input
    than output channels, keep XLA's forward and weight gradient and take the patches
    lowering's input gradient; with 5 input channels in 2D, or beyond 2**26 entries of
    patches, XLA's whole."""
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: "cpu")
    choose = _choose.choose_conv_impl
    image: dict[str, Any] = dict(
        out_channels=64,
        groups=1,
        kernel_size=(3, 3),
        stride=(1, 1),
        padded_shape=(50, 50),
        out_shape=(48, 48),
        input_dilation=(1, 1),
        dtype=jnp.float32,
    )
    for channels in (1, 3, 4):
        assert choose(**image, in_channels=channels) == "xla_patches"
    assert choose(**image, in_channels=5) == "xla"
    subsampling = dict(image, stride=(2, 2), out_shape=(24, 24))
    assert choose(**subsampling, in_channels=3) == "xla_patches"
    line = dict(image, kernel_size=(7,), stride=(1,), padded_shape=(2054,))
    line.update(out_shape=(2048,), input_dilation=(1,))
    assert choose(**line, in_channels=1) == "xla_patches"
    huge = dict(image, padded_shape=(4098, 4098), out_shape=(4096, 4096))
    assert choose(**huge, in_channels=1) == "xla"
    # In 3D, also wherever the input has fewer channels than the output; 3D stems
    # take XLA's program or the whole patches lowering by the input's tangent.
    volume = dict(image, kernel_size=(3, 3, 3), stride=(1, 1, 1), out_channels=32)
    volume.update(padded_shape=(18,) * 3, out_shape=(16,) * 3, input_dilation=(1,) * 3)
    assert choose(**volume, in_channels=16) == "xla_patches"
    for channels in (1, 4):
        assert choose(**volume, in_channels=channels) == "xla_or_patches"
    assert choose(**volume, in_channels=32) == "xla"
    assert choose(**dict(image, out_channels=32), in_channels=16) == "xla"


def test_on_cpu_small_strided_stems_take_patches(monkeypatch):
    """Strided stems in 1D and 2D of at most 32 outputs and 27 patch entries per
    output position take the whole patches lowering; with 64 outputs, 36 entries (4
    channels at 3x3), a 5x5 kernel, a dilation or no stride, `'xla_patches'`."""
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: "cpu")
    choose = _choose.choose_conv_impl
    rgb: dict[str, Any] = dict(
        in_channels=3,
        out_channels=32,
        groups=1,
        kernel_size=(3, 3),
        stride=(2, 2),
        padded_shape=(66, 66),
        out_shape=(32, 32),
        input_dilation=(1, 1),
        dtype=jnp.float32,
    )
    assert choose(**rgb) == "patches"
    assert choose(**dict(rgb, out_channels=16)) == "patches"
    assert choose(**dict(rgb, in_channels=1)) == "patches"
    assert choose(**dict(rgb, stride=(3, 3), out_shape=(22, 22))) == "patches"
    mono_line = dict(rgb, in_channels=1, kernel_size=(7,), stride=(2,))
    mono_line.update(padded_shape=(2054,), out_shape=(1024,), input_dilation=(1,))
    assert choose(**mono_line) == "patches"
    assert choose(**dict(rgb, out_channels=64)) == "xla_patches"
    assert choose(**dict(rgb, in_channels=4)) == "xla_patches"
    wide = dict(rgb, kernel_size=(5, 5), padded_shape=(68, 68))
    assert choose(**wide) == "xla_patches"
    assert choose(**dict(rgb, dilation=(2, 2), padded_shape=(68, 68))) == "xla_patches"
    unstrided = dict(rgb, stride=(1, 1), out_shape=(64, 64))
    assert choose(**unstrided) == "xla_patches"


def _gradient_ops(x, w, impl, argnums) -> list[str]:
    """The compiled ops of `sum(conv(x, w) ** 2)`'s gradient in `argnums`."""

    def loss(x, w):
        return jnp.sum(eqxconv.conv(x, w, padding=1, impl=impl) ** 2)

    hlo = jax.jit(jax.grad(loss, argnums=argnums)).lower(x, w).compile().as_text()
    assert hlo is not None
    lines = [line for line in hlo.splitlines() if " = " in line]
    return sorted(line.split("=")[1].split("(")[0] for line in lines)


def test_stem_weight_gradient_is_xla_program(getkey):
    """Where the input gradient is not taken (a model's first layer),
    `impl='xla_patches'` is XLA's program: nothing of the patches is traced."""
    for channels, n in ((3, 2), (1, 1)):
        x = jr.normal(getkey(), (channels, *(12,) * n))
        w = jr.normal(getkey(), (16, channels, *(3,) * n))
        assert _gradient_ops(x, w, "xla_patches", 1) == _gradient_ops(x, w, "xla", 1)
        assert uses_lax_conv(lambda x, w=w: eqxconv.conv(x, w, impl="xla_patches"), x)


def test_xla_or_patches_is_one_program_or_the_other(getkey):
    """`impl='xla_or_patches'` compiles to XLA's program where only the weight is
    differentiated (a model's first layer) and to the patches lowering's wherever the
    input is."""
    x = jr.normal(getkey(), (1, 10, 10, 10))
    w = jr.normal(getkey(), (8, 1, 3, 3, 3))
    ops = {
        (impl, argnums): _gradient_ops(x, w, impl, argnums)
        for impl in ("xla", "patches", "xla_or_patches")
        for argnums in (1, (0, 1))
    }
    assert ops["xla_or_patches", 1] == ops["xla", 1] != ops["patches", 1]
    assert ops["xla_or_patches", (0, 1)] == ops["patches", (0, 1)] != ops["xla", (0, 1)]


def test_on_cpu_pointwise_takes_patches(monkeypatch, getkey):
    """Ungrouped pointwise (1x1, stride 1) convolutions in 2D and 3D are a matrix
    product with the input itself; strided, grouped or in 1D they stay on XLA's."""
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: "cpu")
    choose = _choose.choose_conv_impl
    for n in (2, 3):
        pointwise: dict[str, Any] = dict(
            in_channels=96,
            out_channels=384,
            groups=1,
            kernel_size=(1,) * n,
            stride=(1,) * n,
            padded_shape=(16,) * n,
            out_shape=(16,) * n,
            input_dilation=(1,) * n,
            dtype=jnp.float32,
        )
        assert choose(**pointwise) == "patches"
        if n == 2:
            subsampling = dict(pointwise, stride=(2, 2), out_shape=(8, 8))
            assert choose(**subsampling) == "xla"
            assert choose(**dict(pointwise, groups=4)) == "xla"
    line = dict(pointwise, kernel_size=(1,), stride=(1,), padded_shape=(2048,))
    line.update(out_shape=(2048,), input_dilation=(1,))
    assert choose(**line) == "xla"
    # The patches of a pointwise kernel are the input: a contraction, no convolution.
    x = jr.normal(getkey(), (8, 6, 6))
    w = jr.normal(getkey(), (16, 8, 1, 1))
    assert not uses_lax_conv(lambda x: eqxconv.conv(x, w), x)


def test_on_cpu_tiling_windows_take_patches(monkeypatch):
    """Ungrouped convolutions whose windows tile the input (`kernel_size == stride`,
    no dilation: patchify stems, downsampling layers) take the patches, a reshape, in
    every N; dilated, or overlapping, they do not."""
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: "cpu")
    choose = _choose.choose_conv_impl
    patchify: dict[str, Any] = dict(
        in_channels=3,
        out_channels=96,
        groups=1,
        kernel_size=(4, 4),
        stride=(4, 4),
        padded_shape=(64, 64),
        out_shape=(16, 16),
        input_dilation=(1, 1),
        dtype=jnp.float32,
    )
    assert choose(**patchify) == "patches"
    assert choose(**patchify, dilation=(1, 1)) == "patches"
    downsample = dict(patchify, in_channels=96, out_channels=192, kernel_size=(2, 2))
    downsample.update(stride=(2, 2), padded_shape=(32, 32))
    assert choose(**downsample) == "patches"
    line = dict(patchify, in_channels=32, kernel_size=(4,), stride=(4,))
    line.update(padded_shape=(1024,), out_shape=(256,), input_dilation=(1,))
    assert choose(**line) == "patches"
    assert choose(**downsample, dilation=(2, 2)) == "xla"
    assert choose(**dict(downsample, kernel_size=(3, 3))) == "xla"
    assert choose(**dict(downsample, groups=96)) == "shift"


def test_on_cpu_strided_3d_takes_patches(monkeypatch):
    """Strided, ungrouped 3D convolutions leave XLA's CPU convolution for the
    patches, whatever the channels, while the patches stay within 2**26 entries;
    unstrided 3D stems, and strided convolutions in 2D, do not."""
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: "cpu")
    volume: dict[str, Any] = dict(
        out_channels=16,
        groups=1,
        kernel_size=(3, 3, 3),
        stride=(2, 2, 2),
        padded_shape=(34, 34, 34),
        out_shape=(16, 16, 16),
        input_dilation=(1, 1, 1),
        dtype=jnp.float32,
    )
    choose = _choose.choose_conv_impl
    for channels in (1, 16, 64):
        assert choose(**volume, in_channels=channels) == "patches"
    one_axis = dict(volume, stride=(1, 1, 2), out_shape=(32, 32, 16))
    assert choose(**one_axis, in_channels=16) == "patches"
    patchify = dict(
        volume,
        kernel_size=(4, 4, 4),
        stride=(4, 4, 4),
        padded_shape=(32,) * 3,
        out_shape=(8,) * 3,
    )
    assert choose(**patchify, in_channels=3) == "patches"
    # Beyond 2**26 entries of patches: 64 channels x 27 taps x 128^3 positions.
    huge = dict(volume, padded_shape=(258,) * 3, out_shape=(128,) * 3)
    assert choose(**huge, in_channels=64) == "xla"
    stem = dict(volume, stride=(1, 1, 1), out_shape=(32, 32, 32))
    assert choose(**stem, in_channels=1) == "xla_or_patches"
    image = dict(
        volume,
        kernel_size=(3, 3),
        stride=(2, 2),
        padded_shape=(34, 34),
        out_shape=(16, 16),
        input_dilation=(1, 1),
    )
    assert choose(**image, in_channels=64) == "xla"


def test_on_cpu_auto_takes_fft_for_large_kernels(monkeypatch):
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: "cpu")
    choose = _choose.choose_conv_impl
    assert choose(**LONG_1D, dtype=jnp.float32) == "fft"
    assert choose(**LONG_1D, dtype=jnp.bfloat16) == "fft"
    # Not measured: complex dtypes and input dilation.
    assert choose(**LONG_1D, dtype=jnp.complex64) == "xla"
    assert choose(**{**LONG_1D, "input_dilation": (2,)}, dtype=jnp.float32) == "xla"
    # Below 100 taps per position: a 63-tap kernel, or 255 taps at stride 4, or a
    # large kernel over an input it barely exceeds (few outputs).
    assert choose(**{**LONG_1D, "kernel_size": (63,)}, dtype=jnp.float32) == "xla"
    strided = {**LONG_1D, "stride": (4,), "out_shape": (1024,)}
    assert choose(**strided, dtype=jnp.float32) == "xla"
    valid = dict(LONG_1D, padded_shape=(300,), out_shape=(46,))
    assert choose(**valid, dtype=jnp.float32) == "xla"
    # Nor where the kernel's spectrum would be large: 256 -> 256 channels at 65536.
    wide = dict(LONG_1D, in_channels=256, out_channels=256)
    wide.update(padded_shape=(65536 + 254,), out_shape=(65536,))
    assert choose(**wide, dtype=jnp.float32) == "xla"
    narrow = dict(wide, in_channels=16, out_channels=16)
    assert choose(**narrow, dtype=jnp.float32) == "fft"
    # 2D: a 15x15 kernel over 64x64 'SAME' (172 taps per position); 7x7 is not.
    image: dict[str, Any] = dict(
        in_channels=8,
        out_channels=8,
        groups=1,
        stride=(1, 1),
        padded_shape=(78, 78),
        out_shape=(64, 64),
    )
    image["input_dilation"] = (1, 1)
    assert choose(**image, kernel_size=(15, 15), dtype=jnp.float32) == "fft"
    image["padded_shape"] = (70, 70)
    assert choose(**image, kernel_size=(7, 7), dtype=jnp.float32) == "xla"


def test_on_cpu_grouped_beyond_shift_takes_fft(monkeypatch):
    """Depthwise kernels too large for the shift lowering, and grouped ones of up to
    16 channels per group, leave XLA's slow grouped convolution for the FFT;
    within the shift's bounds the shift lowering keeps them."""
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: "cpu")
    depthwise: dict[str, Any] = dict(
        in_channels=64,
        out_channels=64,
        groups=64,
        stride=(1,),
        input_dilation=(1,),
        out_shape=(4096,),
    )
    choose = _choose.choose_conv_impl
    for k, expected in ((7, "shift"), (15, "shift"), (31, "fft"), (255, "fft")):
        shape = (4096 + k - 1,)
        impl = choose(
            **depthwise, kernel_size=(k,), padded_shape=shape, dtype=jnp.float32
        )
        assert impl == expected
    # 8 input channels per group: beyond the shift's 4, within the FFT's 16.
    grouped = dict(depthwise, in_channels=64, groups=8)
    assert (
        choose(**grouped, kernel_size=(63,), padded_shape=(4158,), dtype=jnp.float32)
        == "fft"
    )
    # A 9x9 depthwise kernel on a 9x9 input: one output, one tap per position.
    small: dict[str, Any] = dict(
        in_channels=8, out_channels=8, groups=8, stride=(1, 1), input_dilation=(1, 1)
    )
    small.update(kernel_size=(9, 9), padded_shape=(9, 9), out_shape=(1, 1))
    assert choose(**small, dtype=jnp.float32) == "xla"


def test_auto_lowers_long_kernels_through_ffts(monkeypatch, getkey):
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: "cpu")
    x = jr.normal(getkey(), (2, 512))
    w = jr.normal(getkey(), (3, 2, 129))
    jaxpr = str(jax.make_jaxpr(lambda x: eqxconv.conv(x, w, padding="SAME"))(x))
    assert "fft" in jaxpr and "conv_general_dilated" not in jaxpr
    short = w[..., :33]
    assert uses_lax_conv(lambda x: eqxconv.conv(x, short, padding="SAME"), x)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_partitioned_auto_takes_what_xla_partitions(monkeypatch, backend):
    """Where the input may be sharded, the lowerings XLA's SPMD partitioner splits
    with halo exchanges: its own convolutions, patches as a convolution with
    one-hot kernels."""
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: backend)
    depthwise = dict(DEPTHWISE_3X3, dtype=jnp.float32)
    for args in (depthwise, dict(LONG_1D, dtype=jnp.float32)):
        assert _choose.choose_conv_impl(**args, partitioned=True) == "xla"
    # Grouped but not depthwise: XLA gathers its own, so patches and a contraction.
    grouped = dict(depthwise, groups=4)
    assert _choose.choose_conv_impl(**grouped, partitioned=True) == "patches"
    dilated = dict(grouped, input_dilation=(2, 1))
    assert _choose.choose_conv_impl(**dilated, partitioned=True) == "xla"
    for kernel, stride, dilation in (((4, 4), (2, 2), (1, 1)), ((2,), (2,), (5,))):
        impl = _choose.choose_transpose_impl(kernel, stride, dilation, partitioned=True)
        assert impl == "adjoint"
    unstrided = _choose.choose_transpose_impl((3,), (1,), (1,), partitioned=True)
    assert unstrided == "lhs_dilation"
    assert _choose.choose_patches_impl((3, 3), (1, 1), (1, 1), partitioned=True) == (
        "conv"
    )
    assert _choose.choose_patches_impl((2, 2), (2, 2), (1, 1), partitioned=True) == (
        "reshape"
    )


def test_may_be_partitioned_on_one_device():
    """On one device nothing is partitioned, traced or not; a concrete array says
    so by its sharding."""
    from eqxconv._partition import may_be_partitioned

    x = jnp.ones((2, 8))
    assert not may_be_partitioned(x)
    seen = []
    jax.jit(lambda x: seen.append(may_be_partitioned(x)) or x)(x)
    assert seen == [jax.device_count() > 1]
