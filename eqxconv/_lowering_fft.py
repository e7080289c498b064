"""FFT lowering of a convolution: the cost of a direct convolution grows with the
kernel, that of an FFT does not.

Everything works on one unbatched, already padded (and, for an input dilation,
zero-interleaved) input `(in_channels, *spatial)` and computes the VALID
cross-correlation

    y[o, p] = sum_{i, t} w[o, i, t] * x[group(o), i, p * stride + t * dilation].

The dilated kernel (zeros spread between its taps) is correlated with the input by a
circular correlation of length `spatial` (rounded up to a product of 2, 3 and 5, which
FFTs are fast at): every output of a VALID correlation reads input positions
`p + t <= spatial - 1`, so none wraps around, and no longer transform is needed. In
the frequency domain a correlation is a product with the conjugate transform of the
kernel, and the channel sum within each group is a contraction (a product, for one
input channel per group). A stride keeps every `stride`-th output of the unstrided
correlation.

Real inputs use `rfftn`/`irfftn`, complex ones `fftn`/`ifftn`. Half-precision inputs
are computed in `float32`. `precision` does not apply: FFTs have no reduced-precision
mode to select, and the channel contraction between them always runs at full
precision.

The result is linear in the input and in the weight, and JAX's derivatives of FFTs
are FFTs, so reverse- and forward-mode autodiff of this graph is already an FFT
correlation of the same size (`benchmarks/fft.py` measures forward+backward); no
custom rule is needed.
"""

from typing import Any

import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array


def fast_fft_size(size: int) -> int:
    """The smallest `2**a * 3**b * 5**c >= size`."""
    best = 1 << max(size - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35
            while candidate < size:
                candidate *= 2
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def _compute_dtype(dtype: Any, out_dtype: Any) -> Any:
    """At least `float32`, as wide as the requested result, complex if `dtype` is."""
    bits = max(32, jnp.finfo(dtype).bits)
    if jnp.issubdtype(out_dtype, jnp.inexact):
        bits = max(bits, jnp.finfo(out_dtype).bits)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.dtype(jnp.complex128 if bits == 64 else jnp.complex64)
    return jnp.dtype(jnp.float64 if bits == 64 else jnp.float32)


def fft_conv(
    x: Array,
    weight: Array,
    *,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    preferred_element_type: Any = None,
) -> Array:
    """A VALID grouped convolution of an already padded, unbatched `(C, *spatial)`
    input, through FFTs.

    Equal (to FFT rounding) to `lax.conv_general_dilated(x[None], weight, stride,
    "VALID", rhs_dilation=dilation, feature_group_count=groups)[0]`; `x` and `weight`
    have the same dtype. The result has `preferred_element_type` (default: the
    inputs' dtype).
    """
    out_dtype = jnp.dtype(
        x.dtype if preferred_element_type is None else preferred_element_type
    )
    dtype = _compute_dtype(x.dtype, out_dtype)
    x = x.astype(dtype)
    weight = weight.astype(dtype)
    n = x.ndim - 1
    spatial = x.shape[1:]
    if any(d != 1 for d in dilation):
        widths = ((0, 0, 0),) * 2 + tuple((0, 0, d - 1) for d in dilation)
        weight = lax.pad(weight, jnp.zeros((), dtype), widths)
    extents = weight.shape[2:]
    out_spatial = tuple(
        (size - e) // s + 1 for size, e, s in zip(spatial, extents, stride, strict=True)
    )
    sizes = tuple(fast_fft_size(size) for size in spatial)
    axes = tuple(range(-n, 0))
    real = not jnp.issubdtype(dtype, jnp.complexfloating)

    out_channels, per_group_in = weight.shape[:2]
    per_group_out = out_channels // groups
    xg = x.reshape(groups, per_group_in, *spatial)
    wg = weight.reshape(groups, per_group_out, per_group_in, *extents)
    if real:
        fx = jnp.fft.rfftn(xg, s=sizes, axes=axes)
        fw = jnp.conj(jnp.fft.rfftn(wg, s=sizes, axes=axes))
    else:
        # A correlation with `w` is a convolution with its conjugate reversal: in
        # the frequency domain, `conj(fft(conj(w)))`.
        fx = jnp.fft.fftn(xg, s=sizes, axes=axes)
        fw = jnp.conj(jnp.fft.fftn(jnp.conj(wg), s=sizes, axes=axes))
    if per_group_in == 1:
        # Nothing to contract: an elementwise product, not a batched dot.
        fy = fx * fw[:, :, 0]
    else:
        # Full precision whatever the backend's default for matmuls (TPUs default to
        # bfloat16 passes): `precision` has no meaning for the FFTs around it.
        fy = jnp.einsum("gi...,goi...->go...", fx, fw, precision=lax.Precision.HIGHEST)
    if real:
        y = jnp.fft.irfftn(fy, s=sizes, axes=axes)
    else:
        y = jnp.fft.ifftn(fy, s=sizes, axes=axes)
    limit = (groups, per_group_out) + tuple(
        (o - 1) * s + 1 for o, s in zip(out_spatial, stride, strict=True)
    )
    y = lax.slice(y, (0,) * (n + 2), limit, (1, 1) + tuple(stride))
    return y.reshape(out_channels, *out_spatial).astype(out_dtype)
