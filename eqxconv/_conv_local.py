"""`ConvLocal` (locally connected, "unshared" convolution) and its fixed-dimension
aliases."""

import math
from collections.abc import Sequence
from typing import Any, TypedDict

import equinox as eqx
from jaxtyping import Array, Inexact, PRNGKeyArray
from typing_extensions import Unpack

from ._checks import checked_call
from ._init import (
    apply_mask,
    check_mask,
    init_parameters,
    Initializer,
    parameter_dtype,
)
from ._ops import conv_local_normalised
from ._padding import (
    check_layer_args,
    check_positive_int,
    normalise_padding,
    padded_output_shape,
    Padding,
    PaddingLike,
    PaddingMode,
    to_tuple,
)


class LocalExtras(TypedDict, total=False):
    """Keyword-only extras of the locally connected layers: those of
    [`eqxconv.Conv`][] and `chunk_size`."""

    kernel_init: Initializer | None
    bias_init: Initializer | None
    mask: Any
    precision: Any
    preferred_element_type: Any
    chunk_size: int | None


def _check_in_spatial_shape(in_spatial_shape: Any, n: int) -> tuple[int, ...]:
    if isinstance(in_spatial_shape, str) or not isinstance(in_spatial_shape, Sequence):
        raise TypeError(
            f"`in_spatial_shape` must be a sequence of {n} ints (the input's spatial "
            f"shape), got {in_spatial_shape!r}."
        )
    if len(in_spatial_shape) != n:
        raise ValueError(
            f"`in_spatial_shape` must have {n} entries (one per spatial dimension), "
            f"got {tuple(in_spatial_shape)!r}."
        )
    return tuple(check_positive_int(s, "in_spatial_shape") for s in in_spatial_shape)


class ConvLocal(eqx.Module):
    """Locally connected ("unshared") N-dimensional convolution: a separate kernel at
    every output position, as [`eqxconv.conv_local`][] computes it.

    `weight` has shape `(out_channels, (in_channels // groups) * prod(kernel_size),
    *out_spatial)` (the `rhs` of `jax.lax.conv_general_dilated_local` with dimension
    numbers `("NCHW", "OIHW", "NCHW")` when `groups == 1`), and `bias` has shape
    `(out_channels, *out_spatial)`: one bias per output position, as in Flax's
    `ConvLocal`. The input's spatial shape is fixed at construction.
    """

    num_spatial_dims: int = eqx.field(static=True)
    weight: Array
    bias: Array | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    dilation: tuple[int, ...] = eqx.field(static=True)
    groups: int = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    padding_mode: PaddingMode = eqx.field(static=True)
    in_spatial_shape: tuple[int, ...] = eqx.field(static=True)
    mask: Array | None
    precision: Any = eqx.field(static=True)
    preferred_element_type: Any = eqx.field(static=True)
    chunk_size: int | None = eqx.field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        in_spatial_shape: Sequence[int],
        key: PRNGKeyArray,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        mask: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        chunk_size: int | None = None,
    ):
        """**Arguments:**

        - `num_spatial_dims`: the number of spatial dimensions `N` (2 for images).
        - `in_channels`: the number of input channels.
        - `out_channels`: the number of output channels.
        - `kernel_size`: the kernel's spatial size, an int or `N` ints.
        - `stride`: the window stride, an int or `N` ints.
        - `padding`: an int, `N` ints, `N` `(low, high)` pairs, or one of `'VALID'`,
            `'SAME'`, `'SAME_LOWER'`, `'CAUSAL'` or `'CIRCULAR'`, as for
            [`eqxconv.Conv`][].
        - `dilation`: the kernel dilation, an int or `N` ints.
        - `groups`: the number of channel groups; must divide `in_channels` and
            `out_channels`. (`lax.conv_general_dilated_local` and Flax refuse
            `groups > 1`; here output channel `o` sees input channels of group
            `o // (out_channels // groups)`, as in [`eqxconv.Conv`][].)
        - `use_bias`: whether to add a bias (one per output channel and position).
        - `padding_mode`: `'ZEROS'` (default), `'REFLECT'`, `'REPLICATE'` or
            `'CIRCULAR'`.
        - `dtype`: the parameter dtype, floating or complex; defaults to `float32`
            (`float64` with `jax_enable_x64`).
        - `in_spatial_shape`: the input's spatial shape `(dim_1, ..., dim_N)`
            (keyword only, required): it sizes the per-position kernels. A
            `ValueError` if the dilated kernel does not fit in it after padding.
        - `key`: a `jax.random` key for the initialisation (keyword only).
        - `kernel_init`, `bias_init`: callables `(key, shape, dtype) -> array`
            replacing the default, PyTorch's uniform on `[-1/sqrt(fan_in),
            1/sqrt(fan_in)]` with `fan_in = (in_channels // groups) *
            prod(kernel_size)` (the number of inputs each output sees; unlike Flax's
            `ConvLocal`, the output positions are not counted).
        - `mask`: an array broadcastable to `weight`, multiplied into the weight at
            every call (as for [`eqxconv.Conv`][]).
        - `precision`, `preferred_element_type`: passed to the contraction.
        - `chunk_size`: `None` (default), or a bound on how many output positions
            are computed at once, to bound peak memory on large inputs (see
            [`eqxconv.conv_local`][]); the result is the same. It bounds the patch
            tensor, which grows with the batch (at batch 64, 16->16 channels, 3x3,
            32x32: peak 102 MiB unchunked, 47 MiB with `chunk_size=60`); at small
            batches the weight-sized buffers dominate and chunking can cost a
            little memory instead (batch 8: 33.9 against 27.3 MiB).
        """
        n, in_channels, out_channels, kernel_size, groups = check_layer_args(
            num_spatial_dims, in_channels, out_channels, kernel_size, groups, use_bias
        )
        if chunk_size is not None:
            chunk_size = check_positive_int(chunk_size, "chunk_size")
        dtype = parameter_dtype(dtype)

        self.num_spatial_dims = n
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = to_tuple(stride, n, "stride")
        self.padding, self.padding_mode = normalise_padding(padding, padding_mode, n)
        self.dilation = to_tuple(dilation, n, "dilation")
        self.groups = groups
        self.use_bias = use_bias
        self.in_spatial_shape = _check_in_spatial_shape(in_spatial_shape, n)
        try:
            out_spatial = self.out_spatial_shape(self.in_spatial_shape)
        except ValueError as error:
            raise ValueError(
                f"`in_spatial_shape`={self.in_spatial_shape} is too small for the "
                f"kernel: {error}"
            ) from None
        per_position = (in_channels // groups) * math.prod(kernel_size)
        weight_shape = (out_channels, per_position, *out_spatial)
        self.weight, self.bias = init_parameters(
            key,
            weight_shape=weight_shape,
            bias_shape=(out_channels, *out_spatial) if use_bias else None,
            fan_in=per_position,
            dtype=dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
        )
        self.mask = check_mask(mask, weight_shape)
        self.precision = precision
        self.preferred_element_type = preferred_element_type
        self.chunk_size = chunk_size

    def out_spatial_shape(self, in_spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The spatial shape this layer returns for an input of spatial shape
        `in_spatial_shape` (pure Python; `ValueError` if the kernel does not fit).
        Calls accept only `in_spatial_shape == self.in_spatial_shape`."""
        return padded_output_shape(
            self.padding, in_spatial_shape, self.kernel_size, self.stride, self.dilation
        )

    @checked_call
    def __call__(
        self,
        x: Inexact[Array, " {self.in_channels} *spatial"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Inexact[Array, " {self.out_channels} *out_spatial"]:
        """**Arguments:**

        - `x`: the input, shape `(in_channels, *in_spatial_shape)`; batch with
            `jax.vmap`. Any other spatial shape is a `ValueError`.
        - `key`: ignored; accepted for compatibility with the Equinox API.

        **Returns:**

        An array of shape `(out_channels, *out_spatial_shape(in_spatial_shape))`.
        """
        out = conv_local_normalised(
            x,
            apply_mask(self.weight, self.mask),
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            chunk_size=self.chunk_size,
        )
        if self.bias is not None:
            out = out + self.bias.astype(out.dtype)
        return out


def _fixed_dims_doc(n: int) -> str:
    return f"As [`eqxconv.ConvLocal`][] with `num_spatial_dims={n}`."


class ConvLocal1d(ConvLocal):
    __doc__ = _fixed_dims_doc(1)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        in_spatial_shape: Sequence[int],
        key: PRNGKeyArray,
        **extras: Unpack[LocalExtras],
    ):
        super().__init__(
            1, in_channels, out_channels, kernel_size, stride, padding, dilation,
            groups, use_bias, padding_mode, dtype, in_spatial_shape=in_spatial_shape,
            key=key, **extras,
        )  # fmt: skip


class ConvLocal2d(ConvLocal):
    __doc__ = _fixed_dims_doc(2)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        in_spatial_shape: Sequence[int],
        key: PRNGKeyArray,
        **extras: Unpack[LocalExtras],
    ):
        super().__init__(
            2, in_channels, out_channels, kernel_size, stride, padding, dilation,
            groups, use_bias, padding_mode, dtype, in_spatial_shape=in_spatial_shape,
            key=key, **extras,
        )  # fmt: skip


class ConvLocal3d(ConvLocal):
    __doc__ = _fixed_dims_doc(3)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        in_spatial_shape: Sequence[int],
        key: PRNGKeyArray,
        **extras: Unpack[LocalExtras],
    ):
        super().__init__(
            3, in_channels, out_channels, kernel_size, stride, padding, dilation,
            groups, use_bias, padding_mode, dtype, in_spatial_shape=in_spatial_shape,
            key=key, **extras,
        )  # fmt: skip
